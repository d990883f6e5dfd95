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

    python bench/image_classifier.py [--data DIR] [--skip-baseline]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    return {"name": f"TF-tutorial CNN, {epochs} epochs", "test_accuracy": round(accuracy, 4),
            "train_command_wall_seconds": None,
            "train_seconds": round(seconds, 1), "epochs": epochs,
            "samples_per_second": round(epochs * 8000 / seconds, 1)}


def template(data, overrides):
    """`dltool new image-classifier`, `dltool train`, `dltool evaluate`."""
    dltool = [sys.executable, "-m", "dltool.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "cifar"
        subprocess.run([*dltool, "new", "image-classifier", str(project), "--data", str(data)],
                       check=True)
        sets = [a for o in overrides for a in ("--set", o)]
        started = time.perf_counter()
        subprocess.run([*dltool, "train", "--project", str(project), *sets], check=True)
        wall_seconds = time.perf_counter() - started
        evaluation = json.loads(subprocess.run(
            [*dltool, "evaluate", "--project", str(project), "--json"],
            check=True, capture_output=True, text=True).stdout)
        (run,) = (project / "runs").iterdir()
        meta = json.loads((run / "run.json").read_text())
    seconds = meta["train_seconds"]
    return {"name": "dltool image-classifier (defaults)" + (f" {overrides}" if overrides else ""),
            "test_accuracy": round(evaluation["accuracy"], 4),
            "train_seconds": round(seconds, 1), "epochs": meta["epochs_done"],
            "samples_per_second": round(meta["epochs_done"] * meta["sizes"]["train"] / seconds, 1),
            "best_val_accuracy": round(meta["best_value"], 4),
            "train_command_wall_seconds": round(wall_seconds, 1),
            "parameters": meta["parameters"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the template run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "image_classifier.json")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    rows = [] if args.skip_baseline else [baseline(args.data, args.baseline_epochs)]
    rows.append(template(args.data, args.overrides))
    print(f"\n{'run':<36} {'test acc':>8} {'train s':>8} {'epochs':>6} {'samples/s':>9} "
          f"{'command s':>9}")
    for row in rows:
        wall = row["train_command_wall_seconds"]
        print(f"{row['name']:<36} {row['test_accuracy']:>8.4f} {row['train_seconds']:>8.1f} "
              f"{row['epochs']:>6} {row['samples_per_second']:>9.1f} "
              f"{wall if wall is not None else '-':>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
