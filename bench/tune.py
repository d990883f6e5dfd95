"""Hyperparameter search: efficiency of the tuners, and memory over many trials.

1. Efficiency, on ../shared/data/images/cifar10 (by default the first 200
   train JPEGs of each class, 10% of them held out for validation): the
   image-classifier template searched by Hyperband (`--max-epochs 4`,
   `--factor 2`), then by random search and Bayesian optimization with the
   same total epoch budget (the epochs Hyperband trained, split into trials of
   `--max-epochs` epochs each, no early stopping). To fit a ~25 minute run on
   2 CPU cores the space is a smaller CNN than the template's default:
   filters 16-32, 2-3 blocks, no augmentation, dropout, learning rate, weight
   decay.
   Reported per tuner: best validation accuracy found, trials, epochs trained
   and the wall time of the `dltool tune` command.
2. Memory: 20 one-epoch trials of the tiny CNN on the embedded CIFAR-10
   sample, run twice: as `dltool tune` runs them by default, each trial in a
   fresh child process (`tune.trials_per_process = 1`), and all in the
   `dltool tune` process (`tune.trials_per_process = 0`). The resident memory
   (RSS) of `dltool tune` and of its children is sampled every 0.2 s:
   reported per trial (the peak of the process that ran it), after trials 1,
   5, 10 and 20, the growth from trial 5 to 20 and the peak of the whole
   command (parent + child), with the command's wall time. Beside them, a bare
   Keras loop (build a tiny CNN, fit one epoch, `keras.backend.clear_session()`,
   20 times in one process): TensorFlow keeps a few MiB of every model it has
   trained, which only a new process gives back. Memory does not depend on CPU
   load, so this part may run outside the benchmark lock (`--skip-efficiency`).

Every search runs as a user runs it (`dltool new`, `dltool tune ...`) in a
temporary folder. Results go to bench/results/tune.json.

    python bench/tune.py [--data DIR] [--max-epochs 4] [--factor 2]
                         [--train-per-class 200] [--memory-trials 20]
                         [--skip-efficiency] [--skip-memory]
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
RESULTS = REPO / "bench" / "results" / "tune.json"

SMALL_SPACE = (
    "search.filters=[16, 24, 32]", "search.blocks=[2, 3]", "search.augment=[false]",
    "search.dropout={min=0.0, max=0.5, step=0.1}",
    "search.learning_rate={min=0.0003, max=0.01, sampling=\"log\"}",
    "search.weight_decay=[0.0, 0.01, 0.05]", "model.augment=false",
    "training.verbose=0", "training.warmup_epochs=0", "tune.early_stopping_patience=0",
)


def dltool(*args):
    command = [sys.executable, "-m", "dltool.cli", *map(str, args)]
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def with_sets(values):
    return [part for value in values for part in ("--set", value)]


def read_trials(folder):
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def search(project, tuner, max_epochs, max_trials, factor=3):
    started = time.perf_counter()
    dltool("tune", "--project", project, "--tuner", tuner, "--name", tuner,
           "--epochs", max_epochs, "--max-trials", max_trials,
           *with_sets([*SMALL_SPACE, f"tune.hyperband_factor={factor}"]))
    wall = time.perf_counter() - started
    folder = project / "tuning" / tuner
    summary = json.loads((folder / "summary.json").read_text())
    rows = read_trials(folder)
    row = {"tuner": tuner, "best_val_accuracy": round(summary["best"]["score"], 4),
           "best_hyperparameters": {k: v for k, v in summary["best"]["hyperparameters"].items()
                                    if k in ("filters", "blocks", "dropout", "learning_rate",
                                             "weight_decay")},
           "trials": len(rows), "epochs": sum(int(r["epochs"]) for r in rows),
           "wall_seconds": round(wall, 1)}
    print(json.dumps(row), flush=True)
    return row


def subset(data, per_class, workdir):
    """The first `per_class` train images of each class, linked into `workdir`."""
    if not per_class:
        return data
    root = workdir / "cifar-subset"
    for class_dir in sorted((data / "train").iterdir()):
        (root / "train" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (root / "train" / class_dir.name / image.name).symlink_to(image)
    return root


def efficiency(data, max_epochs, factor, per_class, workdir):
    project = workdir / "cifar"
    dltool("new", "image-classifier", project, "--data", subset(data, per_class, workdir))
    rows = [search(project, "hyperband", max_epochs, 1000, factor)]
    budget = rows[0]["epochs"]
    trials = max(1, round(budget / max_epochs))
    for tuner in ("random", "bayesian"):
        rows.append(search(project, tuner, max_epochs, trials, factor))
    images = f"{per_class} per class" if per_class else "all"
    return {"data": f"cifar10 train JPEGs ({images}), 10% held out for validation",
            "max_epochs": max_epochs, "hyperband_factor": factor, "epoch_budget": budget,
            "rows": rows}


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def child_pids(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory(workdir, trials=20, per_process=1):
    """RSS of a `dltool tune` of `trials` tiny trials, `per_process` trials per process."""
    project = workdir / f"small-{per_process}"
    dltool("new", "image-classifier", project)
    command = [sys.executable, "-m", "dltool.cli", "tune", "--project", str(project),
               "--max-trials", str(trials), "--epochs", "1", *with_sets([
                   "model.filters=8", "model.blocks=1", "training.verbose=0",
                   "search.filters=[8, 12, 16]", "search.blocks=[1]",
                   "search.dropout={min=0.0, max=0.5}", "search.augment=[true, false]",
                   "search.learning_rate={min=0.001, max=0.01, sampling=\"log\"}",
                   f"tune.trials_per_process={per_process}"])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = project / "tuning" / "random"
    by_trial, parent, peak = {}, 0, 0  # trial number -> the peak RSS while it ran
    while process.poll() is None:
        own = rss_kib(process.pid) or 0
        children = sum(rss_kib(c) or 0 for c in child_pids(process.pid))
        parent = max(parent, own)
        peak = max(peak, own + children)
        trial = finished_trials(folder) + 1
        by_trial[trial] = max(by_trial.get(trial, 0), children if per_process else own)
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    assert process.returncode == 0, "the memory search failed"
    per_trial = [round(by_trial.get(n, 0) / 1024, 1) for n in range(1, trials + 1)]
    row = {"trials": trials, "trials_per_process": per_process,
           "process": "a child per trial" if per_process == 1 else
           "one process" if per_process == 0 else f"{per_process} trials per child",
           "rss_mib_per_trial": per_trial,
           "rss_mib_after_trials": {n: per_trial[n - 1] for n in (1, 5, 10, trials)},
           "growth_mib_trial_5_to_20": round(per_trial[trials - 1] - per_trial[4], 1),
           "parent_rss_mib": round(parent / 1024, 1),
           "peak_rss_mib": round(peak / 1024, 1), "seconds": round(seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def finished_trials(folder):
    done = 0
    for meta in folder.glob("trial_*/execution0/run.json"):
        try:
            done += json.loads(meta.read_text()).get("status") == "finished"
        except ValueError:
            pass
    return done


BARE_KERAS_LOOP = """
import gc, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from keras import layers

def rss_mib():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

train = keras.utils.image_dataset_from_directory(
    sys.argv[1], image_size=(32, 32), batch_size=64, seed=0, verbose=False).cache()
after = []
for trial in range(int(sys.argv[2])):
    keras.backend.clear_session()
    gc.collect()
    model = keras.Sequential([keras.Input((32, 32, 3)), layers.Rescaling(1 / 255),
                              layers.Conv2D(8, 3, padding="same", activation="relu"),
                              layers.GlobalAveragePooling2D(),
                              layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=1, verbose=0)
    after.append(rss_mib())
print(json.dumps(after))
"""


def bare_keras_memory(trials=20):
    """The same kind of loop without dltool: build, fit 1 epoch, clear_session."""
    samples = REPO / "dltool" / "data" / "samples" / "cifar10" / "train"
    result = subprocess.run([sys.executable, "-c", BARE_KERAS_LOOP, str(samples), str(trials)],
                            check=True, text=True, capture_output=True)
    after = json.loads(result.stdout.strip().splitlines()[-1])
    mib = {n: round(after[n - 1], 1) for n in (1, 5, 10, trials)}
    row = {"trials": trials, "rss_mib_after_trials": mib,
           "growth_mib_trial_5_to_20": round(after[trials - 1] - after[4], 1)}
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=200,
                        help="train images per class (0: all 800)")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-trials", type=int, default=20)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_memory:
            results["memory"] = memory(Path(tmp), args.memory_trials, per_process=1)
            results["memory_one_process"] = memory(Path(tmp), args.memory_trials,
                                                   per_process=0)
            results["memory_bare_keras_loop"] = bare_keras_memory(args.memory_trials)
        if not args.skip_efficiency:
            results["efficiency"] = efficiency(args.data.resolve(), args.max_epochs,
                                               args.factor, args.train_per_class, Path(tmp))
    # Parts not run this time keep their previous figures.
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update(results)
    results_file.write(RESULTS, {**merged, **results_file.machine()})
    print(f"Wrote {RESULTS}")


if __name__ == "__main__":
    main()
