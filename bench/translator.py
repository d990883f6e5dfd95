"""Translator: BLEU on real English-French pairs within a training time budget.

For each variant, in one go, on ../shared/data/fra-eng/fra.txt (167,130
Tatoeba pairs):

1. `dltool new translator` + `dltool train` with `training.time_budget`
   (default 30 minutes, validation included; the run stops itself), the
   project's own split: 1% of the distinct English sentences held out for
   validation and 1.5% for test (at least 2,000 test pairs, checked), every
   translation of a held-out sentence kept out of training;
2. `dltool evaluate`: corpus BLEU and chrF (sacrebleu, cased, 13a, against
   the original references) of the in-memory model with the config's
   decoding (beam search, width 4);
3. `dltool export`, then the exported SavedModel reloaded: every test
   sentence through its `translate_greedy` signature (BLEU, chrF, sentences
   per second) and the first 512 through `translate_beam` (sentences per
   second; the BLEU of beam search on the whole test split is step 2's),
   in batches of 64 after one warm-up batch;
4. the same scores on the test pairs whose English holds a word outside
   today's word vocabulary (the 8,000 most frequent words of the same
   training pairs, as `data.tokens = "words"` learns them; the same subset
   for every variant), and the SavedModel's beam translations of a few
   sentences with names and rare words (`EXAMPLES`).

Variants: `default` (the template's defaults: a bidirectional GRU encoder
and a GRU decoder with attention, 256 units, embeddings 128, learning rate
0.003) and `transformer` (`model.architecture=transformer`, 2+2 layers,
width 128, feed-forward 512, learning rate 0.001); `lstm` (the default with
`model.cell=lstm`) and `words` (the default with whole-word vocabularies,
`data.tokens=words`, as every row before subwords became the default) on
request.

It prints a table and writes bench/results/translator.json.

    python bench/translator.py [--data FILE] [--budget MINUTES]
        [--variants default,gru] [--budgets default=30,gru=25]
        [--append]  (add to the rows already in bench/results/translator.json)
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
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fra-eng" / "fra.txt"
SPLIT = ("data.validation_split=0.01", "data.test_split=0.015")
VARIANTS = {
    "default": (),
    "transformer": ("model.architecture=transformer", "model.units=512",
                    "model.learning_rate=0.001"),
    "lstm": ("model.cell=lstm",),
    "words": ("data.tokens=words",),
}
DECODE_BATCH = 64
EXAMPLES = ("A Boston Terrier is running on the grass.",
            "Tom met Ekaterina in Wellington last summer.",
            "My grandfather repaired the carburetor of his Studebaker.")


def dltool(*args, capture=False):
    command = [sys.executable, "-m", "dltool.cli", *map(str, args)]
    if capture:
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout
    subprocess.run(command, check=True)
    return None


def decode(version_dir, pairs, beam_sentences):
    """Greedy BLEU and chrF, and greedy and beam speed, of the SavedModel."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dltool._tf import tf
    from dltool.tasks import translator

    loaded = tf.saved_model.load(str(version_dir))
    sources = [a for a, _ in pairs]
    results = {}
    examples = loaded.signatures["translate_beam"](texts=tf.constant(list(EXAMPLES)))
    results["examples"] = dict(zip(EXAMPLES, (t.decode("utf-8") for t in
                                              examples["translation"].numpy())))
    for name, count in (("translate_greedy", len(sources)), ("translate_beam", beam_sentences)):
        serve = loaded.signatures[name]
        serve(texts=tf.constant(sources[:DECODE_BATCH]))  # warm-up
        hypotheses = []
        started = time.perf_counter()
        for start in range(0, count, DECODE_BATCH):
            out = serve(texts=tf.constant(sources[start:min(count, start + DECODE_BATCH)]))
            hypotheses += [t.decode("utf-8") for t in out["translation"].numpy()]
        seconds = time.perf_counter() - started
        scores = translator.score(hypotheses, [b for _, b in pairs[:count]])
        results[name.removeprefix("translate_")] = {
            "sentences": count, "bleu": scores["bleu"], "chrf": scores["chrf"],
            "sentences_per_second": round(count / seconds, 1),
            "decode_seconds": round(seconds, 1), "hypotheses": hypotheses}
    return results


def word_vocabulary(project):
    """The source words `data.tokens = "words"` learns on this split's training pairs."""
    from dltool.core.config import load_config
    from dltool.data import parallel

    overrides = list(SPLIT)
    config = load_config(project / "config.toml", overrides)
    if "tokens" in config.sections["data"]:
        config = load_config(project / "config.toml", [*overrides, "data.tokens=words"])
    data = parallel.open_parallel_data(config.sections["data"], project,
                                       seed=config.sections["training"]["seed"])
    return set(data.source_vocabulary)


def outside_vocabulary(sources, vocabulary):
    """Indexes of the sources with a token outside `vocabulary`."""
    from dltool._tf import tf
    from dltool.data import parallel

    tokens = parallel.tokenize(tf.constant(sources)).numpy()
    return [i for i, row in enumerate(tokens)
            if any(t not in vocabulary for t in row.decode("utf-8").split())]


def subset_scores(indexes, hypotheses, references):
    from dltool.tasks import translator

    scores = translator.score([hypotheses[i] for i in indexes], [references[i] for i in indexes])
    return {"sentences": len(indexes), "bleu": scores["bleu"], "chrf": scores["chrf"]}


def run_variant(name, overrides, data, budget, folder, min_test_pairs=2000):
    project = folder / name
    dltool("new", "translator", project, "--data", data)
    sets = [a for o in (*SPLIT, f"training.time_budget={budget}", "training.epochs=1000",
                        "training.early_stopping_patience=0", *overrides)
            for a in ("--set", o)]
    started = time.perf_counter()
    dltool("train", "--project", project, *sets)
    wall = time.perf_counter() - started
    evaluation = json.loads(dltool("evaluate", "--project", project, "--json", capture=True))
    dltool("export", "--project", project)
    (run,) = (project / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    pairs = [tuple(line.split("\t")) for line in
             (run / "test-pairs.tsv").read_text(encoding="utf-8").splitlines()]
    if len(pairs) < min_test_pairs:
        raise SystemExit(f"only {len(pairs)} test pairs; the bench needs {min_test_pairs}")
    # Held out by source sentence: every pair of the data whose English is a
    # test sentence must be a test pair, so none was seen in training.
    test_sources = {a for a, _ in pairs}
    leaked = {tuple(field.strip() for field in line.split("\t")[:2])
              for line in Path(data).read_text(encoding="utf-8").splitlines()
              if line.split("\t")[0].strip() in test_sources} - set(pairs)
    decoded = decode(project / "saved_models" / name / "1", pairs, min(len(pairs), 512))
    references = [b for _, b in pairs]
    oov = outside_vocabulary([a for a, _ in pairs], word_vocabulary(project))
    translated = {tuple(row[:2]): row[2] for row in translator_rows(evaluation)}
    beam = [translated[pair] for pair in pairs]
    greedy = decoded["greedy"].pop("hypotheses")
    decoded["beam"].pop("hypotheses")
    outside = {"evaluate_beam": subset_scores(oov, beam, references),
               "saved_model_greedy": subset_scores(oov, greedy, references)}
    return {
        "name": name, "overrides": list(overrides), "time_budget_minutes": budget,
        "train_seconds": meta["train_seconds"], "train_wall_seconds": round(wall, 1),
        "epochs": meta["epochs_done"], "best_epoch": meta.get("best_epoch"),
        "best_val_loss": round(meta["best_value"], 4), "parameters": meta["parameters"],
        "pairs": meta["sizes"],
        "test_pairs_whose_source_is_in_training": len(leaked),
        "evaluate": {k: evaluation[k] for k in ("bleu", "chrf", "decoding", "examples",
                                                "truncated", "signature")},
        "saved_model": decoded,
        "test_sources_outside_word_vocabulary": outside,
    }


def translator_rows(evaluation):
    """`dltool evaluate`'s `(source, reference, translation)` rows of the test split."""
    from dltool.tasks.translator import _read_translations

    return _read_translations(Path(evaluation["translations_file"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budget", type=float, default=30.0, help="minutes per variant")
    parser.add_argument("--budgets", default="",
                        help="per-variant minutes, e.g. default=30,transformer=25")
    parser.add_argument("--variants", default="default,transformer")
    parser.add_argument("--min-test-pairs", type=int, default=2000,
                        help="refuse a smaller test split (lower it only to try the script)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other variants already in --out")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "translator.json")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"no fra.txt at {args.data}")
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(",")
                                        if item)}
    names = args.variants.split(",")
    rows = []
    if args.append and args.out.is_file():
        rows = [r for r in json.loads(args.out.read_text())["rows"] if r["name"] not in names]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_variant(name, VARIANTS[name], args.data.resolve(),
                                    budgets.get(name, args.budget), Path(tmp),
                                    args.min_test_pairs))
            print(json.dumps(rows[-1], indent=2), flush=True)
            write(args.out, rows)

    print(f"\n{'variant':<12} {'train s':>8} {'epochs':>6} {'BLEU beam':>9} {'chrF':>6} "
          f"{'BLEU greedy':>11} {'greedy sent/s':>13} {'beam sent/s':>11} {'OOV BLEU/chrF':>13}")
    for row in rows:
        saved = row["saved_model"]
        print(f"{row['name']:<12} {row['train_seconds']:>8.0f} {row['epochs']:>6} "
              f"{row['evaluate']['bleu']:>9.2f} {row['evaluate']['chrf']:>6.2f} "
              f"{saved['greedy']['bleu']:>11.2f} {saved['greedy']['sentences_per_second']:>13.1f} "
              f"{saved['beam']['sentences_per_second']:>11.1f} "
              f"{row['test_sources_outside_word_vocabulary']['evaluate_beam']['bleu']:>6.2f}/"
              f"{row['test_sources_outside_word_vocabulary']['evaluate_beam']['chrf']:.2f}")
    print(f"written to {args.out}")


def write(path, rows):
    results_file.write(path, {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "command": "flock /tmp/dltool-bench.lock python "
                                         "bench/translator.py " + " ".join(sys.argv[1:]),
                              "rows": rows})


if __name__ == "__main__":
    main()
