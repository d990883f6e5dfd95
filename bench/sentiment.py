"""Sentiment: quality and speed on real SST-2 sentences, side by side.

Runs, in one go, on ../shared/data/sentiment/sst2 (train.tsv: 60,614
sentences and phrases; test.tsv: 872 sentences):

1. the plain baseline a user would write from the keras-io
   bidirectional-LSTM example (TextVectorization to 50 tokens, Embedding 128,
   two Bidirectional LSTM(64), Adam, batch 32, 2 epochs, trained on all of
   train.tsv, the texts vectorized once up front);
2. the sentiment template with its default model and settings (`dltool new`
   + `dltool train` + `dltool evaluate`, as a user runs them, on a folder
   holding the data set's train.tsv, dev.tsv and test.tsv: it trains on all
   of train.tsv, picks the best epoch on dev.tsv and is tested on test.tsv);
3. the training step rate of the template's model fed from the real TSV
   through dltool's pipeline (`Experiment.open_data` + `datasets`: vectorized
   in the dataset map, cached, shuffled, batched, prefetched) against the
   same model fed the same token ids as in-memory NumPy arrays, 2 epochs each,
   first epoch (cold: includes vectorizing and tracing) and second epoch
   (warm) reported separately.

It prints a table and writes bench/results/sentiment.json.

    python bench/sentiment.py [--data DIR] [--skip-baseline] [--skip-rate]
"""

import argparse
import csv
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sentiment" / "sst2"


def read_sst2(path):
    """Reads an SST-2 TSV file the way its README shows."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for sentence, label in reader:
            texts.append(sentence.strip())
            labels.append(int(label))
    return texts, labels


def baseline(data, epochs):
    """The keras-io bidirectional LSTM, on SST-2 as a user would adapt it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from keras import layers

    keras.utils.set_random_seed(0)
    train_texts, train_labels = read_sst2(data / "train.tsv")
    test_texts, test_labels = read_sst2(data / "test.tsv")
    vectorizer = layers.TextVectorization(max_tokens=20000, output_sequence_length=50)
    vectorizer.adapt(train_texts)
    x_train, y_train = vectorizer(train_texts), np.array(train_labels)
    x_test, y_test = vectorizer(test_texts), np.array(test_labels)
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(20000, 128)(inputs)
    x = layers.Bidirectional(layers.LSTM(64, return_sequences=True))(x)
    x = layers.Bidirectional(layers.LSTM(64))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
    seconds = time.perf_counter() - started
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"name": f"keras-io BiLSTM, {epochs} epochs", "test_accuracy": round(accuracy, 4),
            "train_seconds": round(seconds, 1), "epochs": epochs,
            "samples_per_second": round(epochs * len(train_texts) / seconds, 1),
            "parameters": int(model.count_params())}


def make_project(data, folder):
    """`dltool new sentiment` on a copy of the data folder (train, dev, test)."""
    source = folder / "sst2"
    source.mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        if (data / name).is_file():
            shutil.copyfile(data / name, source / name)
    project = folder / "sentiment"
    subprocess.run([sys.executable, "-m", "dltool.cli", "new", "sentiment", str(project),
                    "--data", str(source)], check=True, stdout=subprocess.DEVNULL)
    return project


def template(data, overrides):
    """`dltool new sentiment`, `dltool train`, `dltool evaluate`."""
    dltool = [sys.executable, "-m", "dltool.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(data, Path(tmp))
        sets = [a for o in overrides for a in ("--set", o)]
        subprocess.run([*dltool, "train", "--project", str(project), *sets], check=True)
        evaluation = json.loads(subprocess.run(
            [*dltool, "evaluate", "--project", str(project), "--json"],
            check=True, capture_output=True, text=True).stdout)
        (run,) = (project / "runs").iterdir()
        meta = json.loads((run / "run.json").read_text())
    seconds = meta["train_seconds"]
    return {"name": "dltool sentiment (defaults)" + (f" {overrides}" if overrides else ""),
            "test_accuracy": round(evaluation["accuracy"], 4),
            "train_seconds": round(seconds, 1), "epochs": meta["epochs_done"],
            "best_epoch": meta["best_epoch"],
            "samples_per_second": round(meta["epochs_done"] * meta["sizes"]["train"] / seconds, 1),
            "best_val_accuracy": round(meta["best_value"], 4),
            "parameters": meta["parameters"]}


def step_rates(data, overrides):
    """Training steps per second: TSV through dltool's pipeline vs NumPy arrays."""
    import numpy as np

    from dltool._tf import keras
    from dltool.engine.experiment import Experiment

    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(data, Path(tmp))
        experiment = Experiment.open(project, overrides)
        config = experiment.config
        data_ = experiment.open_data()
        train_ds, _ = experiment.datasets(data_)
        examples = list(data_.splits["train"].as_numpy_iterator())
        features = {name: np.stack([x[name] for x, _ in examples]) for name in examples[0][0]}
        labels = np.array([y for _, y in examples])

        def fit(x, **kwargs):
            keras.utils.set_random_seed(config["training"]["seed"])
            model, _ = experiment.build_model(data_.meta)
            started, seconds = [], []
            timer = keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: started.append(time.perf_counter()),
                on_epoch_end=lambda epoch, logs: seconds.append(time.perf_counter() - started[-1]))
            model.fit(x, epochs=2, callbacks=[timer], verbose=0, **kwargs)
            return seconds

        pipeline_seconds = fit(train_ds)
        memory_seconds = fit(features, y=labels, batch_size=config["training"]["batch_size"],
                             shuffle=True)
    steps = -(-len(labels) // config["training"]["batch_size"])
    rates = {}
    for epoch, name in enumerate(("cold", "warm")):
        rates[name] = {"pipeline_steps_per_second": round(steps / pipeline_seconds[epoch], 2),
                       "memory_steps_per_second": round(steps / memory_seconds[epoch], 2),
                       "ratio": round(memory_seconds[epoch] / pipeline_seconds[epoch], 3)}
    return {"steps_per_epoch": steps, "epoch_1_cold": rates["cold"], "epoch_2_warm": rates["warm"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the template runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sentiment.json")
    args = parser.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"no SST-2 train.tsv in {args.data}")
    rows = [] if args.skip_baseline else [baseline(args.data, args.baseline_epochs)]
    rows.append(template(args.data, args.overrides))
    rates = None if args.skip_rate else step_rates(args.data, args.overrides)

    print(f"\n{'run':<40} {'test acc':>8} {'train s':>8} {'epochs':>6} {'samples/s':>9}")
    for row in rows:
        print(f"{row['name']:<40} {row['test_accuracy']:>8.4f} {row['train_seconds']:>8.1f} "
              f"{row['epochs']:>6} {row['samples_per_second']:>9.1f}")
    if rates:
        print(f"\ntraining steps/s ({rates['steps_per_epoch']} steps per epoch)"
              f"\n{'epoch':<14} {'TSV pipeline':>12} {'in memory':>10} {'ratio':>6}")
        for name in ("epoch_1_cold", "epoch_2_warm"):
            r = rates[name]
            print(f"{name:<14} {r['pipeline_steps_per_second']:>12.2f} "
                  f"{r['memory_steps_per_second']:>10.2f} {r['ratio']:>6.3f}")
    results_file.write(args.out, {"rows": rows, "step_rate": rates})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
