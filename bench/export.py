"""Export formats: size, accuracy, agreement and speed of each, side by side.

For each classifier template, trains it on real data (`dltool new` +
`dltool train`, as a user runs them; the default model, `--epochs` epochs):

- image-classifier on ../shared/data/images/cifar10 (8,000 training JPEGs),
  tested on its 2,000 test JPEGs;
- sentiment on ../shared/data/sentiment/sst2 (60,614 training sentences),
  tested on its 872 test sentences;
- translator on ../shared/data/fra-eng/fra.txt (167,130 pairs, 98.5% of
  them for training; `--translator-minutes` of training), tested on the
  first 500 of its held-out test pairs;

exports it in every format and quantization (`dltool export --format ...
--quantize ...`), then runs each export in its own runtime on the test set:

- SavedModel: the reloaded `serving_default` signature (JPEG bytes or raw
  strings in: its time includes decoding or tokenizing);
- LiteRT: `tf.lite.Interpreter` (2 threads), float32, float16, dynamic-range
  and int8 (calibrated on 300 training examples); the sentiment model's
  recurrent layers unrolled (`SentimentTask.inference_model`);
- ONNX: ONNX Runtime's CPU provider (2 threads), float32 and dynamic
  (int8 weights, `quantize_dynamic`);

against the in-memory Keras model (`model(x, training=False)` in a
`tf.function`) fed the same pixels or token ids (dltool's own decoding and
tokenizer). The translator's LiteRT and ONNX exports (greedy decoding inside
the model, token ids in and out, float32 only) are run through their README's
client (its tokenizer included) against the SavedModel's `translate_greedy`:
BLEU, the share of identical translations, ms per sentence (median of 50
one-sentence calls) and sentences per second (batches of 64; LiteRT's batch
is 1, so one sentence a call). For each: file size, test accuracy, top-1 agreement with Keras
and the largest probability difference, the latency of one example (median
of 200 single-example calls) and examples per second in batches of 64. It
prints a table per template and writes bench/results/export.json.

    python bench/export.py [--template image-classifier|sentiment|all] [--epochs N]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import results_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DATA = {"image-classifier": SHARED / "images" / "cifar10", "sentiment": SHARED / "sentiment" / "sst2",
        "translator": SHARED / "fra-eng" / "fra.txt"}
TRANSLATOR_EXPORTS = [("savedmodel", "none"), ("litert", "none"), ("onnx", "none")]
TRANSLATOR_SPLIT = ("data.validation_split=0.01", "data.test_split=0.015")
TRANSLATOR_SENTENCES = 500
# Epochs of training: the image model's 5 reach about 0.54 on CIFAR-10; one
# pass over SST-2 already puts the sentiment model above 0.8.
EPOCHS = {"image-classifier": 5, "sentiment": 1}
DLTOOL = Path(sys.executable).parent / "dltool"
EXPORTS = [("savedmodel", "none"), ("litert", "none"), ("litert", "float16"),
           ("litert", "dynamic"), ("litert", "int8"), ("onnx", "none"), ("onnx", "dynamic")]
LATENCY_CALLS = 200
BATCH = 64
THREADS = 2


def dltool(*args):
    """Runs a dltool command as a user does; returns its stdout."""
    result = subprocess.run([str(DLTOOL), *map(str, args)], check=True, text=True,
                            stdout=subprocess.PIPE)
    return result.stdout


def train(template, data, epochs, workdir):
    """A fresh project of `template` trained on `data`; returns its folder."""
    project = workdir / template
    dltool("new", template, project)
    dltool("train", "--project", project, "--epochs", epochs, "--set", f"data.source={data}",
           "--set", "training.verbose=0")
    return project


def export_all(project, exports=EXPORTS):
    """Exports the newest run in each format; returns (format, quantize) -> folder."""
    folders = {}
    for export_format, quantize in exports:
        out = dltool("export", "--project", project, "--format", export_format,
                     "--quantize", quantize)
        folders[export_format, quantize] = Path(re.search(r" as (\S+) \(", out).group(1))
    return folders


def read_test(template, data, project):
    """The test set: (raw inputs, the model's inputs as dltool makes them, labels).

    Images: the JPEG bytes and their pixels; texts: the test split's strings
    and token ids (a dict of arrays) as dltool reads them for the trained
    run (`dltool evaluate`'s data: its vocabulary and label names).
    """
    if template == "image-classifier":
        from dltool.data import images

        classes = sorted(p.name for p in (data / "test").iterdir() if p.is_dir())
        paths = [(p, i) for i, c in enumerate(classes)
                 for p in sorted((data / "test" / c).glob("*"))]
        contents = [p.read_bytes() for p, _ in paths]
        pixels = np.stack([images.decode_image(b, (32, 32)).numpy() for b in contents])
        return contents, pixels.astype(np.float32), np.array([i for _, i in paths])
    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    run = runs.find_trained(project)
    data = Experiment.for_run(project, run).open_data()  # the run's vocabulary and labels
    features, labels = zip(*data.splits["test"].as_numpy_iterator())
    features = {key: np.stack([f[key] for f in features]) for key in features[0]}
    return list(data.texts["test"]), features, np.asarray(labels)


def take(inputs, start, stop):
    """Examples `start:stop` of an array, a list, or a dict of arrays."""
    if isinstance(inputs, dict):
        return {key: value[start:stop] for key, value in inputs.items()}
    return inputs[start:stop]


def count(inputs):
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def runners(folder, export_format):
    """Returns `run(batch) -> probabilities` for an export in its runtime."""
    if export_format == "savedmodel":
        from dltool._tf import tf

        serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
        (name,) = serve.structured_input_signature[1]  # images or texts
        return lambda batch: serve(**{name: tf.constant(batch)})["probabilities"].numpy()
    if export_format == "litert":
        from dltool._tf import tf

        interpreter = tf.lite.Interpreter(model_path=str(folder / "model.tflite"),
                                          num_threads=THREADS)
        if len(interpreter.get_input_details()) > 1:  # token ids and subword ids, by name
            runner = interpreter.get_signature_runner()
            return lambda batch: next(iter(runner(**batch).values())).copy()
        given = interpreter.get_input_details()[0]["index"]
        output = interpreter.get_output_details()[0]["index"]
        shape = [None]

        def run(batch):
            if shape[0] != batch.shape:  # resizing re-allocates: only on a new shape
                interpreter.resize_tensor_input(given, batch.shape)
                interpreter.allocate_tensors()
                shape[0] = batch.shape
            interpreter.set_tensor(given, batch)
            interpreter.invoke()
            return interpreter.get_tensor(output).copy()
        return run
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) > 1:
        return lambda batch: session.run(None, {name: batch[name] for name in names})[0]
    return lambda batch: session.run(None, {names[0]: batch})[0]


def keras_runner(project):
    """`run(batch)` of the run's in-memory Keras model (inference, traced once),
    followed by the run's temperature scaling when it is calibrated, as every
    export is (`calibrated_model`): without it the reference gave the same
    labels as the exports but probabilities up to 0.2 apart."""
    from dltool._tf import tf
    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    run = runs.find_trained(project)
    experiment = Experiment.for_run(project, run)
    model = experiment.task.calibrated_model(experiment.load_trained_model(run), run.meta)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda batch: call(tf.nest.map_structure(tf.constant, batch)).numpy()


def measure(run, inputs):
    """Probabilities of all inputs (batches of 64), latency of one, examples/s."""
    run(take(inputs, 0, 1))  # warm-up: tracing, allocation
    started = time.perf_counter()
    probabilities = np.concatenate([run(take(inputs, i, i + BATCH))
                                    for i in range(0, count(inputs), BATCH)])
    per_second = count(inputs) / (time.perf_counter() - started)
    run(take(inputs, 0, 1))
    times = []
    for i in range(LATENCY_CALLS):
        started = time.perf_counter()
        run(take(inputs, i, i + 1))
        times.append(time.perf_counter() - started)
    return probabilities, float(np.median(times)) * 1000, per_second


def size_of(folder, export_format):
    if export_format == "savedmodel":  # the SavedModel alone, not model.keras beside it
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                   and p.name not in ("model.keras", "dltool.json", "labels.txt", "README.md"))
    return (folder / ("model.tflite" if export_format == "litert" else "model.onnx")).stat().st_size


def bench(template, data, epochs, workdir, project=None):
    """Trains (unless `project`), exports and measures one template; returns its rows."""
    project = project or train(template, data.resolve(), epochs, workdir)
    folders = export_all(project)
    raw, inputs, labels = read_test(template, data, project)
    reference, keras_ms, keras_rate = measure(keras_runner(project), inputs)
    rows = [{"template": template, "format": "keras (in memory)", "quantize": "none",
             "bytes": None, "test_accuracy": float(np.mean(reference.argmax(-1) == labels)),
             "top1_agreement": 1.0, "max_probability_difference": 0.0,
             "latency_ms": keras_ms, "examples_per_second": keras_rate}]
    for (export_format, quantize), folder in folders.items():
        given = np.array(raw, dtype=object) if export_format == "savedmodel" else inputs
        probabilities, ms, rate = measure(runners(folder, export_format), given)
        rows.append({"template": template, "format": export_format, "quantize": quantize,
                     "bytes": size_of(folder, export_format),
                     "test_accuracy": float(np.mean(probabilities.argmax(-1) == labels)),
                     "top1_agreement": float(np.mean(
                         probabilities.argmax(-1) == reference.argmax(-1))),
                     "max_probability_difference": float(
                         np.max(np.abs(probabilities - reference))),
                     "latency_ms": ms, "examples_per_second": rate})
    return rows, len(labels)


def train_translator(data, minutes, workdir):
    """A translator project trained for `minutes` on `data`; returns its folder."""
    project = workdir / "translator"
    dltool("new", "translator", project, "--data", data)
    sets = [a for o in (*TRANSLATOR_SPLIT, f"training.time_budget={minutes}",
                        "training.epochs=1000", "training.early_stopping_patience=0",
                        "training.verbose=0") for a in ("--set", o)]
    dltool("train", "--project", project, *sets)
    return project


def client(folder):
    """The namespace of an export's README client, run in its folder."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    here = os.getcwd()
    os.chdir(folder)
    try:
        namespace = {"__name__": "client"}
        exec(compile(code, str(folder / "client.py"), "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


def time_translations(translate, sources, batch):
    """Translations of all sources (in batches), sentences/s, median ms of one."""
    translate(sources[:1])  # warm-up
    started = time.perf_counter()
    hypotheses = [t for i in range(0, len(sources), batch)
                  for t in translate(sources[i:i + batch])]
    per_second = len(sources) / (time.perf_counter() - started)
    times = []
    for source in sources[:50]:
        started = time.perf_counter()
        translate([source])
        times.append(time.perf_counter() - started)
    return hypotheses, per_second, float(np.median(times)) * 1000


def bench_translator(data, minutes, workdir, project=None):
    """Trains (unless `project`), exports and measures the translator; returns its rows."""
    from dltool._tf import tf
    from dltool.tasks import translator

    project = project or train_translator(data.resolve(), minutes, workdir)
    folders = export_all(project, TRANSLATOR_EXPORTS)
    (run,) = sorted((project / "runs").iterdir())[-1:]
    pairs = [line.split("\t") for line in
             (run / "test-pairs.tsv").read_text(encoding="utf-8").splitlines()]
    pairs = pairs[:TRANSLATOR_SENTENCES]
    sources, references = [a for a, _ in pairs], [b for _, b in pairs]
    greedy = tf.saved_model.load(str(folders["savedmodel", "none"])).signatures[
        "translate_greedy"]

    def saved_model(texts):
        return [t.decode() for t in greedy(texts=tf.constant(texts))["translation"].numpy()]

    rows, reference = [], None
    for (export_format, quantize), folder in folders.items():
        translate = saved_model if export_format == "savedmodel" else \
            client(folder)["translate"]
        hypotheses, per_second, ms = time_translations(translate, sources, BATCH)
        reference = reference or hypotheses
        rows.append({"template": "translator", "format": export_format, "quantize": quantize,
                     "bytes": size_of(folder, export_format), "bleu": translator.score(hypotheses, references)["bleu"],
                     "identical": float(np.mean([a == b for a, b in
                                                 zip(hypotheses, reference)])),
                     "latency_ms": ms, "sentences_per_second": per_second})
    return rows, len(pairs)


def print_translator_table(rows):
    print(f"\ntranslator (greedy)\n{'format':<12} {'size KB':>8} {'BLEU':>6} {'identical':>9} "
          f"{'ms/sentence':>11} {'sentences/s':>11}")
    for row in rows:
        print(f"{row['format']:<12} {row['bytes'] / 1024:>8.0f} {row['bleu']:>6.2f} "
              f"{row['identical']:>9.2%} {row['latency_ms']:>11.1f} "
              f"{row['sentences_per_second']:>11.1f}")


def print_table(template, rows):
    print(f"\n{template}\n{'format':<18} {'quantize':<8} {'size KB':>8} {'test acc':>8} "
          f"{'agree':>7} {'max |dp|':>9} {'ms/example':>10} {'examples/s':>10}")
    for row in rows:
        size = f"{row['bytes'] / 1024:.0f}" if row["bytes"] else "-"
        print(f"{row['format']:<18} {row['quantize']:<8} {size:>8} {row['test_accuracy']:>8.4f} "
              f"{row['top1_agreement']:>7.2%} {row['max_probability_difference']:>9.2e} "
              f"{row['latency_ms']:>10.3f} {row['examples_per_second']:>10.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", choices=[*DATA, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of training (default: 5 for images, 1 for sentiment)")
    parser.add_argument("--translator-minutes", type=float, default=5,
                        help="minutes of training of the translator")
    parser.add_argument("--project", type=Path, default=None,
                        help="a trained project of --template to export instead of training")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export.json")
    args = parser.parse_args()
    templates = list(DATA) if args.template == "all" else [args.template]
    if args.project and len(templates) > 1:
        sys.exit("--project needs --template")
    for template in templates:
        if not DATA[template].exists():
            sys.exit(f"no data for {template} at {DATA[template]}")
    result = {"threads": THREADS, "templates": {}}
    for template in templates:
        with tempfile.TemporaryDirectory() as workdir:
            if template == "translator":
                rows, examples = bench_translator(DATA[template], args.translator_minutes,
                                                  Path(workdir), args.project)
                print_translator_table(rows)
                result["templates"][template] = {
                    "training_minutes": None if args.project else args.translator_minutes,
                    "test_sentences": examples, "rows": rows}
                write(args.out, result)
                continue
            epochs = args.epochs or EPOCHS[template]
            rows, examples = bench(template, DATA[template], epochs, Path(workdir), args.project)
        print_table(template, rows)
        result["templates"][template] = {"epochs": None if args.project else epochs,
                                         "test_examples": examples, "rows": rows}
        write(args.out, result)  # after each template: a later failure keeps these
    print(f"written to {args.out}")


def write(path, result):
    results_file.write(path, result)


if __name__ == "__main__":
    main()
