"""A generated project's own tests pass right after generation."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_generated_project_tests_pass(project):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(project / "tests")],
                            cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b3 passed\b", summary) and not re.search(r"\d+ (failed|error)", summary)
    assert not (project / "runs").exists(), "the project's tests train in a copy"
