"""Calibration (`training.calibrate`): NLL and ECE before and after temperature scaling.

On the real CIFAR-10 JPEGs (../shared/data/images/cifar10: 8,000 train,
2,000 test; 10% of train held out for validation) and SST-2
(../shared/data/sentiment/sst2: train.tsv, dev.tsv as the validation split,
test.tsv's 872 sentences), the image-classifier and sentiment templates are
trained as a user runs them (`dltool new --data` + `dltool train` + `dltool
evaluate --json`), with their default model and settings, so with
`training.calibrate = true`: the temperature is fitted on the validation
split after training and the exported model applies it.

It prints, per data set, the temperature, the test accuracy (calibration
does not change it) and the test split's negative log-likelihood and
expected calibration error (15 bins) before and after, as a markdown table,
and writes bench/results/calibration.json.

    python bench/calibration.py [--data-root DIR] [--epochs [NAME=]N] [--only cifar10|sst2]
    python bench/calibration.py --quick   # a tiny model on a slice: checks the bench runs
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DLTOOL = [sys.executable, "-m", "dltool.cli"]

# Per data set: the template, the folder under the data root and, for
# --quick, the tiny model of the tests (tests/conftest.py) and how many
# examples of each split (per class for the images) to keep.
DATA_SETS = {
    "cifar10": {"template": "image-classifier", "folder": "images/cifar10",
                "quick_model": ["model.filters=8", "model.blocks=1"],
                "quick_examples": {"train": 40, "test": 20}},
    "sst2": {"template": "sentiment", "folder": "sentiment/sst2",
             "quick_model": ["model.embedding_dim=16", "model.units=16",
                             "data.sequence_length=12", "data.subword_buckets=1000"],
             "quick_examples": {"train.tsv": 2000, "dev.tsv": 200, "test.tsv": 200}},
}


def image_slice(data, folder, per_class):
    """Links the first `per_class[split]` images of each class of `data`
    into `folder` (split/class/file)."""
    for split, count in per_class.items():
        for class_dir in sorted((data / split).iterdir()):
            target = folder / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                os.symlink(path.resolve(), target / path.name)


def text_slice(data, folder, lines):
    """Copies each TSV of `data` into `folder`, cut to its first `lines[name]`
    rows (all of them for None), header kept."""
    folder.mkdir(parents=True)
    for name, count in lines.items():
        with open(data / name, encoding="utf-8") as source:
            rows = source.read().splitlines()
        kept = rows if count is None else rows[:count + 1]
        (folder / name).write_text("\n".join(kept) + "\n", encoding="utf-8")


def prepare_data(name, data_root, workdir, quick):
    """The data folder a project of `name` reads: the real one, or its slice
    for --quick; SST-2's three TSV files (the folder also holds others)."""
    spec = DATA_SETS[name]
    data = data_root / spec["folder"]
    if name == "cifar10":
        if not quick:
            return data
        folder = workdir / "cifar10-slice"
        image_slice(data, folder, spec["quick_examples"])
        return folder
    folder = workdir / "sst2-data"
    text_slice(data, folder, spec["quick_examples"] if quick else
               dict.fromkeys(("train.tsv", "dev.tsv", "test.tsv")))
    return folder


def train_and_evaluate(name, data, workdir, epochs, quick):
    """`dltool new` + `dltool train` + `dltool evaluate --json` on `data`.

    Returns:
        `(run record, evaluation, seconds of the train command)`.
    """
    spec = DATA_SETS[name]
    project = workdir / name
    subprocess.run([*DLTOOL, "new", spec["template"], str(project), "--data", str(data)],
                   check=True, stdout=subprocess.DEVNULL)
    sets = ["training.verbose=0", *(spec["quick_model"] if quick else [])]
    command = [*DLTOOL, "train", "--project", str(project),
               *(arg for item in sets for arg in ("--set", item))]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    evaluation = json.loads(subprocess.run(
        [*DLTOOL, "evaluate", "--project", str(project), "--json"],
        check=True, capture_output=True, text=True).stdout)
    (run,) = (project / "runs").iterdir()
    return json.loads((run / "run.json").read_text()), evaluation, seconds


def row_of(name, record, evaluation, seconds):
    """The result row of one data set."""
    test = evaluation["calibration"]
    return {"data": name, "epochs": record["epochs_done"], "sizes": record["sizes"],
            "temperature": test["temperature"], "test_accuracy": evaluation["accuracy"],
            **{f"test_{figure}_{stage}": test[f"{figure}_{stage}"]
               for figure in ("nll", "ece") for stage in ("before", "after")},
            "validation": {key: value for key, value in record["calibration"].items()
                           if key.startswith("val_")},
            "train_command_seconds": round(seconds, 1)}


def markdown_table(rows):
    """The rows as a markdown table."""
    lines = ["| data | epochs | temperature | test accuracy | NLL before | NLL after "
             "| ECE before | ECE after |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['epochs']} | {r['temperature']:.3f} | "
              f"{r['test_accuracy']:.4f} | {r['test_nll_before']:.4f} | "
              f"{r['test_nll_after']:.4f} | {r['test_ece_before']:.4f} | "
              f"{r['test_ece_after']:.4f} |" for r in rows]
    return "\n".join(lines)


def epochs_by_name(values, default):
    """`--epochs` values (`N` for every data set, `NAME=N` for one) as a dict."""
    epochs = {name: default for name in DATA_SETS}
    for value in values:
        name, _, count = value.rpartition("=")
        for key in ([name] if name else DATA_SETS):
            if key not in DATA_SETS:
                sys.exit(f"--epochs {value}: no data set {key!r} (choose from "
                         f"{', '.join(DATA_SETS)})")
            epochs[key] = int(count)
    return epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--epochs", action="append", default=[], metavar="[NAME=]N",
                        help="epochs of every training, or of one data set's (cifar10=15); "
                             "repeatable (default: each template's own)")
    parser.add_argument("--only", choices=sorted(DATA_SETS), action="append",
                        help="run only this data set (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, 1 epoch, on a slice of each data set: checks "
                             "that the bench runs end to end (figures meaningless)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/calibration.json; with "
                             "--quick calibration-quick.json in the temporary folder)")
    args = parser.parse_args()
    names = args.only or list(DATA_SETS)
    epochs = epochs_by_name(args.epochs, 1 if args.quick else None)
    out = args.out or (Path(tempfile.gettempdir()) / "calibration-quick.json" if args.quick
                       else REPO / "bench" / "results" / "calibration.json")
    for name in names:
        if not (args.data_root / DATA_SETS[name]["folder"]).is_dir():
            sys.exit(f"no {name} folder at {args.data_root / DATA_SETS[name]['folder']}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in names:
            data = prepare_data(name, args.data_root.resolve(), workdir, args.quick)
            record, evaluation, seconds = train_and_evaluate(name, data, workdir,
                                                             epochs.get(name), args.quick)
            rows.append(row_of(name, record, evaluation, seconds))
            shutil.rmtree(workdir / name)  # its runs' TensorBoard logs and weights
    print()
    print(markdown_table(rows))
    results_file.write(out, {"quick": args.quick, "epochs": epochs, "bins": 15, "rows": rows})
    print(f"written to {out}")


if __name__ == "__main__":
    main()
