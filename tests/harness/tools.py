"""Finding the real tools a test needs: a missing one fails the test, naming the tool and its package.
Stopping the processes a test started, by their PID."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def require_tool(command: str, package: str) -> str:
    path = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"this test needs `{command}` (Debian package {package}); tests/run.sh installs it as root")
    return path


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"this test must run as root: {why}")


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM to a process this test started, SIGKILL if it is still there after `timeout` seconds."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
