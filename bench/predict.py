"""Batch prediction: `dltool predict` against the bare SavedModel, side by side.

Runs, in one go, for the image classifier on the 2,000 CIFAR-10 test JPEGs
of ../shared/data/images/cifar10/test and for the sentiment template on the
872 sentences of ../shared/data/sentiment/sst2/test.tsv:

1. a project of the template with its default model, trained 1 epoch on the
   embedded sample and exported (the weights do not matter for speed; the
   architecture and the serving signature are the ones users get);
2. the baseline: the same SavedModel loaded in this process, called on
   preloaded batches of 256 (the JPEG bytes or the sentences already in
   memory, decoding and tokenizing in the graph as in `dltool predict`),
   after one warm-up call: 18,000 inputs (passes over the preloaded set)
   timed in one span right before the 20,000-input run of step 3 and one
   right after, their rates averaged (about the work that run's rate is
   measured on, so a machine whose load changes treats both alike);
3. `dltool predict INPUT --output predictions.csv` as a user runs it (a new
   process each time), on N inputs and on 10 x N (images: the test folder,
   then a folder of 20,000 symbolic links to its files; sentences:
   `--column sentence` of TSV files of 2,000 and 20,000 rows, SST-2's test
   sentences repeated). Its rate is read from the 20,000-input run as it
   goes: the inputs predicted between its first and its last `Predicted
   N/TOTAL` progress line on stderr (one per batch of 256) over the time
   between them, which leaves out the start-up (TensorFlow's import, the
   model's load, the first batch's tracing); the baseline's warm-up call
   leaves out the same. The peak RSS of each run comes from `os.wait4`.

It prints a table and writes bench/results/predict.json.

    flock /tmp/dltool-bench.lock .venv/bin/python bench/predict.py
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
SMALL, LARGE = 2000, 20000
BATCH = 256


def make_export(template, folder):
    """A project of `template` (default model), trained 1 epoch and exported."""
    project = folder / template
    subprocess.run([*DLTOOL, "new", template, str(project)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*DLTOOL, "train", "--project", str(project), "--epochs", "1",
                    "--set", "training.verbose=0"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*DLTOOL, "export", "--project", str(project)], check=True,
                   stdout=subprocess.DEVNULL)
    return project


def in_process_rate(project, inputs, count=LARGE - SMALL):
    """Examples per second of the bare SavedModel on `count` preloaded inputs, in batches."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    (version,) = (project / "saved_models").glob("*/1")
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    name = next(iter(serve.structured_input_signature[1]))
    batches = [tf.constant(inputs[i:i + BATCH]) for i in range(0, len(inputs), BATCH)]
    serve(**{name: batches[0]})  # warm-up
    done = 0
    started = time.perf_counter()
    while done < count:
        for batch in batches:
            {k: v.numpy() for k, v in serve(**{name: batch}).items()}
            done += int(batch.shape[0])
    return done / (time.perf_counter() - started)


def run_predict(project, args):
    """Runs `dltool predict` in a new process.

    Returns:
        `(seconds, rate, peak RSS MB, rows written)`: the wall time, and the
        inputs per second between the first and last progress lines.
    """
    output = project / "predictions.csv"
    started = time.perf_counter()
    child = subprocess.Popen([*DLTOOL, "predict", "--project", str(project), *args,
                              "--output", str(output)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = [(time.perf_counter(), int(line.split()[1].split("/")[0]))
                for line in child.stderr if line.startswith("Predicted ")]
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"dltool predict {' '.join(args)} failed")
    with open(output, encoding="utf-8") as f:
        rows = sum(1 for _ in f) - 1
    (first_time, first_done), (last_time, last_done) = progress[0], progress[-1]
    rate = (last_done - first_done) / (last_time - first_time)
    return seconds, rate, usage.ru_maxrss / 1024, rows


def images_case(work, data):
    project = make_export("image-classifier", work)
    files = sorted(p for p in data.rglob("*.jpg"))
    assert len(files) == SMALL, len(files)
    baseline = [p.read_bytes() for p in files]
    large = work / "cifar10-x10"
    for copy in range(LARGE // SMALL):
        for path in files:
            link = large / f"copy{copy}" / path.parent.name / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return project, baseline, [str(data)], [str(large)]


def sentences_case(work, data):
    project = make_export("sentiment", work)
    with open(data, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        sentences = [row[0].strip() for row in reader]
    baseline = sentences
    tables = []
    for count in (SMALL, LARGE):
        table = work / f"sst2-{count}.tsv"
        with open(table, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            for i in range(count):
                f.write(f"{sentences[i % len(sentences)]}\t0\n")
        tables.append([str(table), "--column", "sentence"])
    return project, baseline, *tables


def measure(name, project, preloaded, small_args, large_args):
    small_s, _, small_mb, small_rows = run_predict(project, small_args)
    before = in_process_rate(project, preloaded)
    large_s, rate, large_mb, large_rows = run_predict(project, large_args)
    baseline = (before + in_process_rate(project, preloaded)) / 2
    assert (small_rows, large_rows) == (SMALL, LARGE), (small_rows, large_rows)
    return {"name": name, "in_process_per_second": round(baseline, 1),
            "dltool_per_second": round(rate, 1), "ratio": round(rate / baseline, 3),
            "wall_seconds": {str(SMALL): round(small_s, 1), str(LARGE): round(large_s, 1)},
            "peak_rss_mb": {str(SMALL): round(small_mb), str(LARGE): round(large_mb)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "images" / "cifar10" / "test")
    parser.add_argument("--sentences", type=Path,
                        default=SHARED / "sentiment" / "sst2" / "test.tsv")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predict.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(measure("image-classifier, CIFAR-10 test JPEGs",
                            *images_case(work, args.images)))
        rows.append(measure("sentiment, SST-2 test sentences",
                            *sentences_case(work, args.sentences)))
    print(f"\n{'case':<40} {'in-process/s':>12} {'dltool/s':>9} {'ratio':>6} "
          f"{'wall 2k s':>9} {'wall 20k s':>10} {'RSS 2k MB':>9} {'RSS 20k MB':>10}")
    for row in rows:
        wall, rss = row["wall_seconds"], row["peak_rss_mb"]
        print(f"{row['name']:<40} {row['in_process_per_second']:>12.1f} "
              f"{row['dltool_per_second']:>9.1f} {row['ratio']:>6.3f} "
              f"{wall[str(SMALL)]:>9.1f} {wall[str(LARGE)]:>10.1f} "
              f"{rss[str(SMALL)]:>9} {rss[str(LARGE)]:>10}")
    results_file.write(args.out, {"rows": rows})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
