"""Every host script: shellcheck-clean, strict mode, and a --help that documents usage and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness.tools import require_tool

SHELL_SCRIPTS = sorted(SCRIPTS_DIR.glob("*.sh"))
LIBRARY = SCRIPTS_DIR / "lib.sh"  # sourced by the others: no --help, no strict mode of its own
SCRIPTS = [script for script in SHELL_SCRIPTS if script != LIBRARY]
PROJECT_SCRIPTS = [*SHELL_SCRIPTS, SCRIPTS_DIR.parent / "tests" / "run.sh", SCRIPTS_DIR.parent / ".ci" / "run"]


def test_there_are_scripts_to_check():
    assert SCRIPTS, f"no scripts found in {SCRIPTS_DIR}"


@pytest.mark.parametrize("script", PROJECT_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
    shellcheck = require_tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, "--severity=style", "--shell=bash", "--external-sources", str(script)],
                            capture_output=True, text=True, cwd=SCRIPTS_DIR.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [s for s in PROJECT_SCRIPTS if s != LIBRARY], ids=lambda p: p.name)
def test_strict_mode(script):
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_documents_usage_and_exit_codes(script):
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "Exit codes:" in result.stdout


@pytest.mark.parametrize("script", ["fetch-secrets.py", "backup-support.py", "health-support.py",
                                    "update-support.py"])
def test_python_host_script_documents_usage_and_exit_codes(script):
    result = subprocess.run([sys.executable, str(SCRIPTS_DIR / script), "--help"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "Exit codes:" in result.stdout
    assert subprocess.run([sys.executable, str(SCRIPTS_DIR / script)], capture_output=True).returncode == 2
