"""Export formats: size, accuracy, agreement and speed of each, side by side.

Trains the image-classifier template on ../shared/data/images/cifar10
(`dltool new` + `dltool train`, as a user runs them; the default model,
`--epochs` epochs), exports it in every format and quantization (`dltool
export --format ... --quantize ...`), then runs each export in its own
runtime on the 2,000 real test JPEGs:

- SavedModel: the reloaded `serving_default` signature (JPEG bytes in: its
  time includes decoding);
- LiteRT: `tf.lite.Interpreter` (2 threads), float32, float16, dynamic-range
  and int8 (calibrated on 300 training images);
- ONNX: ONNX Runtime's CPU provider (2 threads), float32 and dynamic
  (int8 weights, `quantize_dynamic`);

against the in-memory Keras model (`model(x, training=False)` in a
`tf.function`) fed the same decoded pixels. For each: file size, test
accuracy, top-1 agreement with Keras and the largest probability difference,
the latency of one example (median of 200 single-image calls) and examples
per second in batches of 64. It prints a table and writes
bench/results/export.json.

    python bench/export.py [--data DIR] [--epochs N] [--project DIR]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
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


def train(data, epochs, workdir):
    """A fresh image-classifier project trained on `data`; returns its folder."""
    project = workdir / "cifar"
    dltool("new", "image-classifier", project)
    dltool("train", "--project", project, "--epochs", epochs, "--set", f"data.source={data}",
           "--set", "training.verbose=0")
    return project


def export_all(project):
    """Exports the newest run in every format; returns (format, quantize) -> folder."""
    folders = {}
    for export_format, quantize in EXPORTS:
        out = dltool("export", "--project", project, "--format", export_format,
                     "--quantize", quantize)
        folders[export_format, quantize] = Path(re.search(r" as (\S+) \(", out).group(1))
    return folders


def read_test(data):
    """The test JPEGs: (bytes, pixels as dltool decodes them, labels)."""
    from dltool.data import images

    classes = sorted(p.name for p in (data / "test").iterdir() if p.is_dir())
    paths = [(p, i) for i, c in enumerate(classes) for p in sorted((data / "test" / c).glob("*"))]
    contents = [p.read_bytes() for p, _ in paths]
    pixels = np.stack([images.decode_image(b, (32, 32)).numpy() for b in contents])
    return contents, pixels.astype(np.float32), np.array([i for _, i in paths])


def runners(folder, export_format):
    """Returns `run(batch) -> probabilities` for an export in its runtime."""
    if export_format == "savedmodel":
        from dltool._tf import tf

        serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
        return lambda batch: serve(images=tf.constant(batch))["probabilities"].numpy()
    if export_format == "litert":
        from dltool._tf import tf

        interpreter = tf.lite.Interpreter(model_path=str(folder / "model.tflite"),
                                          num_threads=THREADS)
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
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def keras_runner(project):
    """`run(batch)` of the run's in-memory Keras model (inference, traced once)."""
    from dltool._tf import tf
    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    run = runs.find_trained(project)
    model = Experiment.for_run(project, run).load_trained_model(run)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda batch: call(tf.constant(batch)).numpy()


def measure(run, inputs):
    """Probabilities of all inputs (batches of 64), latency of one, examples/s."""
    run(inputs[:1])  # warm-up: tracing, allocation
    started = time.perf_counter()
    probabilities = np.concatenate([run(inputs[i:i + BATCH])
                                    for i in range(0, len(inputs), BATCH)])
    per_second = len(inputs) / (time.perf_counter() - started)
    run(inputs[:1])
    times = []
    for i in range(LATENCY_CALLS):
        started = time.perf_counter()
        run(inputs[i:i + 1])
        times.append(time.perf_counter() - started)
    return probabilities, float(np.median(times)) * 1000, per_second


def size_of(folder, export_format):
    if export_format == "savedmodel":  # the SavedModel alone, not model.keras beside it
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                   and p.name not in ("model.keras", "dltool.json", "labels.txt", "README.md"))
    return (folder / ("model.tflite" if export_format == "litert" else "model.onnx")).stat().st_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--project", type=Path, default=None,
                        help="a trained image-classifier project to export instead of training")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export.json")
    args = parser.parse_args()
    if not (args.data / "test").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as workdir:
        project = args.project or train(args.data.resolve(), args.epochs, Path(workdir))
        folders = export_all(project)
        contents, pixels, labels = read_test(args.data)
        reference, keras_ms, keras_rate = measure(keras_runner(project), pixels)
        rows = [{"format": "keras (in memory)", "quantize": "none", "bytes": None,
                 "test_accuracy": float(np.mean(reference.argmax(-1) == labels)),
                 "top1_agreement": 1.0, "max_probability_difference": 0.0,
                 "latency_ms": keras_ms, "examples_per_second": keras_rate}]
        for (export_format, quantize), folder in folders.items():
            inputs = np.array(contents, dtype=object) if export_format == "savedmodel" else pixels
            probabilities, ms, rate = measure(runners(folder, export_format), inputs)
            rows.append({"format": export_format, "quantize": quantize,
                         "bytes": size_of(folder, export_format),
                         "test_accuracy": float(np.mean(probabilities.argmax(-1) == labels)),
                         "top1_agreement": float(np.mean(
                             probabilities.argmax(-1) == reference.argmax(-1))),
                         "max_probability_difference": float(
                             np.max(np.abs(probabilities - reference))),
                         "latency_ms": ms, "examples_per_second": rate})
    print(f"\n{'format':<18} {'quantize':<8} {'size KB':>8} {'test acc':>8} {'agree':>7} "
          f"{'max |dp|':>9} {'ms/example':>10} {'examples/s':>10}")
    for row in rows:
        size = f"{row['bytes'] / 1024:.0f}" if row["bytes"] else "-"
        print(f"{row['format']:<18} {row['quantize']:<8} {size:>8} {row['test_accuracy']:>8.4f} "
              f"{row['top1_agreement']:>7.2%} {row['max_probability_difference']:>9.2e} "
              f"{row['latency_ms']:>10.3f} {row['examples_per_second']:>10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(),
              "epochs": None if args.project else args.epochs, "test_examples": len(labels),
              "threads": THREADS, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
