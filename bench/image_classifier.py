"""Image classifier: quality and speed on real CIFAR-10 JPEGs, side by side.

Runs, in one go, on ../shared/data/images/cifar10 (8,000 train / 2,000 test):

1. the plain baseline a user would write from the TensorFlow CNN tutorial
   (image_dataset_from_directory, 3 conv layers, Adam, 10 epochs, trained on
   all 8,000 train images);
2. the image-classifier template with its default model and settings
   (`dltool new` + `dltool train` + `dltool evaluate`, as a user runs them;
   10% of train held out for validation, so it trains on 7,200).

It prints test accuracy, training time (the sum of the epochs, validation
included) and training samples per second for both, and the wall time of the
whole `dltool train` command (start-up and data checks included), and writes
them to bench/results/image_classifier.json.

Candidates run in the same go, one after the other (never two trainings at
once: the time is the measure), each a `--variant "NAME KEY=VALUE ..."`:
the template with those config overrides beside its defaults
(`--skip-default` leaves the defaults out, `--append` adds the rows to the
results file instead of replacing it). `--evaluate-also KEY=VALUE` evaluates
every trained run once more with that override (one that changes no weight,
such as `model.test_time_flip`), so both figures come from the same weights.
Each row records the processor and the load average before and after it.

    python bench/image_classifier.py [--data DIR] [--skip-baseline]
        [--variant "NAME KEY=VALUE ..."]... [--evaluate-also KEY=VALUE]...
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"


def baseline(data, epochs):
    """The TensorFlow tutorial CNN, fed the way the tutorial's users do."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    train = keras.utils.image_dataset_from_directory(
        data / "train", image_size=(32, 32), batch_size=32, seed=0, verbose=False)
    test = keras.utils.image_dataset_from_directory(
        data / "test", image_size=(32, 32), batch_size=32, shuffle=False, verbose=False)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Rescaling(1.0 / 255),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=2)
    seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(test, verbose=0)
    return {"name": f"TF-tutorial CNN, {epochs} epochs",
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "test_accuracy": round(accuracy, 4),
            "train_command_wall_seconds": None,
            "train_seconds": round(seconds, 1), "epochs": epochs,
            "samples_per_second": round(epochs * 8000 / seconds, 1)}


def template(data, overrides, name="defaults", evaluate_also=()):
    """`dltool new image-classifier`, `dltool train`, `dltool evaluate`."""
    dltool = [sys.executable, "-m", "dltool.cli"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "cifar"
        subprocess.run([*dltool, "new", "image-classifier", str(project), "--data", str(data)],
                       check=True)
        sets = [a for o in overrides for a in ("--set", o)]
        started = time.perf_counter()
        subprocess.run([*dltool, "train", "--project", str(project), *sets], check=True)
        wall_seconds = time.perf_counter() - started
        load_after = os.getloadavg()

        def evaluate(*more):
            return json.loads(subprocess.run(
                [*dltool, "evaluate", "--project", str(project), "--json",
                 *[a for o in more for a in ("--set", o)]],
                check=True, capture_output=True, text=True).stdout)

        evaluation = evaluate()
        also = {o: round(evaluate(o)["accuracy"], 4) for o in evaluate_also}
        (run,) = (project / "runs").iterdir()
        meta = json.loads((run / "run.json").read_text())
    seconds = meta["train_seconds"]
    return {"name": f"dltool image-classifier ({name})", "overrides": list(overrides),
            "test_accuracy": round(evaluation["accuracy"], 4),
            **({"test_accuracy_also": also} if also else {}),
            "train_seconds": round(seconds, 1), "epochs": meta["epochs_done"],
            "samples_per_second": round(meta["epochs_done"] * meta["sizes"]["train"] / seconds, 1),
            "best_val_accuracy": round(meta["best_value"], 4),
            "best_epoch": meta.get("best_epoch"),
            "train_command_wall_seconds": round(wall_seconds, 1),
            "parameters": meta["parameters"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "processor": results_file.machine()["processor"],
            "command": " ".join(sys.argv),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after]}


def variant(text):
    """`NAME KEY=VALUE ...` of `--variant`: `(name, [overrides])`."""
    name, *overrides = text.split()
    if not overrides or not all("=" in o for o in overrides):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME KEY=VALUE ...")
    return name, overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the template run")
    parser.add_argument("--skip-default", action="store_true",
                        help="run only the --variant rows of the template")
    parser.add_argument("--variant", dest="variants", action="append", default=[],
                        type=variant, metavar='"NAME KEY=VALUE ..."',
                        help="a candidate: the template with these overrides too")
    parser.add_argument("--evaluate-also", action="append", default=[], metavar="KEY=VALUE",
                        help="evaluate each trained run again with this override")
    parser.add_argument("--append", action="store_true",
                        help="add this run to the results file instead of replacing it")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "image_classifier.json")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    previous = json.loads(args.out.read_text())["rows"] \
        if args.append and args.out.is_file() else []
    rows = [] if args.skip_baseline else [baseline(args.data, args.baseline_epochs)]
    runs = [] if args.skip_default else [("defaults", args.overrides)]
    runs += [(name, [*args.overrides, *overrides]) for name, overrides in args.variants]
    for name, overrides in runs:
        rows.append(template(args.data, overrides, name, args.evaluate_also))
        print(json.dumps(rows[-1]), flush=True)
        write(args.out, [*previous, *rows])  # after each run: a killed bench keeps its rows
    write(args.out, [*previous, *rows])
    print(f"\n{'run':<44} {'test acc':>8} {'train s':>8} {'epochs':>6} {'samples/s':>9} "
          f"{'command s':>9}")
    for row in rows:
        wall = row["train_command_wall_seconds"]
        print(f"{row['name']:<44} {row['test_accuracy']:>8.4f} {row['train_seconds']:>8.1f} "
              f"{row['epochs']:>6} {row['samples_per_second']:>9.1f} "
              f"{wall if wall is not None else '-':>9}")
        for override, accuracy in row.get("test_accuracy_also", {}).items():
            print(f"{'  evaluated with ' + override:<44} {accuracy:>8.4f}")
    print(f"written to {args.out}")


def write(path, rows):
    """Writes the results file: the rows, with the machine they ran on."""
    results_file.write(path, {"rows": rows})


if __name__ == "__main__":
    main()
