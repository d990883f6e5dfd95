"""The sentiment template's task: raw text in, label names out."""


from dltool._tf import tf
from dltool.data import text
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import classifier
from dltool.tasks.base import ServingEndpoint


class SentimentTask(classifier.ClassifierTask):
    """Labelled texts in, label names out (a text classifier).

    Its report adds, to the classifier's sections, the most confidently
    wrong texts as a figure and a table.
    """

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the text data of `config["data"]` (see `text.open_text_data`).

        For a trained run (`run_meta`, as `dltool evaluate` opens it), the
        text is vectorized with that run's vocabulary, exactly as in
        training; otherwise a vocabulary is adapted on the training texts.

        Returns:
            The `TextData`, with a `meta` dict added: class names, vocabulary,
            sequence length.
        """
        settings = config["data"]
        data = text.open_text_data(settings, root, seed=config["training"]["seed"],
                                   skip_bad=skip_bad, vocabulary=(run_meta or {}).get("vocabulary"))
        data.meta = {"class_names": data.class_names, "vocabulary": data.vocabulary,
                     "sequence_length": settings["sequence_length"],
                     "subword_buckets": settings["subword_buckets"],
                     "subwords_per_word": settings["subwords_per_word"]}
        return data

    def bytes_per_example(self, config):
        """Returns the memory one vectorized example (int32 ids + label) takes."""
        data = config["data"]
        subwords = data["subwords_per_word"] if data["subword_buckets"] else 0
        return 4 * (data["sequence_length"] * (1 + subwords) + 1)

    def model_kwargs(self, meta):
        """Returns the data-dependent arguments of `build_model`."""
        return {"num_classes": len(meta["class_names"]),
                "vocabulary_size": len(meta["vocabulary"])}

    def serving_endpoint(self, model, meta):
        """Builds the serving function: raw UTF-8 strings in, label names out.

        Args:
            model: The trained Keras model (`text.vectorize` features in,
                probabilities out).
            meta: The run's metadata (`class_names`, `vocabulary`,
                `sequence_length`, `subword_buckets`, `subwords_per_word`).

        Returns:
            A `ServingEndpoint` whose function takes a 1-D string tensor of
            texts and returns `classifier_outputs`; its resources are the
            vectorizer, whose vocabulary table the export must save.
        """
        vectorizer = text.make_vectorizer(meta["sequence_length"], vocabulary=meta["vocabulary"])
        vectorizer.build()  # a built layer can be tracked by the export
        class_names = tf.constant(meta["class_names"])

        def serve(texts):
            features = text.vectorize(vectorizer, texts, meta["subword_buckets"],
                                      meta["subwords_per_word"])
            return self.classifier_outputs(model(features, training=False), class_names)

        return ServingEndpoint(serve, [tf.TensorSpec(shape=(None,), dtype=tf.string,
                                                     name="texts")], resources=[vectorizer])

    def read_input(self, item, meta):
        """Returns the text to predict: the item itself (a raw string)."""
        return str(item)

    def readable_inputs(self, data, split):
        """Returns the raw texts of `split`, for `predictions-SPLIT.csv`."""
        return data.texts.get(split)

    def input_spec(self, export_format, meta):
        """The SavedModel's input: a batch of raw UTF-8 strings, vectorized in
        the graph with the vocabulary recorded in `dltool.json`."""
        return {"name": "texts", "shape": [None], "dtype": "string",
                "content": "raw UTF-8 texts: lower-cased, punctuation stripped, split on "
                           f"whitespace, cut or padded to {meta['sequence_length']} tokens in "
                           "the graph",
                "vocabulary": f"meta.vocabulary ({len(meta['vocabulary'])} tokens; 0 padding, "
                              "1 out of vocabulary)"}

    def format_refusal(self, export_format, meta):
        """Refuses LiteRT and ONNX for now: the model's input is made by
        TensorFlow string ops.

        `text.vectorize` standardizes with a Unicode regex, looks words up in
        the vocabulary and, with subwords (the default), hashes each word's
        character n-grams with TensorFlow's FarmHash fingerprint. Neither
        format has string ops, and a client would have to reproduce all of
        it bit for bit; dltool does not ship such a tokenizer yet.
        """
        if export_format == "savedmodel":
            return None
        return ("its input is made by TensorFlow string ops (Unicode standardization, "
                "vocabulary lookup, FarmHash of character n-grams) that "
                f"{export_format} lacks, and dltool has no client tokenizer for them yet; "
                "--format savedmodel works (TensorFlow Serving, `dltool predict`)")

    def report_sections(self, run, split, evaluation):
        """The classifier's report sections, then the most confidently wrong
        texts as a figure and a table."""
        sections = super().report_sections(run, split, evaluation)
        mistakes = classifier.confident_mistakes(classifier.read_predictions(run, split))
        if not mistakes:
            return sections
        image = run.figure_file("mistakes", split)
        plots.confident_mistakes([r["input"] for r in mistakes],
                                 [r["confidence"] for r in mistakes],
                                 [f"{r['true']} → {r['predicted']}" for r in mistakes],
                                 image)
        table = [["text", "true", "predicted", "probability"]]
        table += [[r["input"], r["true"], r["predicted"], f"{r['confidence']:.3f}"]
                  for r in mistakes]
        sections.append(Section(
            f"Most confident mistakes ({split})", image=image.name, table=table,
            text=f"The {len(mistakes)} wrong predictions made with the highest probability."))
        return sections
