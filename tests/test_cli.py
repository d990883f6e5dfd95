"""The command surface: help, templates, lazy imports, one-line errors."""

import subprocess
import sys

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


def test_help_templates_and_new_do_not_import_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dltool.cli import cli\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['templates'], ['new', 'image-classifier', sys.argv[1]],\n"
        "             ['new', '--help'], ['train', '--help']):\n"
        "    assert r.invoke(cli, args).exit_code == 0, args\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")],
                         capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert (tmp_path / "p" / "model.py").is_file()


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
