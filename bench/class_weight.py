"""Imbalanced classes: `training.class_weight = "none"` vs `"balanced"`, side by side.

On ../shared/data/images/cifar10 (800 training JPEGs per class), three
classes are cut to a tenth of their training images (seeded), the test set
(200 per class) is kept whole. The image-classifier template is trained on
that cut twice, as a user runs it (`dltool new --data` + `dltool train` +
`dltool evaluate --json`), with the same model, epochs and seed, once per
setting. The best epoch is picked by `val_loss` (`training.monitor`): the
validation split is cut as the training split is, so `val_accuracy` would
favour the epochs that ignore the small classes.

It prints, per setting: test accuracy, balanced accuracy, macro F1 and the
mean test recall of the three cut classes (and each one's), and writes
bench/results/class_weight.json.

    python bench/class_weight.py [--data DIR] [--epochs N] [--classes cat,dog,bird]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
KEPT = 0.1  # of the cut classes' training images
SEED = 0


def cut_copy(data, folder, classes):
    """Copies `data` into `folder` with `classes` cut to `KEPT` of their
    training images; returns the training count per class."""
    counts = {}
    rng = random.Random(SEED)
    for split in ("train", "test"):
        for class_dir in sorted((data / split).iterdir()):
            files = sorted(class_dir.iterdir())
            if split == "train" and class_dir.name in classes:
                files = rng.sample(files, round(len(files) * KEPT))
            target = folder / split / class_dir.name
            target.mkdir(parents=True)
            for path in files:
                os.symlink(path, target / path.name)
            if split == "train":
                counts[class_dir.name] = len(files)
    return counts


def train_and_evaluate(data, workdir, setting, epochs):
    """One project on the cut data with `training.class_weight = setting`."""
    project = workdir / f"weights-{setting}"
    subprocess.run([*DLTOOL, "new", "image-classifier", str(project), "--data", str(data)],
                   check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([*DLTOOL, "train", "--project", str(project), "--epochs", str(epochs),
                    "--set", f"training.class_weight={setting}",
                    "--set", "training.monitor=val_loss", "--set", "training.verbose=0"],
                   check=True)
    seconds = time.perf_counter() - started
    evaluation = json.loads(subprocess.run(
        [*DLTOOL, "evaluate", "--project", str(project), "--json"],
        check=True, capture_output=True, text=True).stdout)
    return evaluation, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--classes", default="bird,cat,deer")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "class_weight.json")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    classes = args.classes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        counts = cut_copy(args.data.resolve(), workdir / "data", classes)
        for setting in ("none", "balanced"):
            evaluation, seconds = train_and_evaluate(workdir / "data", workdir, setting,
                                                     args.epochs)
            recall = {c["name"]: c["recall"] for c in evaluation["per_class"]}
            rows.append({"class_weight": setting, "accuracy": evaluation["accuracy"],
                         "balanced_accuracy": evaluation["balanced_accuracy"],
                         "macro_f1": evaluation["macro_f1"],
                         "cut_classes_recall": sum(recall[c] for c in classes) / len(classes),
                         "recall": recall, "train_command_seconds": round(seconds, 1)})
    print(f"\ntraining images per class: {counts}")
    print(f"{'class_weight':<12} {'accuracy':>8} {'bal. acc':>8} {'macro F1':>8} "
          f"{'cut recall':>10}  " + "  ".join(classes))
    for row in rows:
        print(f"{row['class_weight']:<12} {row['accuracy']:>8.4f} "
              f"{row['balanced_accuracy']:>8.4f} {row['macro_f1']:>8.4f} "
              f"{row['cut_classes_recall']:>10.4f}  "
              + "  ".join(f"{row['recall'][c]:.3f}" for c in classes))
    results_file.write(args.out, {"epochs": args.epochs, "cut_classes": classes, "kept": KEPT,
                                  "train_counts": counts, "rows": rows})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
