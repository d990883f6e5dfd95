"""Each template's generated project passes its own tests right after generation."""

import re
import subprocess
import sys

import pytest

from conftest import invoke


@pytest.mark.slow
@pytest.mark.parametrize("template", ["image-classifier", "sentiment", "translator"])
def test_generated_project_tests_pass(runner, tmp_path, template):
    project = tmp_path / "proj"
    assert invoke(runner, "new", template, project).exit_code == 0
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(project / "tests")],
                            cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"\d+ (failed|error)", summary)
    assert not (project / "runs").exists(), "the project's tests train in a copy"
