"""Run reports: figures, `report.html` and `report.md` in the run folder.

A report is a list of `Section`s (a title, a paragraph, a PNG figure, a
table). Every run gets an overview and its learning curves; for each split
the run was evaluated on (`evaluation-SPLIT.json`), the run's task adds its
own sections (`Task.report_sections(run, split, evaluation)`): classifiers
their metrics, confusion matrix and per-class table, then the image
classifier a grid of sample predictions, the sentiment classifier its most
confidently wrong texts; the translator a sample of its translations.

`report.html` is self-contained (figures embedded as base64 PNG, no scripts,
a Content-Security-Policy that allows nothing else) and every piece of text
in it is escaped by a sandboxed, autoescaping Jinja2 environment. `report.md`
links the PNG files next to it.

This layer may import `dltool.core` only (never tasks or the engine: the
task is passed in), and never imports TensorFlow; matplotlib is imported by
`plots` when a figure is drawn.
"""

import base64
import dataclasses
import datetime
import html
from pathlib import Path

import dltool
from dltool.core import runs
from dltool.report import plots


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


def write_report(project_dir, run, task, echo=None):
    """Draws a run's figures and writes its `report.html` and `report.md`.

    Args:
        project_dir: The project folder.
        run: The `dltool.core.runs.Run`.
        task: The run's `dltool.tasks.Task`, which adds the sections of each
            evaluated split.
        echo: Function that prints a line for the user, or None.

    Returns:
        The path of `report.html`.

    Raises:
        DataError: a file of the run (history, evaluation) is unreadable.
    """
    sections = [overview_section(run), *learning_curve_sections(run)]
    for split, evaluation in run.evaluations().items():
        sections += task.report_sections(run, split, evaluation)
    title = f"{Path(project_dir).name}: run {run.name}"
    run.write_text(run.REPORT_HTML, render_html(title, sections, run.dir))
    run.write_text(run.REPORT_MD, render_markdown(title, sections))
    if echo is not None:
        echo(f"Report: {run.report_html}")
    return run.report_html


def overview_section(run):
    """The run's facts: template, dates, epochs, best metric, export."""
    rows = [["run", run.name], ["template", run.get("template", "")],
            ["started", run.get("started", "")], ["status", run.get("status", "")],
            ["epochs", str(run.get("epochs_done", 0))]]
    if run.get("best_value") is not None:
        rows.append([f"best {run.get('monitor', 'value')}",
                     f"{run['best_value']:.4f} (epoch {run.get('best_epoch')})"])
    if run.get("train_seconds") is not None:
        rows.append(["training time", f"{run['train_seconds']:.0f} s"])
    if run.get("parameters") is not None:
        rows.append(["parameters", f"{run['parameters']:,}"])
    if run.get("backbone") is not None:
        rows.append(["backbone", f"{run['backbone']} (pretrained)"])
    for phase in run.get("phases", []):
        first, last = phase["epochs"]
        rate = (f", learning rate x {phase['learning_rate_factor']:g}"
                if phase["learning_rate_factor"] != 1 else "")
        rows.append([f"phase {phase['phase']} (epochs {first}-{last})",
                     f"{phase['trains']}: {phase['trainable_parameters']:,} trainable "
                     f"parameters{rate}"])
    for split, size in sorted(run.get("sizes", {}).items()):
        rows.append([f"{split} examples", str(size)])
    if run.get("init_from"):
        rows.append(["initial weights", runs.describe_start(run["init_from"])])
    rows.append(["exported as", run.get("exported_version") or "not exported"])
    return Section("Overview", table=[["", ""], *rows])


def learning_curve_sections(run):
    """The learning curves figure, when the run has a history."""
    history = run.history()
    if history is None:
        return []
    image = run.figure_file("learning_curves")
    names = plots.learning_curves(history, image)
    if not names:
        return []
    last = {k: v[-1] for k, v in history.items()}
    summary = ", ".join(f"{k} {last[k]:.4f}" + (f" (validation {last['val_' + k]:.4f})"
                                                 if f"val_{k}" in last else "")
                        for k in names)
    return [Section("Learning curves", image=image.name,
                    text=f"{len(history['epoch'])} epochs; last epoch: {summary}.")]


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
