"""Transfer: what `dltool train --init-from` gains on a small data set.

On ../shared/data/images/cifar10 (800 train / 200 test JPEGs per class), in
one go:

1. pretrain the image-classifier template (its default model and settings,
   `--pretrain-epochs` epochs) on 8 of the 10 classes: airplane, automobile,
   bird, deer, frog, horse, ship, truck (6,400 images, 10% held out for
   validation);
2. for 50 and 200 training images per class of the 2 other classes, cat and
   dog (drawn with each seed; a cat-or-dog data set is new classes, so the
   head is rebuilt and every other layer loaded), train twice with the same
   settings and `--epochs` epochs: from scratch, and `--init-from` the
   pretrained run;
3. evaluate each on the 400 cat and dog test images (200 each).

It prints test accuracy side by side, per seed and averaged, and the
training time of each run, and writes them to bench/results/transfer.json.

    python bench/transfer.py [--data DIR] [--pretrain-epochs N] [--epochs N]
                             [--sizes 50 200] [--seeds 0 1 2] [--set KEY=VALUE]

`--set` applies to every cat-or-dog run, from scratch and `--init-from`
alike (e.g. `model.batchnorm_momentum=0.9`), not to the pretraining.
"""

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
PRETRAIN = ["airplane", "automobile", "bird", "deer", "frog", "horse", "ship", "truck"]
TARGET = ["cat", "dog"]
DLTOOL = [sys.executable, "-m", "dltool.cli"]


def copy_classes(data, dest, classes, per_class=None, seed=0):
    """Copies the train images of `classes` (all, or `per_class` drawn with
    `seed`) and all their test images into `dest/{train,test}/<class>/`."""
    rng = random.Random(seed)
    for name in classes:
        images = sorted((data / "train" / name).glob("*.jpg"))
        if per_class is not None:
            images = rng.sample(images, per_class)
        for split, chosen in (("train", images),
                              ("test", sorted((data / "test" / name).glob("*.jpg")))):
            (dest / split / name).mkdir(parents=True)
            for image in chosen:
                shutil.copyfile(image, dest / split / name / image.name)
    return dest


def train_and_evaluate(data, project, epochs, seed, init_from=None, overrides=()):
    """`dltool new`, `train` (optionally `--init-from`, with `--set` overrides)
    and `evaluate`; returns a row."""
    subprocess.run([*DLTOOL, "new", "image-classifier", str(project), "--data", str(data)],
                   check=True, capture_output=True)
    command = [*DLTOOL, "train", "--project", str(project), "--epochs", str(epochs),
               "--seed", str(seed), "--set", "training.verbose=0",
               *[a for o in overrides for a in ("--set", o)]]
    if init_from is not None:
        command += ["--init-from", str(init_from)]
    trained = subprocess.run(command, check=True, capture_output=True, text=True)
    evaluation = json.loads(subprocess.run(
        [*DLTOOL, "evaluate", "--project", str(project), "--json"],
        check=True, capture_output=True, text=True).stdout)
    (run,) = (project / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    start = [line for line in trained.stdout.splitlines() if line.startswith("Init from")]
    return {"test_accuracy": round(evaluation["accuracy"], 4),
            "test_examples": evaluation["examples"],
            "train_examples": record["sizes"]["train"], "epochs": record["epochs_done"],
            "train_seconds": round(record["train_seconds"], 1), "run": run,
            "init_from": start[0] if start else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of every cat-or-dog run, from scratch or not")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200],
                        help="training images per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override of every cat-or-dog run (both starts)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "transfer.json")
    args = parser.parse_args()
    if not (args.data / "train" / "cat").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"Pretraining on {', '.join(PRETRAIN)} ({args.pretrain_epochs} epochs)",
              flush=True)
        pretrained = train_and_evaluate(copy_classes(args.data, tmp / "data-8", PRETRAIN),
                                        tmp / "pretrain", args.pretrain_epochs, seed=0)
        print(f"  test accuracy on the 8 classes: {pretrained['test_accuracy']:.4f} "
              f"({pretrained['train_seconds']:.0f} s of training)", flush=True)
        rows = []
        for size in args.sizes:
            for seed in args.seeds:
                data = copy_classes(args.data, tmp / f"data-{size}-{seed}", TARGET, size, seed)
                row = {"images_per_class": size, "seed": seed}
                for start, init_from in (("scratch", None), ("init_from", pretrained["run"])):
                    result = train_and_evaluate(data, tmp / f"{start}-{size}-{seed}",
                                                args.epochs, seed, init_from, args.overrides)
                    row[start] = {k: v for k, v in result.items() if k != "run"}
                rows.append(row)
                print(f"  {size} per class, seed {seed}: scratch "
                      f"{row['scratch']['test_accuracy']:.4f}, init-from "
                      f"{row['init_from']['test_accuracy']:.4f}", flush=True)
        pretrained.pop("run")
    print(f"\n{'images/class':>12} {'seed':>4} {'scratch':>8} {'init-from':>9} "
          f"{'train s (scratch / init)':>25}")
    summary = []
    for size in args.sizes:
        chosen = [r for r in rows if r["images_per_class"] == size]
        for r in chosen:
            print(f"{size:>12} {r['seed']:>4} {r['scratch']['test_accuracy']:>8.4f} "
                  f"{r['init_from']['test_accuracy']:>9.4f} "
                  f"{r['scratch']['train_seconds']:>12.0f} / {r['init_from']['train_seconds']:.0f}")
        means = {start: round(statistics.mean(r[start]["test_accuracy"] for r in chosen), 4)
                 for start in ("scratch", "init_from")}
        summary.append({"images_per_class": size, "mean_test_accuracy": means})
        print(f"{size:>12} {'mean':>4} {means['scratch']:>8.4f} {means['init_from']:>9.4f}")
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s")
    result = {"pretrain_classes": PRETRAIN, "target_classes": TARGET,
              "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
              "overrides": args.overrides,
              "pretrained": pretrained, "rows": rows, "summary": summary,
              "wall_seconds": round(wall, 1)}
    results_file.write(args.out, result)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
