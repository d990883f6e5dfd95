"""A generated project's own tests pass right after generation."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_generated_project_tests_pass(project):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(project / "tests")],
                            cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
    assert not (project / "runs").exists(), "the project's tests train in a copy"
