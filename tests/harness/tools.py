"""Finding the real tools a test needs: a missing one fails the test, naming the tool and its package."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(command: str, package: str) -> str:
    path = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"this test needs `{command}` (Debian package {package}); tests/run.sh installs it as root")
    return path


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"this test must run as root: {why}")
