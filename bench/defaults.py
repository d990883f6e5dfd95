"""Defaults derived from the data ("auto") against today's fixed ones, side by side.

Runs, in one go, with the image-classifier template as a user runs it
(`dltool new`, `dltool train`, `dltool evaluate`):

1. the demo (`make demo`'s commands on the embedded 500-image CIFAR-10
   sample, `dltool train --epochs 15`, then export and predict its three
   sample images): with today's explicit values (`data.image_size = [32, 32]`,
   `model.batchnorm_momentum = 0.9`, the Makefile's override) against the
   new defaults (`auto`);
2. CIFAR-10 subsets of 50, 200 and 800 training images per class (the first
   files of each class of ../shared/data/images/cifar10/train, 10% of them
   held out for validation), tested on the whole test folder (2,000 images):
   today's defaults (`image_size = [32, 32]`, `batchnorm_momentum = 0.99`,
   44 epochs) against the `auto` ones.

When the `auto` values of a row come out equal to today's (the run's
resolved config says so), today's row is that same run rather than a second
training of the same model (`--always-both` trains it again anyway).

It prints test accuracy, the training time (the sum of the epochs,
validation included) and the wall time of the `dltool train` command, and
writes them to bench/results/defaults.json.

    python bench/defaults.py [--data DIR] [--per-class 50 200 800] [--skip-demo]
    python bench/defaults.py --image-cost 32 64 96 128   # the image size cap's reason
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
SAMPLES = ("cat", "horse", "ship")  # the demo's samples/*.jpg, named by their class

# Today's values, before the `auto` defaults: the demo's explicit ones
# (the Makefile's --set) and the template's former defaults.
DEMO_TODAY = ["data.image_size=[32, 32]", "model.batchnorm_momentum=0.9"]
TEMPLATE_TODAY = ["data.image_size=[32, 32]", "model.batchnorm_momentum=0.99",
                  "training.epochs=44"]
KEYS = ("data.image_size", "training.epochs", "model.batchnorm_momentum")


def dltool(*args, capture=False):
    return subprocess.run([*DLTOOL, *map(str, args)], check=True, text=True,
                          capture_output=capture).stdout


def train_and_evaluate(project, data, overrides, epochs=None, predict=False):
    """`dltool new`, `train` (with `overrides`), `evaluate`, and optionally
    `export` + `predict` of the demo's samples, in a new project."""
    dltool("new", "image-classifier", project, *(["--data", data] if data else []))
    sets = [a for o in overrides for a in ("--set", o)]
    started = time.perf_counter()
    dltool("train", "--project", project, *(["--epochs", epochs] if epochs else []), *sets,
           "--set", "training.verbose=0")
    wall = time.perf_counter() - started
    evaluation = json.loads(dltool("evaluate", "--project", project, "--json", capture=True))
    (run,) = (project / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    resolved = tomllib.loads((run / "config.toml").read_text())
    row = {"test_accuracy": round(evaluation["accuracy"], 4),
           "test_examples": evaluation["examples"],
           "train_seconds": round(record["train_seconds"], 1),
           "train_command_wall_seconds": round(wall, 1),
           "train_examples": record["sizes"]["train"],
           "best_val_accuracy": round(record["best_value"], 4),
           "values": {key: resolved[key.split(".")[0]][key.split(".")[1]] for key in KEYS},
           "auto": record.get("auto", {})}
    if predict:
        dltool("export", "--project", project)
        samples = [project / "samples" / f"{name}.jpg" for name in SAMPLES]
        out = json.loads(dltool("predict", "--project", project, "--json", *samples,
                                capture=True))
        labels = [item["top"][0]["label"] for item in out]
        row["samples_right"] = sum(label == name for label, name in zip(labels, SAMPLES))
        row["sample_predictions"] = labels
    return row


def image_cost(sizes, images=384, batch_size=64):
    """Seconds per 1,000 images of one training epoch of the template's
    model (its defaults, batchnorm momentum 0.9) at each square size, on
    random pixels: the cost `data.image_size = "auto"` is capped by."""
    import importlib.util

    import dltool._tf  # noqa: F401  (TensorFlow's environment first)
    import keras_tuner
    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "model", REPO / "templates" / "image-classifier" / "project" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Config(dict):
        model = dict(filters=24, blocks=4, dropout=0.3, augment=True, optimizer="adamw",
                     learning_rate=0.002, weight_decay=0.05, batchnorm_momentum=0.9)

    rows = []
    for size in sizes:
        model = module.build_model(keras_tuner.HyperParameters(),
                                   Config(data={"image_size": [size, size]}), 10)
        x = np.random.uniform(0, 255, (images, size, size, 3)).astype("float32")
        y = np.random.randint(0, 10, images)
        model.fit(x[:2 * batch_size], y[:2 * batch_size], batch_size=batch_size, verbose=0)
        started = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, verbose=0)
        seconds = (time.perf_counter() - started) / images * 1000
        rows.append({"image_size": size, "seconds_per_1000_images": round(seconds, 1)})
        print(f"{size}x{size}: {seconds:.1f} s per 1,000 images", flush=True)
    return rows


def subset(data, per_class, root):
    """A folder of the first `per_class` train images of each class (links)
    and the whole test folder."""
    folder = root / f"cifar10-{per_class}"
    for class_dir in sorted((data / "train").iterdir()):
        target = folder / "train" / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            (target / path.name).symlink_to(path)
    (folder / "test").symlink_to(data / "test")
    return folder


def compare(name, tmp, data, today, epochs=None, predict=False, always_both=False):
    """The `auto` row, then today's (the same run when the values agree)."""
    rows = []
    slug = "".join(c if c.isalnum() else "-" for c in name)  # a project name
    auto = train_and_evaluate(tmp / f"{slug}-auto", data, [], epochs, predict)
    rows.append({"setting": name, "defaults": "auto", **auto})
    today_values = {o.split("=")[0]: json.loads(o.split("=", 1)[1]) for o in today}
    same = all(auto["values"][k] == v for k, v in today_values.items())
    if same and not always_both:
        rows.append({"setting": name, "defaults": "today", **auto,
                     "note": "auto chose today's values: the same run"})
    else:
        rows.append({"setting": name, "defaults": "today",
                     **train_and_evaluate(tmp / f"{slug}-today", data, today, epochs, predict)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-class", type=int, nargs="*", default=[50, 200, 800])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--always-both", action="store_true",
                        help="train today's values even when auto chose the same")
    parser.add_argument("--image-cost", type=int, nargs="*", default=None, metavar="SIZE",
                        help="only measure the training cost per image at these sizes "
                             "(e.g. 32 64 96 128), into bench/results/image_cost.json")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "defaults.json")
    args = parser.parse_args()
    if args.image_cost:
        rows = image_cost(args.image_cost)
        write(REPO / "bench" / "results" / "image_cost.json", rows)
        return
    if args.per_class and not (args.data / "train").is_dir():
        sys.exit(f"no CIFAR-10 folder at {args.data}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_demo:
            rows += compare("demo", tmp, None, DEMO_TODAY, epochs=15, predict=True,
                            always_both=True)
            write(args.out, rows)
        for per_class in args.per_class:
            folder = subset(args.data, per_class, tmp)
            rows += compare(f"cifar10 {per_class}/class", tmp, folder, TEMPLATE_TODAY,
                            always_both=args.always_both)
            write(args.out, rows)
    print(f"\n{'setting':<20} {'defaults':<8} {'train':>5} {'image':>7} {'epochs':>6} "
          f"{'bn mom.':>7} {'test acc':>8} {'train s':>8} {'command s':>9} {'samples':>7}")
    for row in rows:
        values = row["values"]
        size = "x".join(map(str, values["data.image_size"]))
        samples = f"{row['samples_right']}/3" if "samples_right" in row else "-"
        print(f"{row['setting']:<20} {row['defaults']:<8} {row['train_examples']:>5} "
              f"{size:>7} {values['training.epochs']:>6} "
              f"{values['model.batchnorm_momentum']:>7} {row['test_accuracy']:>8.4f} "
              f"{row['train_seconds']:>8.1f} {row['train_command_wall_seconds']:>9.1f} "
              f"{samples:>7}{'  (' + row['note'] + ')' if 'note' in row else ''}")
    print(f"written to {args.out}")


def write(path, rows):
    """Writes the rows measured so far (a stopped run keeps them)."""
    results_file.write(path, {"command": "python bench/defaults.py " + " ".join(sys.argv[1:]),
                              "rows": rows})


if __name__ == "__main__":
    main()
