"""ruff's error classes (pyflakes and syntax) over all Python in the project: no unused or undefined names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_python_has_no_pyflakes_errors():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.fail("this test needs ruff (PyPI, in the test extras); run tests/run.sh")
    result = subprocess.run([str(ruff), "check", "--select", "F,E9", "--output-format", "concise",
                             "gitea_stack", "policy", "tests", "bench", "__main__.py"],
                            capture_output=True, text=True, cwd=PROJECT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
