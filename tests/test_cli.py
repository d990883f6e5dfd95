"""The command surface: help, templates, lazy imports, one-line errors."""

import json
import subprocess
import sys

import pytest

from conftest import invoke


def test_help_lists_commands(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    for command in ("new", "templates", "info", "train", "evaluate", "export", "predict"):
        assert command in result.output


def test_templates_lists_one_line_each(runner):
    result = invoke(runner, "templates")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert any(line.startswith("image-classifier ") for line in lines)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def _run_without_tensorflow(code, *args):
    """Runs `code` in a fresh Python with `args` as `sys.argv[1:]`; returns its
    stdout, which ends with `HEAVY [...]`: the heavy modules it imported."""
    code += ("heavy = [m for m in ('tensorflow', 'keras', 'keras_tuner') "
             "if m in sys.modules]\n"
             "print('HEAVY', heavy)\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, check=True).stdout


def test_help_templates_and_new_do_not_import_tensorflow(tmp_path):
    out = _run_without_tensorflow(
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dltool.cli import cli\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['templates'], ['new', 'image-classifier', sys.argv[1]],\n"
        "             ['new', '--help'], ['train', '--help'], ['completion', 'bash'],\n"
        "             ['runs', '--project', sys.argv[1]]):\n"
        "    assert r.invoke(cli, args).exit_code == 0, args\n", tmp_path / "p")
    assert "HEAVY []" in out
    assert (tmp_path / "p" / "model.py").is_file()


def test_runs_of_an_evaluated_project_do_not_import_tensorflow(tmp_path):
    # `dltool evaluate` records what its task shows of the run in run.json:
    # listing and comparing runs reads it without importing the task.
    out = _run_without_tensorflow(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from click.testing import CliRunner\n"
        "from dltool.cli import cli\n"
        "r = CliRunner()\n"
        "assert r.invoke(cli, ['new', 'image-classifier', sys.argv[1]]).exit_code == 0\n"
        "for name, score in (('a', 0.5), ('b', None)):\n"
        "    run = Path(sys.argv[1], 'runs', name)\n"
        "    run.mkdir(parents=True)\n"
        "    (run / 'config.toml').write_text(Path(sys.argv[1], 'config.toml').read_text())\n"
        "    facts = {'test_accuracy': score, 'test_loss': 1.0} if score else {}\n"
        "    (run / 'run.json').write_text(json.dumps({'name': name, 'template': "
        "'image-classifier', 'facts': facts, 'table_score': score}))\n"
        "table = r.invoke(cli, ['runs', '--project', sys.argv[1]])\n"
        "listed = json.loads(r.invoke(cli, ['runs', '--project', sys.argv[1], '--json']).output)\n"
        "compared = r.invoke(cli, ['runs', '--project', sys.argv[1], '--compare', 'a', 'b'])\n"
        "print('ROWS', [line.split()[-2] for line in table.output.splitlines()[1:]])\n"
        "print('JSON', [r.get('test_accuracy') for r in listed])\n"
        "print('COMPARE', [line for line in compared.output.splitlines() if 'test_' in line])\n",
        tmp_path / "p")
    assert "HEAVY []" in out
    assert "ROWS ['-', '0.5000']" in out  # newest first: b (not evaluated), then a
    assert "JSON [None, 0.5]" in out
    assert "test_accuracy" in out.split("COMPARE", 1)[1] and "test_loss" in out


def test_info_prints_strategy_precision_and_reason(runner, project):
    result = invoke(runner, "info", "--project", project)
    assert result.exit_code == 0, result.output
    assert "strategy:" in result.output and "auto: no GPU" in result.output
    assert "float32 (auto: CPU only" in result.output
    assert "onednn:" in result.output and "TF_ENABLE_ONEDNN_OPTS=" in result.output
    assert "2 GPUs, compute capability 7.0: mirrored + mixed_float16" in result.output


def test_info_outside_a_project_uses_defaults(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, "info", "--json")
    assert result.exit_code == 0, result.output
    assert '"strategy": "default' in result.output


def test_error_is_one_line_without_traceback(runner, tmp_path):
    result = invoke(runner, "train", "--project", tmp_path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: no config.toml in")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_help_lists_the_everyday_commands(runner):
    result = invoke(runner, "--help")
    for command in ("report", "runs", "tensorboard", "completion"):
        assert command in result.output


def test_override_without_section_suggests_the_key(runner, project):
    result = invoke(runner, "info", "--project", project, "--set", "epochs=3")
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: override 'epochs=3' is not of the form "
                                     "section.key=value; did you mean training.epochs=3 or tune.epochs=3?")
    result = invoke(runner, "info", "--project", project, "--set", "trainng.epochs=3")
    assert result.exit_code == 1 and "did you mean training?" in result.output


def test_info_quiet_and_json(runner, project):
    result = invoke(runner, "info", "--project", project, "--quiet")
    assert result.exit_code == 0 and result.output == "default float32\n"
    result = invoke(runner, "info", "--project", project, "--set", "runtime.precision=float32",
                    "--json")
    assert json.loads(result.output)["precision"].startswith("float32")
    assert invoke(runner, "info", "--quiet", "--json").exit_code == 2


@pytest.mark.slow
def test_evaluate_set_quiet_and_json(runner, trained_project, copy_project):
    project = copy_project(trained_project)
    result = invoke(runner, "evaluate", "--project", project, "--set", "training.batch_size=50",
                    "--json")
    assert result.exit_code == 0, result.output
    assert "Evaluating on the test split: 200 examples" in result.output
    evaluated = json.loads(result.stdout)  # progress went to stderr
    assert evaluated["examples"] == 200
    result = invoke(runner, "evaluate", "--project", project, "--quiet")
    assert result.exit_code == 0
    assert result.output == f"{evaluated['accuracy']:.4f}\n"  # and nothing else
    result = invoke(runner, "evaluate", "--project", project, "--set", "training.epochz=1")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.output.splitlines()[-1].startswith(
        "Error: unknown config key 'training.epochz'; did you mean training.epochs?")


@pytest.mark.slow
def test_export_and_predict_take_overrides(runner, trained_project, copy_project):
    project = copy_project(trained_project)
    result = invoke(runner, "export", "--project", project, "--set", "export.name=renamed")
    assert result.exit_code == 0, result.output
    assert "Writing the SavedModel" in result.output  # progress
    assert (project / "saved_models" / "renamed" / "1" / "saved_model.pb").is_file()
    samples = [str(project / "samples" / name) for name in ("cat.jpg", "ship.jpg")]
    result = invoke(runner, "predict", *samples, "--project", project, "--quiet")
    assert result.exit_code == 0, result.output
    names = json.loads((project / "saved_models" / "renamed" / "1" / "dltool.json")
                       .read_text())["meta"]["class_names"]
    labels = result.output.split("\n")
    assert labels[2:] == [""] and set(labels[:2]) <= set(names)
    result = invoke(runner, "predict", samples[0], "--project", project, "--json",
                    "--set", "export.top_k=1")
    assert [len(item["top"]) for item in json.loads(result.output)] == [1]
    result = invoke(runner, "predict", samples[0], "--project", project,
                    "--set", "export.topk=1")
    assert result.exit_code == 1 and "did you mean export.top_k?" in result.output


@pytest.mark.slow
def test_predict_shows_progress_on_many_inputs(runner, trained_project):
    many = [str(trained_project / "samples" / "cat.jpg")] * 300
    result = invoke(runner, "predict", *many, "--project", trained_project, "--top-k", "1")
    assert result.exit_code == 0, result.output
    assert "Predicted 256/300\nPredicted 300/300\n" in result.output
    assert len(result.stdout.splitlines()) == 301  # "Model: ..." + one line per input
    result = invoke(runner, "predict", *many, "--project", trained_project, "--quiet")
    assert len(result.output.splitlines()) == 300 and "Predicted" not in result.output


# What the CLI prints is the task's: each template formats its own results.


def test_task_for_returns_the_class_template_toml_names():
    from dltool.core.errors import ConfigError
    from dltool.tasks import Task, task_for
    from dltool.tasks.classifier import ClassifierTask
    from dltool.tasks.translator import TranslatorTask

    task = task_for("sentiment")
    assert type(task).__name__ == "SentimentTask" and isinstance(task, ClassifierTask)
    assert task is task_for("sentiment") and task.name == "sentiment"
    assert isinstance(task_for("translator"), TranslatorTask)
    with pytest.raises(ConfigError) as error:
        task_for("x")
    assert str(error.value) == ("project.template must be one of image-classifier, "
                                "sentiment, translator; got 'x'")
    with pytest.raises(NotImplementedError):
        Task({"name": "bare"}).evaluation_summary({})
    assert Task({"name": "bare"}).batching(None) == {}


def test_evaluate_prints_what_the_task_formats(runner, project, monkeypatch):
    from dltool.engine import evaluate as evaluate_lib

    run = project / "runs" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": run.name, "template": "image-classifier"}))
    result = {"run": run.name, "split": "test", "examples": 3, "loss": 0.5, "accuracy": 2 / 3,
              "balanced_accuracy": 0.75, "macro_f1": 2 / 3,
              "per_class": [{"name": "cat", "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
                             "support": 2},
                            {"name": "ship", "precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                             "support": 1}]}
    monkeypatch.setattr(evaluate_lib, "evaluate", lambda *args, **kwargs: dict(result))
    out = invoke(runner, "evaluate", "--project", project).stdout
    assert out == ("Run 20260101-000000, test split, 3 examples\n"
                   "loss               0.5000\naccuracy           0.6667\n"
                   "balanced accuracy  0.7500\nmacro F1           0.6667\n"
                   "class  precision  recall      F1  support\n"
                   "cat        1.000   0.500   0.667        2\n"
                   "ship       0.500   1.000   0.667        1\n")
    assert invoke(runner, "evaluate", "--project", project, "-q").stdout == "0.6667\n"


def test_predict_prints_translations_as_the_translator_formats(runner, project, monkeypatch):
    from dltool.engine import predict as predict_lib
    from dltool.tasks import task_for

    results = [("Hi.", {"translation": "Salut é.", "truncated": False}),
               ("x" * 50, {"translation": "y", "truncated": True})]
    monkeypatch.setattr(predict_lib, "predict", lambda *args, **kwargs:
                        ("m/1", task_for("translator"), results))
    result = invoke(runner, "predict", "Hi.", "--project", project)
    assert result.stdout == f"Model: m/1\nHi. -> Salut é.\n{'x' * 50} -> y\n"
    assert result.stderr == (f"Warning: {'x' * 40!r}... is longer than the model's maximum "
                             "length; only its beginning was translated\n")
    assert invoke(runner, "predict", "Hi.", "--project", project, "-q").stdout == "Salut é.\ny\n"
    printed = invoke(runner, "predict", "Hi.", "--project", project, "--json").stdout
    assert '"translation": "Salut é."' in printed  # not escaped
    assert json.loads(printed) == [{"input": i, **out} for i, out in results]
