"""Run reports: figures, `report.html` and `report.md` in the run folder.

A report is a list of `Section`s (a title, a paragraph, a PNG figure, a
table). Every run gets an overview and its learning curves; for each split
the run was evaluated on (`evaluation-SPLIT.json`), the template's task module
adds its own sections through `report_sections(run, split, evaluation)`:
classifiers share `classifier_sections` (metrics, confusion matrix, per-class
table); the image classifier adds a grid of sample predictions, the sentiment
classifier its most confidently wrong texts.

`report.html` is self-contained (figures embedded as base64 PNG, no scripts,
a Content-Security-Policy that allows nothing else) and every piece of text
in it is escaped by a sandboxed, autoescaping Jinja2 environment. `report.md`
links the PNG files next to it.

What the report needs from an evaluation is saved by `dltool evaluate` in
the run folder: `evaluation-SPLIT.json`, `predictions-SPLIT.csv` (one row per
example) and, for images, `examples-SPLIT.npz` (a few input images as uint8
arrays, read with `allow_pickle=False`).

This module never imports TensorFlow; matplotlib is imported by `plots`
when a figure is drawn.
"""

import base64
import csv
import dataclasses
import datetime
import html
import json
from pathlib import Path

import dltool
from dltool.report import plots
from dltool.core import runs
from dltool.core.errors import DataError

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
HISTORY_FILE = "history.csv"
SPLITS = ("test", "val")
MISTAKES_SHOWN = 10


@dataclasses.dataclass
class Section:
    """One part of a report.

    Attributes:
        title: The section's heading.
        text: A paragraph of plain text (escaped when rendered).
        image: File name of a PNG figure in the run folder, or None.
        table: Rows of plain-text cells, the first row the header; or None.
    """

    title: str
    text: str = ""
    image: str = None
    table: list = None


def evaluation_file(split):
    return f"evaluation-{split}.json"


def predictions_file(split):
    return f"predictions-{split}.csv"


def examples_file(split):
    return f"examples-{split}.npz"


def write_report(project_dir, run, echo=None):
    """Draws a run's figures and writes its `report.html` and `report.md`.

    Args:
        project_dir: The project folder.
        run: The run's metadata dict (see `dltool.core.runs`).
        echo: Function that prints a line for the user, or None.

    Returns:
        The path of `report.html`.
    """
    from dltool.tasks import task_for

    run_dir = Path(run["dir"])
    sections = [overview_section(run), *learning_curve_sections(run_dir)]
    task = task_for(run["template"])
    for split, evaluation in read_evaluations(run_dir).items():
        if hasattr(task, "report_sections"):
            sections += task.report_sections(run, split, evaluation)
    title = f"{Path(project_dir).name}: run {run['name']}"
    runs.write_text_atomic(run_dir / REPORT_HTML, render_html(title, sections, run_dir))
    runs.write_text_atomic(run_dir / REPORT_MD, render_markdown(title, sections))
    if echo is not None:
        echo(f"Report: {run_dir / REPORT_HTML}")
    return run_dir / REPORT_HTML


def overview_section(run):
    """The run's facts: template, dates, epochs, best metric, export."""
    rows = [["run", run["name"]], ["template", run.get("template", "")],
            ["started", run.get("started", "")], ["status", run.get("status", "")],
            ["epochs", str(run.get("epochs_done", 0))]]
    if run.get("best_value") is not None:
        rows.append([f"best {run.get('monitor', 'value')}",
                     f"{run['best_value']:.4f} (epoch {run.get('best_epoch')})"])
    if run.get("train_seconds") is not None:
        rows.append(["training time", f"{run['train_seconds']:.0f} s"])
    if run.get("parameters") is not None:
        rows.append(["parameters", f"{run['parameters']:,}"])
    for split, size in sorted(run.get("sizes", {}).items()):
        rows.append([f"{split} examples", str(size)])
    rows.append(["exported as", run.get("exported_version") or "not exported"])
    return Section("Overview", table=[["", ""], *rows])


def read_history(run_dir):
    """Reads a run's `history.csv` (Keras' CSVLogger).

    A resumed run may log an epoch twice; the last line of an epoch wins.
    Empty cells and CSVLogger's `NA` (a metric missing from an epoch's logs)
    are left out.

    Returns:
        Dict of column name to list of floats, epochs in order (column
        `epoch`, 0-based); None when there is no history yet.

    Raises:
        DataError: naming the file if it cannot be parsed.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            by_epoch = {int(row["epoch"]): {k: float(v) for k, v in row.items()
                                               if v not in ("", "NA")}
                        for row in csv.DictReader(f)}
    except (KeyError, ValueError, TypeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable training history ({e})") from e
    if not by_epoch:
        return None
    epochs = sorted(by_epoch)
    columns = sorted({k for row in by_epoch.values() for k in row})
    return {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in columns}


def learning_curve_sections(run_dir):
    """The learning curves figure, when the run has a history."""
    history = read_history(run_dir)
    if history is None:
        return []
    names = plots.learning_curves(history, Path(run_dir) / "learning_curves.png")
    if not names:
        return []
    last = {k: v[-1] for k, v in history.items()}
    summary = ", ".join(f"{k} {last[k]:.4f}" + (f" (validation {last['val_' + k]:.4f})"
                                                 if f"val_{k}" in last else "")
                        for k in names)
    return [Section("Learning curves", image="learning_curves.png",
                    text=f"{len(history['epoch'])} epochs; last epoch: {summary}.")]


def read_evaluations(run_dir):
    """Returns `{split: evaluation dict}` for the splits a run was evaluated on.

    Raises:
        DataError: naming a file that exists but is not valid JSON.
    """
    found = {}
    for split in SPLITS:
        path = Path(run_dir) / evaluation_file(split)
        if path.is_file():
            try:
                found[split] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: not readable JSON ({e})") from e
    return found


def save_predictions(run_dir, split, labels, probabilities, class_names, inputs=None):
    """Writes `predictions-SPLIT.csv`: one row per evaluated example.

    Args:
        run_dir: The run folder.
        split: The split evaluated.
        labels: True labels, integers `(n,)`.
        probabilities: Model outputs `(n, classes)`.
        class_names: Names of the classes, index = label.
        inputs: Readable inputs (texts) in the same order, or None.
    """
    import numpy as np

    predicted = np.argmax(probabilities, axis=-1)
    path = Path(run_dir) / predictions_file(split)
    with runs.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "true", "predicted", "confidence", "true_probability",
                         "input"])
        for i, (label, guess) in enumerate(zip(labels, predicted)):
            writer.writerow([i, class_names[label], class_names[guess],
                             f"{probabilities[i, guess]:.6f}",
                             f"{probabilities[i, label]:.6f}",
                             inputs[i] if inputs is not None else ""])


def read_predictions(run_dir, split):
    """Reads `predictions-SPLIT.csv`; returns a list of row dicts (or [])."""
    path = Path(run_dir) / predictions_file(split)
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            row["index"] = int(row["index"])
            row["confidence"] = float(row["confidence"])
        return rows
    except (KeyError, ValueError, csv.Error) as e:
        raise DataError(f"{path}: not a readable predictions file ({e})") from e


def confident_mistakes(rows, count=MISTAKES_SHOWN):
    """The wrong predictions with the highest confidence, highest first."""
    wrong = [r for r in rows if r["true"] != r["predicted"]]
    return sorted(wrong, key=lambda r: -r["confidence"])[:count]


def classifier_sections(run, split, evaluation):
    """A classifier's evaluation: metrics, confusion matrix, per-class table.

    Args:
        run: The run's metadata dict.
        split: The split evaluated.
        evaluation: The `evaluation-SPLIT.json` contents.

    Returns:
        A list of `Section`s.
    """
    text = (f"{evaluation['examples']} examples: accuracy {evaluation['accuracy']:.4f}, "
            f"loss {evaluation['loss']:.4f}.")
    sections = [Section(f"Evaluation on the {split} split", text=text)]
    names = run["meta"]["class_names"]
    if "confusion" in evaluation:
        image = f"confusion-{split}.png"
        plots.confusion_matrix(evaluation["confusion"], names, Path(run["dir"]) / image)
        sections.append(Section(f"Confusion matrix ({split})", image=image,
                                text="Rows: true class; columns: predicted class."))
    if "per_class" in evaluation:
        table = [["class", "precision", "recall", "support"]]
        table += [[c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}",
                   str(c["support"])] for c in evaluation["per_class"]]
        sections.append(Section(f"Per class ({split})", table=table))
    return sections


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
img { max-width: 100%; border: 1px solid #d0d7de; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; max-width: 40em; overflow-wrap: anywhere; }
th { background: #f6f8fa; } .meta { color: #656d76; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Written by dltool {{ version }} on {{ written }}.</p>
{% for section in sections %}
<section>
<h2>{{ section.title }}</h2>
{% if section.text %}<p>{{ section.text }}</p>{% endif %}
{% if section.image %}<img src="data:image/png;base64,{{ images[section.image] }}" alt="{{ section.title }}">{% endif %}
{% if section.table %}
<table>
{% if section.table[0] | select | list %}<thead><tr>{% for cell in section.table[0] %}<th>{{ cell }}</th>{% endfor %}</tr></thead>{% endif %}
<tbody>
{% for row in section.table[1:] %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endif %}
</section>
{% endfor %}
</body>
</html>
"""


def render_html(title, sections, run_dir):
    """Renders the sections as one self-contained HTML page.

    Returns:
        The HTML text, with the sections' PNG files embedded.
    """
    from jinja2.sandbox import SandboxedEnvironment

    images = {s.image: base64.b64encode((Path(run_dir) / s.image).read_bytes()).decode("ascii")
              for s in sections if s.image}
    env = SandboxedEnvironment(autoescape=True)
    return env.from_string(_HTML).render(
        title=title, sections=sections, images=images, version=dltool.__version__,
        written=_now())


def render_markdown(title, sections):
    """Renders the sections as Markdown linking the PNG files next to it."""
    lines = [f"# {_md(title)}", "", f"Written by dltool {dltool.__version__} on {_now()}.", ""]
    for section in sections:
        lines += [f"## {_md(section.title)}", ""]
        if section.text:
            lines += [_md(section.text), ""]
        if section.image:
            lines += [f"![{_md(section.title)}]({section.image})", ""]
        if section.table:
            header, *rows = section.table
            lines.append("| " + " | ".join(_md(c) for c in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


def _md(text):
    """Escapes text for Markdown: no HTML, links, emphasis or table breaks."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    for char in "\\`*_[]|~":
        text = text.replace(char, "\\" + char)
    return text


def _now():
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def report_for(project_dir, run_name=None, echo=None):
    """Regenerates the report of a run (`dltool report`).

    Args:
        project_dir: The project folder.
        run_name: The run; the newest trained one when None.
        echo: Function that prints a line for the user, or None.

    Returns:
        The path of `report.html`.

    Raises:
        ProjectError: no such run, nothing trained yet.
    """
    run = runs.find_trained(project_dir, run_name)
    return write_report(project_dir, run, echo=echo)
