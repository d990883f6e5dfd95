"""Multi-label classification on sets made from real data: micro/macro F1 and mAP.

- Images: CIFAR-10 (../shared/data/images/cifar10, 800 training and 200 test
  JPEGs per class) pairs of images of two different classes, tiled side by
  side into one 32x64 image labelled with both classes (seeded pairs; each
  image is in one pair per `--image-pairs` round). Trained as a user runs
  it: a manifest (`path,label,split`, labels `cat;dog`), `dltool new
  image-classifier --data pairs.csv`, `data.multi_label = true`,
  `data.image_size = [32, 64]`.
- Texts: SST-2 (../shared/data/sentiment/sst2) sentences joined in pairs, each
  labelled with the set of its two sentiments (`positive`, `negative`, or
  both), trained with the sentiment template.

Each project is trained (`training.monitor = "val_pr_auc"`), evaluated on
its test pairs (`dltool evaluate --json`) and the test figures printed: micro
and macro F1 and exact match with the thresholds chosen on the validation
split, the same with 0.5 for every label (from the run's
predictions-test.csv), and the mean average precision (which no threshold
changes). The full run writes bench/results/multilabel.json (13 minutes
on 2 cores with `--image-epochs 15`, 2026-12-01; figures in the README):

    python bench/multilabel.py [--image-epochs N]

A quick check that it works (a few hundred pairs, tiny models: 54 s on 2
shared cores; its figures mean nothing):

    python bench/multilabel.py --quick
"""

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import results_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
SEED = 0
MULTI_LABEL = ["data.multi_label=true", "training.monitor=val_pr_auc",
               "tune.objective=val_pr_auc", "training.verbose=0"]
QUICK = {"image_pairs": 300, "text_pairs": 600, "test_pairs": 200, "image_epochs": 2,
         "text_epochs": 2,
         "image_model": ["model.filters=8", "model.blocks=1"],
         "text_model": ["model.embedding_dim=16", "model.units=16", "model.layers=1",
                        "data.subword_buckets=1000"]}
# The templates' default models and epochs (the image classifier's 44); the
# image set as many pairs as CIFAR-10 has training images.
FULL = {"image_pairs": 8000, "text_pairs": 30000, "test_pairs": 2000, "image_epochs": 44,
        "text_epochs": 3, "image_model": [], "text_model": []}


def image_pairs(data, split, count, folder, rng):
    """Tiles `count` pairs of `split` images of two different classes; returns
    the manifest rows `(path, "a;b", split)`."""
    files = [(path, class_dir.name) for class_dir in sorted((data / split).iterdir())
             for path in sorted(class_dir.iterdir())]
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    while len(rows) < count:
        (left, a), (right, b) = rng.sample(files, 2)
        if a == b:
            continue
        tiled = Image.new("RGB", (64, 32))
        tiled.paste(Image.open(left).convert("RGB").resize((32, 32)), (0, 0))
        tiled.paste(Image.open(right).convert("RGB").resize((32, 32)), (32, 0))
        path = folder / f"{split}-{len(rows):05d}.jpg"
        tiled.save(path, quality=95)
        rows.append((path.name, f"{a};{b}", split))
    return rows


def text_pairs(path, count, rng):
    """`count` pairs of SST-2 sentences, each labelled with its sentiments."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    examples = [line.rsplit("\t", 1) for line in lines if "\t" in line]
    names = {"0": "negative", "1": "positive"}
    rows = []
    for _ in range(count):
        (first, x), (second, y) = rng.sample(examples, 2)
        labels = sorted({names[x.strip()], names[y.strip()]})
        rows.append(f"{first.strip()} . {second.strip()}\t{';'.join(labels)}")
    return ["sentence\tlabel", *rows]


def run_project(template, project, data, epochs, overrides):
    """new -> train -> evaluate --json; returns the evaluation and the run folder."""
    subprocess.run([*DLTOOL, "new", template, str(project), "--data", str(data)], check=True,
                   stdout=subprocess.DEVNULL)
    sets = [a for o in [*MULTI_LABEL, *overrides] for a in ("--set", o)]
    started = time.perf_counter()
    subprocess.run([*DLTOOL, "train", "--project", str(project), "--epochs", str(epochs),
                    *sets], check=True)
    seconds = time.perf_counter() - started
    evaluation = json.loads(subprocess.run(
        [*DLTOOL, "evaluate", "--project", str(project), "--json"], check=True,
        capture_output=True, text=True).stdout)
    return evaluation, next((project / "runs").iterdir()), seconds


def at_half(run, evaluation):
    """The test figures with 0.5 for every label, from predictions-test.csv."""
    from dltool.tasks import multilabel

    names = [c["name"] for c in evaluation["per_class"]]
    with open(run / "predictions-test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    probabilities = np.array([[float(r[f"probability_{n}"]) for n in names] for r in rows],
                             np.float32)
    targets = np.array([[n in r["true"].split(";") for n in names] for r in rows], np.float32)
    return multilabel.evaluation_report(targets, probabilities, [0.5] * len(names), names)


def summary(name, evaluation, half, seconds, examples):
    return {"set": name, "train_examples": examples, "test_examples": evaluation["examples"],
            "micro_f1": round(evaluation["micro_f1"], 4),
            "macro_f1": round(evaluation["macro_f1"], 4),
            "exact_match": round(evaluation["exact_match"], 4),
            "mean_average_precision": round(evaluation["mean_average_precision"], 4),
            "micro_f1_at_0.5": round(half["micro_f1"], 4),
            "macro_f1_at_0.5": round(half["macro_f1"], 4),
            "exact_match_at_0.5": round(half["exact_match"], 4),
            "thresholds": {c["name"]: round(c["threshold"], 3)
                           for c in evaluation["per_class"]},
            "train_command_seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few hundred pairs and tiny models: checks that it runs")
    parser.add_argument("--only", choices=["images", "texts"], default=None)
    parser.add_argument("--image-epochs", type=int, default=None,
                        help="epochs of the image project (default: the template's 44)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: bench/results/multilabel.json for the "
                             "full run, none for --quick)")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.image_epochs is not None:
        settings["image_epochs"] = args.image_epochs
    out = args.out or (None if args.quick else REPO / "bench" / "results" / "multilabel.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "images"):
            rng = random.Random(SEED)
            folder = work / "cifar-pairs"
            manifest = image_pairs(SHARED / "images" / "cifar10", "train",
                                   settings["image_pairs"], folder, rng)
            manifest += image_pairs(SHARED / "images" / "cifar10", "test",
                                    settings["test_pairs"], folder, rng)
            with open(folder / "pairs.csv", "w", newline="") as f:
                csv.writer(f).writerows([("path", "label", "split"), *manifest])
            evaluation, run, seconds = run_project(
                "image-classifier", work / "images", folder / "pairs.csv",
                settings["image_epochs"], ["data.image_size=[32, 64]",
                                           *settings["image_model"]])
            rows.append(summary("CIFAR-10 pairs tiled side by side", evaluation,
                                at_half(run, evaluation), seconds, settings["image_pairs"]))
        if args.only in (None, "texts"):
            rng = random.Random(SEED)
            folder = work / "sst2-pairs"
            folder.mkdir()
            sst2 = SHARED / "sentiment" / "sst2"
            (folder / "train.tsv").write_text(
                "\n".join(text_pairs(sst2 / "train.tsv", settings["text_pairs"], rng)) + "\n")
            (folder / "test.tsv").write_text(
                "\n".join(text_pairs(sst2 / "test.tsv", settings["test_pairs"], rng)) + "\n")
            evaluation, run, seconds = run_project(
                "sentiment", work / "texts", folder, settings["text_epochs"],
                settings["text_model"])
            rows.append(summary("SST-2 sentence pairs", evaluation, at_half(run, evaluation),
                                seconds, settings["text_pairs"]))
    print(f"\n{'set':<34} {'micro F1':>8} {'macro F1':>8} {'exact':>6} {'mAP':>6}   "
          f"{'at 0.5: micro':>13} {'macro':>6} {'exact':>6}")
    for row in rows:
        print(f"{row['set']:<34} {row['micro_f1']:>8.4f} {row['macro_f1']:>8.4f} "
              f"{row['exact_match']:>6.3f} {row['mean_average_precision']:>6.4f}   "
              f"{row['micro_f1_at_0.5']:>13.4f} {row['macro_f1_at_0.5']:>6.4f} "
              f"{row['exact_match_at_0.5']:>6.3f}")
    if out is not None:
        results_file.write(out, {"quick": args.quick, "settings": settings, "rows": rows})
        print(f"written to {out}")


if __name__ == "__main__":
    main()
