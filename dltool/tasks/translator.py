"""The translator template's task: sentences in, translations out.

The exported model tokenizes raw strings, runs the model in a decoding loop
(keras_hub's greedy or beam sampler, a `tf.while_loop` inside the graph) and
joins the tokens back into text: no Python loop at inference.
"""

import logging

import numpy as np
import sacrebleu

from dltool._tf import tf  # first: TensorFlow's environment, before keras_hub loads it
from dltool.core import files, tables

import keras_hub  # noqa: E402  (also registers its layers, so .keras files with them load)
from dltool.data import parallel
from dltool.report.reports import Section
from dltool.tasks.base import ServingEndpoint, Task

DECODING_METHODS = ("greedy", "beam")
_EVALUATE_BATCH = 256
_BUCKETS = 8
_REPORT_SAMPLES = 20


class TranslatorTask(Task):
    """Sentence pairs in; source sentences in, translations out.

    An evaluation is corpus BLEU and chrF with a file of the translations;
    the report shows a sample of them beside their references.
    """

    json_ensure_ascii = False

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the parallel text of `config["data"]` (see `parallel.open_parallel_data`).

        For a trained run (`run_meta`, as `dltool evaluate` opens it), the
        pairs are vectorized with that run's vocabularies, exactly as in
        training.

        Returns:
            The `ParallelData`, with a `meta` dict added: vocabularies,
            maximum length, decoding settings.
        """
        data = parallel.open_parallel_data(config["data"], root,
                                           seed=config["training"]["seed"], skip_bad=skip_bad,
                                           vocabularies=_run_vocabularies(run_meta))
        data.meta = {"source_vocabulary": data.source_vocabulary,
                     "target_vocabulary": data.target_vocabulary,
                     "max_length": config["data"]["max_length"],
                     "decoding": dict(config["decoding"])}
        return data

    def bytes_per_example(self, config):
        """Returns the memory one vectorized pair takes at most (int32 ids)."""
        return 4 * 3 * (config["data"]["max_length"] + 2)

    def model_kwargs(self, meta):
        """Returns the data-dependent arguments of `build_model`."""
        return {"source_vocabulary_size": len(meta["source_vocabulary"]),
                "target_vocabulary_size": len(meta["target_vocabulary"])}

    def batching(self, config):
        """How `pipeline.batched` groups pairs: by length, padded per batch."""
        max_length = config["data"]["max_length"] + 1
        step = max(1, -(-max_length // _BUCKETS))
        return {"element_length": _pair_length,
                "bucket_boundaries": list(range(step + 1, max_length + 1, step))}

    def serving_endpoint(self, model, meta):
        """Builds the serving function: raw UTF-8 strings in, translations out.

        Args:
            model: The trained Keras model.
            meta: The run's metadata (vocabularies, `max_length`, `decoding`:
                `method` and `beam_width`).

        Returns:
            A `ServingEndpoint` whose function takes a 1-D string tensor of
            source sentences and returns `translation` (strings) and
            `truncated` (bool) with the decoding of `meta["decoding"]`; its
            resources are the source vectorizer (its vocabulary table must be
            saved), its endpoints two more functions with the same
            signature, `translate_greedy` and `translate_beam`.
        """
        translator = Translator(model, meta)
        decoding = meta["decoding"]
        width = decoding["beam_width"]

        def serve(texts):
            return translator(texts, decoding["method"], width)

        return ServingEndpoint(
            serve, [tf.TensorSpec(shape=(None,), dtype=tf.string, name="texts")],
            resources=[translator.source_vectorizer],
            endpoints={"translate_greedy": lambda texts: translator(texts, "greedy"),
                       "translate_beam": lambda texts: translator(texts, "beam", width)})

    def read_input(self, item, meta):
        """Returns the text to translate: the item itself (a raw string)."""
        return str(item)

    def format_prediction(self, outputs, index, top_k):
        """Returns `{"translation": str, "truncated": bool}` of one input."""
        translation = np.asarray(outputs["translation"][index])
        translation = translation.item() if translation.ndim == 0 else translation
        if isinstance(translation, bytes):
            translation = translation.decode("utf-8", errors="replace")
        return {"translation": translation, "truncated": bool(outputs["truncated"][index])}

    def input_spec(self, export_format, meta):
        """The SavedModel's input: a batch of source sentences, tokenized,
        translated and detokenized in the graph."""
        return {"name": "texts", "shape": [None], "dtype": "string",
                "content": f"raw UTF-8 source sentences, cut to {meta['max_length']} tokens "
                           "in the graph",
                "decoding": f"serving_default: {meta['decoding']['method']}; also "
                            "translate_greedy and translate_beam signatures"}

    def client_snippet(self, export_format, meta):
        """A script that translates sentences with the SavedModel, without dltool.

        Returns:
            Python defining `translate(texts)` (TensorFlow Serving's REST
            API) and `translate_local(texts)` (the SavedModel loaded with
            TensorFlow), each a list of translations, and a `__main__` that
            prints them; None for the formats the translator is not
            exported to.
        """
        return _SAVEDMODEL_CLIENT if export_format == "savedmodel" else None

    def format_refusal(self, export_format, meta):
        """Refuses LiteRT and ONNX: a translation is a decoding loop, not one
        forward pass.

        The SavedModel runs keras_hub's sampler (a `tf.while_loop` calling the
        decoder once per token, with beam search's gathers) between a
        tokenizer and a detokenizer made of string ops. Neither format has
        string ops, and a converted single step would leave the search, the
        tokenizer and the stopping rule to every client to rewrite, where
        the greedy translations could no longer be checked against the
        model's.
        """
        if export_format == "savedmodel":
            return None
        return ("a translation is a decoding loop (tokenizer, decoder called once per token, "
                f"beam search) that {export_format} cannot hold as one model; --format "
                "savedmodel works (TensorFlow Serving, `dltool predict`)")

    # ---- evaluating and reporting ----

    def evaluate_split(self, model, data, split, config, run, echo=None):
        """Translates a split's sources and scores them against the references.

        Writes `translations-SPLIT.tsv` (source, reference, translation) to the
        run folder (`_write_translations`). The decoding is the config's `[decoding]`. `echo`, when
        given, is called with a progress line after each batch.

        Returns:
            A dict: `examples`, `bleu`, `chrf`, `signature` (sacrebleu's, for
            both scores), `decoding`, `truncated` (inputs cut to `max_length`)
            and `translations_file`.
        """
        pairs = data.pairs[split]
        translator = Translator(model, run.meta)
        decoding = config["decoding"]
        hypotheses, truncated = _translate_all(translator, [a for a, _ in pairs], decoding, echo)
        scores = score(hypotheses, [b for _, b in pairs])
        path = run.translations_file(split)
        _write_translations(path, pairs, hypotheses)
        if truncated:
            logging.getLogger("dltool").warning("%d input(s) longer than %d tokens were cut",
                                                truncated, translator.max_length)
        return {"examples": len(pairs), **scores, "decoding": dict(decoding),
                "truncated": truncated, "translations_file": str(path)}

    def report_sections(self, run, split, evaluation):
        """The translator's part of the run report: the scores, then a seeded
        sample of test translations beside their references, each with its
        sentence BLEU.

        Args:
            run: The `Run`.
            split: The split evaluated.
            evaluation: The `evaluation-SPLIT.json` contents.

        Returns:
            A list of `Section`s.
        """
        sections = [Section(f"Evaluation on the {split} split",
                            text=_scores_text(evaluation))]
        path = run.translations_file(split)
        rows = _read_translations(path)
        if rows:
            rng = np.random.default_rng(0)
            sample = sorted(rng.choice(len(rows), min(len(rows), _REPORT_SAMPLES),
                                       replace=False))
            bleu = sacrebleu.metrics.BLEU(effective_order=True)
            table = [["English", "reference", "translation", "BLEU"]]
            table += [[*rows[i], f"{bleu.sentence_score(rows[i][2], [rows[i][1]]).score:.1f}"]
                      for i in sample]
            sections.append(Section(f"Sample translations ({split})", table=table,
                                    text=f"{len(sample)} pairs drawn at random (seed 0) from "
                                         f"{path.name}."))
        return sections

    # ---- what the CLI prints ----

    def evaluation_lines(self, result):
        """The header, BLEU and chrF with their signatures, then the decoding."""
        decoding = result["decoding"]
        how = "greedy" if decoding["method"] == "greedy" else \
            f"beam search, width {decoding['beam_width']}"
        return [*super().evaluation_lines(result),
                f"BLEU  {result['bleu']:.2f}  ({result['signature']['bleu']})",
                f"chrF  {result['chrf']:.2f}  ({result['signature']['chrf']})",
                f"decoding: {how}; translations beside the references in "
                f"{result['translations_file']}"]

    def evaluation_summary(self, result):
        """The BLEU score, two decimals."""
        return f"{result['bleu']:.2f}"

    def prediction_line(self, item, prediction):
        """`SOURCE -> TRANSLATION`."""
        return f"{item} -> {prediction['translation']}"

    def prediction_summary(self, prediction):
        """The translation."""
        return prediction["translation"]

    def prediction_record(self, item, prediction):
        """`{"input": item, "translation": ..., "truncated": ...}`."""
        return {"input": item, **prediction}

    def prediction_columns(self, top_k):
        """`input, translation`."""
        return ["input", "translation"]

    def prediction_row(self, item, prediction, top_k):
        """The source sentence and its translation."""
        return [item, prediction["translation"]]

    def prediction_warning(self, item, prediction):
        """Says when an input was cut to the model's maximum length."""
        if not prediction["truncated"]:
            return None
        return (f"Warning: {item[:40]!r}... is longer than the model's maximum length; "
                "only its beginning was translated")


def _run_vocabularies(run_meta):
    """A trained run's `(source, target)` vocabularies, or None."""
    if not run_meta or "source_vocabulary" not in run_meta:
        return None
    return run_meta["source_vocabulary"], run_meta["target_vocabulary"]


def _pair_length(inputs, target):
    return tf.maximum(tf.shape(inputs["source_ids"])[0], tf.shape(target)[0])


def _translate_all(translator, sources, decoding, echo=None):
    """Translates sentences in batches of 256 with the decoding of `decoding`.

    Returns:
        A tuple `(translations, truncated)`: a list of strings, and how many
        inputs were cut to the maximum length.
    """
    translate = tf.function(lambda texts: translator(texts, decoding["method"],
                                                     decoding["beam_width"]))
    hypotheses, truncated = [], 0
    for start in range(0, len(sources), _EVALUATE_BATCH):
        out = translate(tf.constant(sources[start:start + _EVALUATE_BATCH]))
        hypotheses += [t.decode("utf-8") for t in out["translation"].numpy()]
        truncated += int(np.sum(out["truncated"].numpy()))
        if echo is not None:
            echo(f"Translated {len(hypotheses)}/{len(sources)} sentences")
    return hypotheses, truncated


def _scores_text(evaluation):
    """One sentence of an evaluation's scores, for the report."""
    decoding = evaluation["decoding"]
    how = ("greedy decoding" if decoding["method"] == "greedy"
           else f"beam search of width {decoding['beam_width']}")
    return (f"{evaluation['examples']} sentence pairs, {how}: BLEU {evaluation['bleu']:.2f}, "
            f"chrF {evaluation['chrf']:.2f} (sacrebleu {evaluation['signature']['bleu']}).")


class Translator:
    """Translates batches of strings with a model, the decoding in the graph.

    Args:
        model: The trained Keras model (`source_ids`, `target_ids` in,
            next-token logits out).
        meta: The run's metadata (`source_vocabulary`, `target_vocabulary`,
            `max_length`).
    """

    def __init__(self, model, meta):
        self.model = model
        self.source_vectorizer = parallel.make_vectorizer(vocabulary=meta["source_vocabulary"])
        self.source_vectorizer.build()  # a built layer can be tracked by the export
        vocabulary = list(meta["target_vocabulary"])
        self.target_tokens = tf.constant(vocabulary)
        self.start_id = vocabulary.index(parallel.START)
        self.end_id = vocabulary.index(parallel.END)
        self.max_length = int(meta["max_length"])
        # Never write padding, [UNK] or [start] (the next most likely token
        # instead); once a row has produced [end], only padding (log
        # probability 0), so finished beams keep their score.
        banned = [0, vocabulary.index("[UNK]") if "[UNK]" in vocabulary else 0, self.start_id]
        self.banned = tf.constant([-1e9 if i in banned else 0.0
                                   for i in range(len(vocabulary))])
        self.finished_logits = tf.constant([0.0] + [-1e9] * (len(vocabulary) - 1))
        self.samplers = {"greedy": keras_hub.samplers.GreedySampler(),
                         "beam": {}}

    def sampler(self, method, beam_width=4):
        if method == "greedy" or beam_width == 1:
            return self.samplers["greedy"]
        beams = self.samplers["beam"]
        if beam_width not in beams:
            beams[beam_width] = keras_hub.samplers.BeamSampler(num_beams=beam_width)
        return beams[beam_width]

    def source_ids(self, texts):
        """Token ids `(n, <= max_length)` of raw strings, and which were cut."""
        ids = tf.cast(self.source_vectorizer(parallel.tokenize(texts)), tf.int32)
        truncated = ids.row_lengths() > self.max_length
        ids = ids[:, :self.max_length].to_tensor()
        width = tf.shape(ids)[1]
        ids = tf.pad(ids, [[0, 0], [0, tf.maximum(0, 1 - width)]])  # at least one column
        return ids, truncated

    @tf.autograph.experimental.do_not_convert
    def __call__(self, texts, method="greedy", beam_width=4):
        """Translates a 1-D string tensor.

        Returns:
            A dict: `translation` (strings) and `truncated` (bool, true when
            the input had more than `max_length` tokens and was cut).
        """
        texts = tf.convert_to_tensor(texts, tf.string)
        source_ids, truncated = self.source_ids(texts)
        count = tf.shape(source_ids)[0]
        prompt = tf.concat([tf.fill([count, 1], self.start_id),
                            tf.zeros([count, self.max_length + 1], tf.int32)], axis=1)

        def next_token_logits(prompt, cache, index):
            logits = self.model({"source_ids": cache, "target_ids": prompt[:, :index]},
                                training=False)[:, -1, :]
            finished = tf.reduce_any(tf.equal(prompt[:, :index], self.end_id), axis=1)
            logits = tf.where(finished[:, None], self.finished_logits,
                              tf.cast(logits, tf.float32) + self.banned)
            return logits, None, cache

        token_ids = self.sampler(method, beam_width)(
            next_token_logits, prompt, cache=source_ids, index=1,
            stop_token_ids=[self.end_id])
        token_ids = token_ids[:, 1:]
        before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(token_ids, self.end_id), tf.int32),
                                        axis=1), 0)
        tokens = tf.where(before_end, tf.gather(self.target_tokens, token_ids), "")
        translation = parallel.detokenize(tokens)
        empty = tf.equal(tf.strings.length(parallel.tokenize(texts)), 0)
        return {"translation": tf.where(empty, "", translation), "truncated": truncated}


def score(hypotheses, references):
    """Corpus BLEU and chrF (sacrebleu's defaults: cased, 13a tokenization).

    Args:
        hypotheses: Translations, detokenized text.
        references: One reference per translation, as written in the data.

    Returns:
        A dict: `bleu`, `chrf` (0-100, two decimals) and `signature` (the
        sacrebleu signature of each, for reporting).
    """
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    return {"bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
            "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
            "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}}


def _write_translations(path, pairs, hypotheses):
    """Writes `translations-SPLIT.tsv`: plain TSV (sentences hold no tabs), a
    header, then source, reference and translation, each cell safe to open
    in a spreadsheet (`dltool.core.tables`)."""
    rows = [("source", "reference", "translation"),
            *((a, b, h) for (a, b), h in zip(pairs, hypotheses))]
    files.write_text_atomic(path, "".join(
        "\t".join(map(tables.safe_cell, row)) + "\n" for row in rows))


def _read_translations(path):
    """Reads `translations-SPLIT.tsv` as `[(source, reference, translation)]`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return []
    return [tuple(map(tables.plain_cell, line.split("\t")))
            for line in lines if line.count("\t") == 2]


# The SavedModel export's README.md client; `tests/test_export_formats.py`
# runs `translate_local`.
_SAVEDMODEL_CLIENT = '''"""Translates sentences with this export: python client.py "SENTENCE"...

The SavedModel takes raw strings and returns translations. Served by
TensorFlow Serving (or `dltool serve`) from the folder above this one:

    docker run -p 8501:8501 -v "$(dirname $PWD):/models/NAME" -e MODEL_NAME=NAME tensorflow/serving

or loaded here with TensorFlow (`translate_local`). Signatures:
serving_default (the run's decoding), translate_greedy, translate_beam.
"""
import json
import sys
import urllib.request

NAME = json.load(open("dltool.json", encoding="utf-8"))["name"]
URL = f"http://localhost:8501/v1/models/{NAME}:predict"


def translate(texts, signature="serving_default"):
    """Returns the translation of each text, from TF Serving."""
    body = json.dumps({"signature_name": signature, "instances": texts}).encode()
    request = urllib.request.Request(URL, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return [p["translation"] for p in json.load(response)["predictions"]]


def translate_local(texts, signature="serving_default"):
    """The same with the SavedModel loaded in this process."""
    import tensorflow as tf

    out = tf.saved_model.load(".").signatures[signature](texts=tf.constant(texts))
    return [t.decode() for t in out["translation"].numpy()]


if __name__ == "__main__":
    for text, translation in zip(sys.argv[1:], translate(sys.argv[1:])):
        print(text, "->", translation)
'''
