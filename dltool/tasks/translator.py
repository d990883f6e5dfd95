"""The translator template's task: sentences in, translations out.

The exported model tokenizes raw strings, runs the model in a decoding loop
(keras_hub's greedy or beam sampler, a `tf.while_loop` inside the graph) and
joins the tokens back into text: no Python loop at inference.
"""

import logging
import warnings

import numpy as np
import sacrebleu

from dltool._tf import keras, tf  # first: TensorFlow's environment, before keras_hub
from dltool.core import files, tables

import keras_hub  # noqa: E402  (also registers its layers, so .keras files with them load)
from dltool.data import parallel
from dltool.report.reports import Section
from dltool.tasks.base import ServingEndpoint, Task

DECODING_METHODS = ("greedy", "beam")
_EVALUATE_BATCH = 256
_BUCKETS = 8
_REPORT_SAMPLES = 20
# Keras' "will destroy the mask" UserWarning for four layers inside
# keras_hub's: the query, key and value projections of the decoder's
# attention (keras_hub's CachedMultiHeadAttention projects tensors that still
# carry the mask it has already used) and the PositionEmbedding inside
# TokenAndPositionEmbedding (which gives its output the token embedding's
# mask itself) are told a mask they have no use for. The warning is about
# them only: the mask reaches attention (tests/test_translator.py checks the
# logits at real positions do not move with padding).
_HARMLESS_MASK_WARNING = (r"(?:Layer '(?:query|key|value)' \(of type EinsumDense\)"
                          r"|Layer 'position_embedding' \(of type PositionEmbedding\))"
                          r" was passed an input with a mask attached to it")


class TranslatorTask(Task):
    """Sentence pairs in; source sentences in, translations out.

    An evaluation is corpus BLEU and chrF with a file of the translations;
    the report shows a sample of them beside their references.
    """

    json_ensure_ascii = False

    def __init__(self, spec):
        super().__init__(spec)
        _ignore_harmless_mask_warnings()  # a `.keras` file loads after `task_for`

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the parallel text of `config["data"]` (see `parallel.open_parallel_data`).

        For a trained run (`run_meta`, as `dltool evaluate` opens it), the
        pairs are vectorized with that run's vocabularies and kind of
        tokens (`tokens_of`), exactly as in training.

        Returns:
            The `ParallelData`, with a `meta` dict added: vocabularies, kind
            of tokens, maximum length, decoding settings.
        """
        vocabularies = _run_vocabularies(run_meta)
        tokens = tokens_of(run_meta) if vocabularies else config["data"]["tokens"]
        data = parallel.open_parallel_data({**config["data"], "tokens": tokens}, root,
                                           seed=config["training"]["seed"], skip_bad=skip_bad,
                                           vocabularies=vocabularies)
        data.meta = {"source_vocabulary": data.source_vocabulary,
                     "target_vocabulary": data.target_vocabulary,
                     "tokens": tokens,
                     "max_length": config["data"]["max_length"],
                     "decoding": dict(config["decoding"])}
        return data

    def bytes_per_example(self, config):
        """Returns the memory one vectorized pair takes at most (int32 ids)."""
        return 4 * 3 * (config["data"]["max_length"] + 2)

    def model_kwargs(self, meta):
        """Returns the data-dependent arguments of `build_model` (called
        before every build, so the build runs with the harmless mask
        warnings silenced even where the warning filters were reset since
        the task was made, as pytest does for each test)."""
        _ignore_harmless_mask_warnings()
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
        """The input of an export: raw strings (SavedModel) or token ids.

        Returns:
            For `savedmodel`: the `texts` string tensor, translated in the
            graph. For the others: the int32 `source_ids` the greedy decoder
            takes and the `target_ids` it returns, made from and read back
            into text as the README's client (`encode`, `decode`) does, with
            the vocabularies in `meta`.
        """
        length, decoding = meta["max_length"], meta["decoding"]
        unit = "subword tokens" if tokens_of(meta) == "subwords" else "tokens"
        if export_format == "savedmodel":
            return {"name": "texts", "shape": [None], "dtype": "string",
                    "content": f"raw UTF-8 source sentences, cut to {length} {unit} "
                               "in the graph",
                    "decoding": f"serving_default: {decoding['method']}; also "
                                "translate_greedy and translate_beam signatures"}
        batch = 1 if export_format == "litert" else None
        if tokens_of(meta) == "subwords":
            content = ("the WordPiece pieces of the sentence's words (parallel.tokenize: "
                       "punctuation split off, hyphens and apostrophes kept apart; then "
                       "each word's greedy longest match first in meta.source_vocabulary, "
                       "a piece after the first marked ##, a word without pieces [UNK] = 1), the "
                       f"first {length}, as their index in meta.source_vocabulary, "
                       "padded with 0")
            output = ("the translation's piece ids in meta.target_vocabulary (a ## piece "
                      "joins the one before), then [end], then 0")
        else:
            content = ("the sentence's tokens (parallel.tokenize: punctuation split off, "
                       "hyphens and apostrophes kept apart), the first "
                       f"{length}, as their index in meta.source_vocabulary (1 for a token "
                       "not in it), padded with 0")
            output = ("the translation's token ids in meta.target_vocabulary, "
                      "then [end], then 0")
        return {
            "name": "source_ids", "shape": [batch, length], "dtype": "int32",
            "content": content,
            "output": {"name": "target_ids", "shape": [batch, length + 1], "dtype": "int32",
                       "content": output},
            "decoding": "greedy, inside the model (a while loop calling the decoder once "
                        "per token)" + ("" if decoding["method"] == "greedy" else
                                        f"; the SavedModel's serving_default uses "
                                        f"{decoding['method']} search"),
            "tokenizer": "encode() and decode() in README.md's client"}

    def client_snippet(self, export_format, meta):
        """A script that translates sentences with the export, without dltool.

        Returns:
            Python defining `translate(texts)`, a list of translations, and
            a `__main__` that prints them. For the SavedModel through
            TensorFlow Serving's REST API, with `translate_local(texts)`
            loading it with TensorFlow; for LiteRT and ONNX with `encode`,
            `decode` (the tokenizer, in Python's standard library) and
            `run(source_ids)`.
        """
        if export_format == "savedmodel":
            subwords = tokens_of(meta) == "subwords"
            return (_SAVEDMODEL_CLIENT
                    .replace("{text_ops_note}", _TEXT_OPS_NOTE if subwords else "")
                    .replace("{text_ops}", _TEXT_OPS_IMPORT if subwords else ""))
        runtime = _LITERT_RUNTIME if export_format == "litert" else _ONNX_RUNTIME
        return _IDS_CLIENT.replace("{runtime}", runtime)

    def format_refusal(self, export_format, quantize, meta):
        """Refuses quantized LiteRT and ONNX exports.

        Quantized weights change greedy translations: 229 of 247 test
        sentences came out identical with LiteRT's dynamic-range int8
        (measured on a GRU translator), so the export's translations could
        no longer be checked against `dltool evaluate`'s.
        """
        if export_format == "savedmodel" or quantize == "none":
            return None
        return (f"--quantize {quantize} changes greedy translations (229 of 247 sentences "
                "identical with int8 weights, measured), so they could no longer be checked "
                f"against the model's; --format {export_format} --quantize none works")

    def inference_model(self, model, meta, export_format):
        """Returns the greedy decoder as one model: token ids in, token ids out.

        The `tf.while_loop` of `_GreedyDecoder` (the rules of `Translator`'s
        greedy decoding) converts to LiteRT's and ONNX's own loops. For
        LiteRT the batch is fixed to 1: the GRU's loop state needs static
        shapes (`tf.TensorListReserve ... requires element_shape to be
        static`); ONNX takes any batch.

        Args:
            model: The trained Keras model (`source_ids`, `target_ids` in,
                next-token logits out).
            meta: The run's metadata (vocabularies, `max_length`).
            export_format: `litert` or `onnx`.

        Returns:
            A Keras model from `source_ids` int32 `(batch, max_length)` to
            `target_ids` int32 `(batch, max_length + 1)`.
        """
        source_ids = keras.Input((int(meta["max_length"]),), dtype="int32", name="source_ids",
                                 batch_size=1 if export_format == "litert" else None)
        target_ids = _GreedyDecoder(model, meta, name="greedy_decoder")(source_ids)
        return keras.Model(source_ids, {"target_ids": target_ids}, name="translator_greedy")

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

    def run_facts(self, evaluation):
        """The test split's BLEU and chrF."""
        return {"test_bleu": evaluation.get("bleu"), "test_chrf": evaluation.get("chrf")}

    def table_score(self, facts):
        """`["BLEU", test BLEU]`, when the run was evaluated."""
        return ["BLEU", facts["test_bleu"]] if facts.get("test_bleu") is not None else None

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


def _ignore_harmless_mask_warnings():
    """Silences `_HARMLESS_MASK_WARNING` (once: an identical filter replaces
    the one before)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)",
                            message=_HARMLESS_MASK_WARNING)


def _run_vocabularies(run_meta):
    """A trained run's `(source, target)` vocabularies, or None."""
    if not run_meta or "source_vocabulary" not in run_meta:
        return None
    return run_meta["source_vocabulary"], run_meta["target_vocabulary"]


def tokens_of(meta):
    """The kind of tokens of a run's vocabularies: `meta["tokens"]`, or
    `words` for a run made before `data.tokens` existed (all were words)."""
    return (meta or {}).get("tokens", "words")


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


class _GreedyDecoder(keras.layers.Layer):
    """Greedy decoding as a layer: source ids in, target ids out.

    The same rules as `Translator`'s greedy decoding (padding, `[UNK]` and
    `[start]` never written; only padding once a row has written `[end]`;
    the argmax of the softmax, as keras_hub's `GreedySampler`), in one
    `tf.while_loop` over a fixed-size target buffer, which stops when every
    row has written `[end]`. Each step runs the model on the whole buffer
    and reads the logits at the current position: the tokens not yet
    written are 0, which the causal, masked model ignores. Measured against
    `Translator` in LiteRT and ONNX Runtime: the same token ids on all 247
    test sentences of a GRU translator and on 50 of a Transformer.

    Only traced by the exporters, never saved as a `.keras` file.
    """

    def __init__(self, model, meta, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.model = model
        vocabulary = list(meta["target_vocabulary"])
        self.start_id = vocabulary.index(parallel.START)
        self.end_id = vocabulary.index(parallel.END)
        self.max_length = int(meta["max_length"])
        banned = {0, vocabulary.index("[UNK]") if "[UNK]" in vocabulary else 0, self.start_id}
        self.banned = [-1e9 if i in banned else 0.0 for i in range(len(vocabulary))]
        self.finished = [0.0] + [-1e9] * (len(vocabulary) - 1)

    def compute_output_spec(self, source_ids):
        return keras.KerasTensor((source_ids.shape[0], self.max_length + 1), dtype="int32")

    def call(self, source_ids):
        source_ids = tf.cast(source_ids, tf.int32)
        length = self.max_length + 2  # [start], the tokens, [end]
        positions = tf.range(length)[None, :]
        banned, finished = tf.constant(self.banned), tf.constant(self.finished)
        batch = tf.shape(source_ids)[0]
        buffer = tf.concat([tf.fill([batch, 1], self.start_id),
                            tf.zeros([batch, length - 1], tf.int32)], axis=1)

        def step(buffer, index):
            logits = self.model({"source_ids": source_ids, "target_ids": buffer[:, :-1]},
                                training=False)
            logits = tf.cast(tf.gather(logits, index - 1, axis=1), tf.float32)
            ended = tf.reduce_any(tf.equal(buffer, self.end_id) & (positions < index), axis=1)
            logits = tf.where(ended[:, None], finished, logits + banned)
            token = tf.argmax(tf.nn.softmax(logits), axis=-1, output_type=tf.int32)
            return tf.where(tf.equal(positions, index), token[:, None], buffer)

        def not_done(buffer, index):
            return (index < length) & ~tf.reduce_all(
                tf.reduce_any(tf.equal(buffer, self.end_id), axis=1))

        buffer, _ = tf.while_loop(not_done, lambda b, i: (step(b, i), i + 1),
                                  [buffer, tf.constant(1)])
        return buffer[:, 1:]


class Translator:
    """Translates batches of strings with a model, the decoding in the graph.

    Args:
        model: The trained Keras model (`source_ids`, `target_ids` in,
            next-token logits out).
        meta: The run's metadata (`source_vocabulary`, `target_vocabulary`,
            `tokens`, `max_length`).
    """

    def __init__(self, model, meta):
        self.model = model
        self.subwords = tokens_of(meta) == "subwords"
        self.source_vectorizer = parallel.make_vectorizer(vocabulary=meta["source_vocabulary"],
                                                          tokens=tokens_of(meta))
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
        translation = parallel.detokenize(tokens, subwords=self.subwords)
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
{text_ops_note}"""
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
{text_ops}
    out = tf.saved_model.load(".").signatures[signature](texts=tf.constant(texts))
    return [t.decode() for t in out["translation"].numpy()]


if __name__ == "__main__":
    for text, translation in zip(sys.argv[1:], translate(sys.argv[1:])):
        print(text, "->", translation)
'''

# A subword translator's SavedModel holds TensorFlow Text's WordPiece op
# (KerasHub's WordPieceTokenizer runs tf_text.FastWordpieceTokenizer): plain
# TensorFlow loads it only once `tensorflow_text` registered the op.
_TEXT_OPS_NOTE = """
Its tokenizer is WordPiece (data.tokens = "subwords"): TensorFlow Text's op
FastWordpieceTokenizeWithOffsets, which TensorFlow loads after
`import tensorflow_text` (pip install tensorflow-text, the version matching
TensorFlow's). TensorFlow Serving's model server links TensorFlow Text's
ops in (its BUILD lists tensorflow_text:ops_lib among the supported ops;
not run with it here); a server built without them cannot load this model.
"""
_TEXT_OPS_IMPORT = "    import tensorflow_text  # noqa: F401  (registers the WordPiece op)\n"

# The LiteRT and ONNX exports' README.md client. Its tokenizer is dltool's
# (`parallel.tokenize`, the vocabulary lookup or, for subwords, WordPiece's
# greedy longest match first as `tf_text.FastWordpieceTokenizer` and KerasHub's
# Python path do it, `parallel.detokenize`) in Python's standard library:
# RE2's \pL and \pN built from `unicodedata`, RE2's ASCII \s. The word-level
# tokenizer was checked identical to dltool's graph on 11,019 sentences of the
# samples and 20,000 random strings of Unicode spaces, apostrophes, hyphens,
# digits and emoji; `tests/test_translator.py` runs it against the graph.
_IDS_CLIENT = r'''"""Translates sentences with this export: python client.py "SENTENCE"...

Run it in this folder: it reads dltool.json (the vocabularies). The model
decodes greedily inside itself; encode() and decode() are dltool's tokenizer
(its words, or their WordPiece pieces when META["tokens"] is "subwords").
"""
import json
import re
import sys
import unicodedata

import numpy as np

META = json.load(open("dltool.json", encoding="utf-8"))["meta"]
SOURCE = {token: index for index, token in enumerate(META["source_vocabulary"])}
TARGET = META["target_vocabulary"]
END = TARGET.index("[end]")
LENGTH = META["max_length"]
SUBWORDS = META.get("tokens", "words") == "subwords"


def _category_class(first_letters):
    """A regex character class of the code points whose Unicode category
    starts with one of `first_letters` (RE2's \\pL, \\pN)."""
    ranges, start, previous = [], None, None
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code))[0] in first_letters:
            start = code if start is None else start
            previous = code
        elif start is not None:
            ranges.append((start, previous))
            start = None
    if start is not None:
        ranges.append((start, previous))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


L, N = _category_class("L"), _category_class("N")
WS = "\t\n\f\r "  # RE2's \s
STRIP = "\t\n\v\f\r "
TOKENIZE = [(re.compile(pattern), replacement) for pattern, replacement in [
    ("\u200b", ""), (f"[{WS}\u00a0\u202f\u2009]+", " "), ("[\u2019\u02bc]", "'"),
    (f"([{L}{N}])-([{L}{N}])", r"\1 @-@ \2"), (f"([{L}{N}])-([{L}{N}])", r"\1 @-@ \2"),
    (f"([{L}]')([{L}])", r"\1 \2"), (f"([^{L}{N}{WS}'@-])", r" \1 "),
    (f"([{N}]) +([.,:]) +([{N}])", r"\1 @\2@ \3"), (f"([{N}]) +([.,:]) +([{N}])", r"\1 @\2@ \3"),
    (f"[{WS}]+", " ")]]
DETOKENIZE = [(re.compile(pattern), replacement) for pattern, replacement in [
    (f"[{WS}]+", " "), *([("(^| )##", "")] if SUBWORDS else []),  # a ## piece joins
    (" ?@-@ ?", "-"), (" ?@([.,:])@ ?", r"\1"), (f"([{L}]') ", r"\1"),
    (" ([.,)\u2026%])", r"\1"), ("([(]) ", r"\1")]]


def tokens(text):
    """The sentence's tokens as the model saw them in training."""
    for pattern, replacement in TOKENIZE:
        text = pattern.sub(replacement, text)
    return [token for token in re.split(f"[{STRIP}]+", text.strip(STRIP)) if token]


def pieces(word):
    """The ids of a word's WordPiece pieces: the longest piece in the source
    vocabulary the word starts with, then the longest "##" piece where that
    one ends, and so on; [UNK] (1) alone when some part has no piece or the
    word is longer than 100 UTF-8 bytes."""
    if len(word.encode("utf-8")) > 100:
        return [1]
    ids, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = ("##" if start else "") + word[start:end]
            if piece in SOURCE:
                ids.append(SOURCE[piece])
                break
        else:
            return [1]
        start = end
    return ids


def encode(texts):
    """The model's input for a list of sentences: int32 ids (n, LENGTH), and
    whether each sentence had more than LENGTH tokens (it is cut)."""
    ids = [[i for token in tokens(text)
            for i in (pieces(token) if SUBWORDS else [SOURCE.get(token, 1)])]
           for text in texts]
    return (np.array([row[:LENGTH] + [0] * (LENGTH - len(row)) for row in ids], np.int32),
            [len(row) > LENGTH for row in ids])


def decode(row):
    """The translation of one row of the model's output (up to [end])."""
    row = list(row)
    text = " ".join(TARGET[i] for i in row[:row.index(END) if END in row else len(row)])
    for pattern, replacement in DETOKENIZE:
        text = pattern.sub(replacement, text)
    return text.strip(STRIP)

{runtime}

def translate(texts):
    """Returns the translation of each sentence ("" for one without tokens)."""
    ids, _ = encode(texts)
    return [decode(row) if tokens(text) else "" for text, row in zip(texts, run(ids))]


if __name__ == "__main__":
    for text, translation in zip(sys.argv[1:], translate(sys.argv[1:])):
        print(text, "->", translation)
'''

_LITERT_RUNTIME = '''try:
    from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert
except ImportError:  # TensorFlow bundles the same interpreter
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter

runner = Interpreter(model_path="model.tflite").get_signature_runner()


def run(ids):
    """Target ids (n, LENGTH + 1) of source ids (n, LENGTH), one sentence a call
    (the model's batch is 1)."""
    return np.concatenate([runner(source_ids=row[None])["target_ids"] for row in ids])
'''

_ONNX_RUNTIME = '''import onnxruntime  # pip install onnxruntime

session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])


def run(ids):
    """Target ids (n, LENGTH + 1) of source ids (n, LENGTH)."""
    return session.run(["target_ids"], {"source_ids": ids})[0]
'''
