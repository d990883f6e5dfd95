"""Run reports (figures, report.html rendered in headless Chromium, report.md),
the run history, TensorBoard and shell completion."""

import html
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY_MODEL, invoke
from dltool.core.errors import DataError
from dltool.core.runs import Run
from dltool.report import plots
from dltool.report import reports
from dltool.tasks import classifier

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
EVIL = "<script>alert(1)</script> | *bold* [link](javascript:alert(1)) &amp; $x$"


def _png_size(path):
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


def _only_run(project):
    (run,) = (project / "runs").iterdir()
    return run


# Pieces, without training ---------------------------------------------------


def test_history_keeps_the_last_line_of_a_resumed_epoch(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n"
        "0,0.1,2.3,0.1,2.3\n1,0.2,2.1,0.15,2.2\n"
        "1,0.25,2.0,0.2,2.1\n2,0.3,1.9,0.25,2.0\n")  # epoch 1 again after a resume
    history = Run(tmp_path, {"name": "run"}).history()
    assert history["epoch"] == [0, 1, 2]
    assert history["accuracy"] == [0.1, 0.25, 0.3]
    names = plots.learning_curves(history, tmp_path / "curves.png")
    assert names == ["loss", "accuracy"]
    assert _png_size(tmp_path / "curves.png") == (840, 320)


def test_history_na_cells_are_missing_values(tmp_path):
    # CSVLogger writes NA for a metric an epoch did not log.
    (tmp_path / "history.csv").write_text("epoch,accuracy,loss,val_loss\n"
                                          "0,0.1,2.3,NA\n1,0.2,2.1,2.2\n")
    history = Run(tmp_path, {"name": "run"}).history()
    assert history["accuracy"] == [0.1, 0.2]
    assert history["val_loss"][1] == 2.2 and history["val_loss"][0] != history["val_loss"][0]


def test_history_that_is_not_csv_names_the_file(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss\nzero,abc\n")
    with pytest.raises(DataError, match="history.csv: not a readable"):
        Run(tmp_path, {"name": "run"}).history()


def test_text_is_escaped_in_html_and_markdown(tmp_path):
    plots.confident_mistakes([EVIL, ""], [0.9, 0.8], [f"{EVIL} → b", "a → b"],
                             tmp_path / "m.png")
    sections = [reports.Section(EVIL, text=EVIL, image="m.png",
                                table=[["text", "label"], [EVIL, "a\nb"]])]
    page = reports.render_html(EVIL, sections, tmp_path)
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6  # title, h1, h2, p, img alt, td
    assert "&amp;amp;" in page  # escaped once more, not decoded
    assert "img-src data:" in page and "default-src 'none'" in page
    markdown = reports.render_markdown(EVIL, sections)
    assert "<script>" not in markdown and "[link](" not in markdown  # no link: \\[link\\]
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; \\| \\*bold\\* \\[link\\]" in markdown


# A trained and evaluated image classifier -----------------------------------


@pytest.fixture(scope="module")
def evaluated_project(trained_project, tmp_path_factory):
    """A copy of `trained_project`, evaluated, plus a second 1-epoch run.

    Returns:
        `(project, first_run_name, second_run_name)`.
    """
    from click.testing import CliRunner

    project = tmp_path_factory.mktemp("evaluated") / "proj"
    shutil.copytree(trained_project, project, symlinks=True)
    (first,) = [p.name for p in (project / "runs").iterdir()]
    runner = CliRunner()
    result = invoke(runner, "evaluate", "--project", project)
    assert result.exit_code == 0, result.output
    time.sleep(1)  # run names have a one-second resolution
    result = invoke(runner, "train", "--project", project, "--fresh", "--epochs", 1,
                    *TINY_MODEL, "--set", "training.batch_size=32")
    assert result.exit_code == 0, result.output
    (second,) = [p.name for p in (project / "runs").iterdir() if p.name != first]
    return project, first, second


@pytest.mark.slow
def test_train_and_export_write_a_report(trained_project):
    run = _only_run(trained_project)
    assert _png_size(run / "learning_curves.png")[0] > 300
    markdown = (run / "report.md").read_text()
    assert "## Learning curves" in markdown and "![Learning curves](learning_curves.png)" in markdown
    assert "| exported as | proj/1 |" in markdown  # export wrote it again
    assert "data:image/png;base64," in (run / "report.html").read_text()


@pytest.mark.slow
def test_evaluate_saves_predictions_examples_and_figures(evaluated_project):
    import numpy as np

    project, first, _ = evaluated_project
    run = project / "runs" / first
    for name in ("learning_curves.png", "confusion-test.png", "samples-test.png",
                 "mistakes-test.png", "reliability-test.png"):
        width, height = _png_size(run / name)
        assert width > 300 and height > 200, name
    rows = classifier.read_predictions(Run.open(run), "test")
    assert len(rows) == 200 and [r["index"] for r in rows] == list(range(200))
    evaluation = json.loads((run / "evaluation-test.json").read_text())
    right = sum(r["true"] == r["predicted"] for r in rows)
    assert right / 200 == pytest.approx(evaluation["accuracy"])
    with np.load(run / "examples-test.npz", allow_pickle=False) as saved:
        assert saved["images"].dtype == np.uint8 and saved["images"].shape[1:] == (32, 32, 3)
        assert saved["in_sample"].sum() == 16
        assert saved["images"].std() > 10  # real pictures, not a blank array
        # Grad-CAM of each image's predicted class on the one block's ReLU
        # (32x32 before its pooling), drawn under "What the model looked at".
        assert saved["heatmaps"].shape == (len(saved["index"]), 32, 32)
        assert 0 <= saved["heatmaps"].min() and saved["heatmaps"].max() == 1
        assert str(saved["heatmap_layer"]).startswith("re_lu")
    for name in ("gradcam-samples-test.png", "gradcam-mistakes-test.png"):
        assert _png_size(run / name) == _png_size(run / name.removeprefix("gradcam-")), name
    markdown = (run / "report.md").read_text()
    for title in ("Overview", "Learning curves", "Evaluation on the test split",
                  "Confusion matrix (test)", "Per class (test)", "Calibration (test)",
                  "Sample predictions (test)"):
        assert f"## {title}" in markdown, title
    assert "| airplane | " in markdown
    assert "## What the model looked at: sample predictions (test)" in markdown


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("DLTOOL_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required (DLTOOL_REQUIRE_CHROMIUM is set) but not found")
        pytest.skip("chromium is not installed and could not be (.ci/run installs it with "
                    "`apt-get install -y chromium`)")
    return path


def _run_chromium(tmp_path, *args):
    result = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
         *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(Array.from(document.images,
      (img) => [img.alt, img.complete, img.naturalWidth, img.naturalHeight]));
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.slow
def test_report_html_renders_every_figure_in_chromium(evaluated_project, tmp_path):
    project, first, _ = evaluated_project
    run = project / "runs" / first
    page = (run / "report.html").read_text()
    figures = re.findall(r"!\[(.*?)\]\((.*?\.png)\)", (run / "report.md").read_text())
    assert len(figures) == 7  # with the two Grad-CAM grids
    # The test copy adds a script that lists the images as the browser
    # decoded them; the report's own policy (images only from data: URLs)
    # stays, with inline scripts allowed for this one.
    policy = "default-src 'none';"
    assert policy in page and "<script" not in page
    checked = tmp_path / "report.html"
    checked.write_text(page.replace(policy, policy + " script-src 'unsafe-inline';")
                       .replace("</body>", _IMAGE_CHECK + "</body>"))
    dom = _run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                        checked.as_uri())
    found = json.loads(html.unescape(re.search(r'<pre id="image-check">(.*?)</pre>',
                                               dom, re.S).group(1)))
    assert [(alt, complete, (width, height)) for alt, complete, width, height in found] == \
        [(html.unescape(alt), True, _png_size(run / name)) for alt, name in figures]

    screenshot = tmp_path / "shot.png"
    _run_chromium(tmp_path, "--window-size=1000,1400", "--hide-scrollbars",
                  f"--screenshot={screenshot}", (run / "report.html").as_uri())
    from matplotlib.image import imread

    pixels = imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (1400, 1000)
    # Text and figures, not a blank page: the top 1,400 px of this report had
    # 4.5% and 5.4% of their pixels inked in two runs (how much depends on the
    # trained model's confusion matrix); a blank page has none.
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.02


@pytest.mark.slow
def test_report_command_regenerates_and_names_close_runs(runner, evaluated_project):
    project, first, _ = evaluated_project
    run = project / "runs" / first
    for name in ("report.html", "report.md", "confusion-test.png"):
        (run / name).unlink()
    result = invoke(runner, "report", first, "--project", project)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Report: {run / 'report.html'}"
    for name in ("report.html", "report.md", "confusion-test.png"):
        assert (run / name).is_file(), name
    typo = first[:-1] + ("0" if first[-1] != "0" else "1")
    result = invoke(runner, "report", typo, "--project", project)
    assert result.exit_code == 1
    assert f"no run named {typo!r}" in result.output and "did you mean" in result.output


# Run history ----------------------------------------------------------------


@pytest.mark.slow
def test_runs_lists_newest_first(runner, evaluated_project):
    project, first, second = evaluated_project
    result = invoke(runner, "runs", "--project", project)
    assert result.exit_code == 0, result.output
    header, newest, oldest = result.output.strip().splitlines()
    assert header.split() == ["name", "template", "date", "status", "epochs", "best",
                              "test", "exported"]
    assert newest.startswith(f"{second}  image-classifier  ")
    assert oldest.split()[0] == first and oldest.split()[-1] == "proj/1"
    assert " finished  2 " in oldest and " val_accuracy 0." in oldest
    assert " accuracy 0." in oldest.split("val_accuracy", 1)[1]  # its test accuracy
    assert newest.split()[-2:] == ["-", "-"]  # not evaluated, not exported

    result = invoke(runner, "runs", "--project", project, "--quiet")
    assert result.output.split() == [second, first]
    listed = json.loads(invoke(runner, "runs", "--project", project, "--json").stdout)
    assert [r["name"] for r in listed] == [second, first]
    assert listed[1]["exported"] == "proj/1" and listed[1]["epochs"] == 2
    assert 0.0 <= listed[1]["test_accuracy"] <= 1.0 and "test_accuracy" not in listed[0]


@pytest.mark.slow
def test_runs_compare_shows_config_differences_and_metrics(runner, evaluated_project):
    project, first, second = evaluated_project
    result = invoke(runner, "runs", "--project", project, "--compare", first, second)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["training.batch_size", "64", "32"] in lines
    assert ["training.epochs", "2", "1"] in lines
    assert ["epochs", "2", "1"] in lines
    assert ["exported", "proj/1", "-"] in lines
    assert not any(line and line[0] == "model.filters" for line in lines)  # the same
    compared = json.loads(invoke(runner, "runs", "--project", project, "--compare",
                                 first, second, "--json").stdout)
    assert compared["runs"] == [first, second]
    assert ["training.batch_size", 64, 32] in compared["config"]
    result = invoke(runner, "runs", "--project", project, "--compare", first, "nope")
    assert result.exit_code == 1 and "no run named 'nope'" in result.output


def test_runs_without_runs_and_conflicting_flags(runner, project):
    result = invoke(runner, "runs", "--project", project)
    assert result.exit_code == 0 and result.output.startswith("No runs yet in ")
    result = invoke(runner, "runs", "--project", project, "--quiet", "--json")
    assert result.exit_code == 2 and "--quiet and --json" in result.output


# A sentiment run: its mistakes table, with hostile text ---------------------


@pytest.mark.slow
def test_sentiment_report_shows_confident_mistakes_escaped(runner, tmp_path):
    project = tmp_path / "reviews"
    assert invoke(runner, "new", "sentiment", project).exit_code == 0
    data = project / "mydata"
    data.mkdir()
    train = [f"{'good fine great' if i % 2 else 'bad dull awful'} film {i}\t{i % 2}"
             for i in range(80)]
    (data / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(train) + "\n")
    # The same text twice with both labels: exactly one of the two is a mistake.
    test = [f"{EVIL}\t0", f"{EVIL}\t1", "good fine great film\t1", "bad dull film\t0"]
    (data / "test.tsv").write_text("sentence\tlabel\n" + "\n".join(test) + "\n")
    result = invoke(runner, "train", "--project", project, "--epochs", 1, "--set",
                    "data.source=mydata", "--set", "model.embedding_dim=8", "--set",
                    "model.units=8", "--set", "data.sequence_length=16",
                    "--set", "training.verbose=0")
    assert result.exit_code == 0, result.output
    result = invoke(runner, "evaluate", "--project", project)
    assert result.exit_code == 0, result.output
    run = _only_run(project)
    rows = classifier.read_predictions(Run.open(run), "test")
    assert [r["input"] for r in rows] == [line.split("\t")[0] for line in test]
    assert _png_size(run / "mistakes-test.png")[0] == 1000
    markdown = (run / "report.md").read_text()
    assert "## Most confident mistakes (test)" in markdown
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; \\| \\*bold\\*" in markdown
    page = (run / "report.html").read_text()
    assert "<script>" not in page and "<td>&lt;script&gt;alert(1)&lt;/script&gt; |" in page


# TensorBoard and completion -------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_the_runs_on_loopback(trained_project, tmp_path):
    port = _free_port()
    log = tmp_path / "tensorboard.log"
    with open(log, "w") as out:
        board = subprocess.Popen([sys.executable, "-m", "dltool.cli", "tensorboard",
                                  "--project", str(trained_project), "--port", str(port)],
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        listed = None
        while listed is None and time.monotonic() < deadline:
            assert board.poll() is None, log.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs",
                                            timeout=5) as response:
                    listed = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert listed is not None, "TensorBoard did not answer within 120 s"
        run = _only_run(trained_project).name
        assert f"runs/{run}/tensorboard/train" in listed
        assert f"runs/{run}/tensorboard/validation" in listed
        assert f"http://127.0.0.1:{port}/" in log.read_text()
    finally:
        board.terminate()
        try:
            board.wait(timeout=30)
        except subprocess.TimeoutExpired:
            board.kill()
            board.wait(timeout=30)


def test_tensorboard_before_training_is_one_line(runner, project):
    result = invoke(runner, "tensorboard", "--project", project)
    assert result.exit_code == 1
    assert result.output.startswith("Error: no runs/ in ") and "dltool train" in result.output


def test_completion_scripts_complete_commands_runs_and_templates(runner, tmp_path):
    for shell, marker in (("bash", "_DLTOOL_COMPLETE=bash_complete"),
                          ("zsh", "#compdef dltool"), ("fish", "fish_complete")):
        result = invoke(runner, "completion", shell)
        assert result.exit_code == 0 and marker in result.output, shell
    assert invoke(runner, "completion", "tcsh").exit_code == 2

    bin_dir = Path(sys.executable).parent
    if shutil.which("dltool", path=str(bin_dir)) is None or shutil.which("bash") is None:
        pytest.skip("no dltool console script next to this Python, or no bash")
    (tmp_path / "runs" / "20260101-000000").mkdir(parents=True)
    script = ('source <(dltool completion bash)\n'
              'complete_words() { COMPREPLY=(); COMP_WORDS=("$@"); '
              'COMP_CWORD=$(($# - 1)); _dltool_completion dltool; echo "${COMPREPLY[*]}"; }\n'
              'complete_words dltool ru\n'
              'complete_words dltool report ""\n'
              'complete_words dltool new im\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert out == ["runs", "20260101-000000", "image-classifier"]
