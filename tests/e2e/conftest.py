"""Prints the e2e tier's wall time in the test summary, so its cost stays visible in every CI run."""

from __future__ import annotations

import time

_span: dict[str, float] = {}


def pytest_runtest_logstart(nodeid, location):
    if nodeid.startswith("tests/e2e/"):
        _span.setdefault("start", time.monotonic())


def pytest_runtest_logfinish(nodeid, location):
    if nodeid.startswith("tests/e2e/"):
        _span["end"] = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    if "start" in _span:
        terminalreporter.write_line(f"e2e tier wall time: {_span['end'] - _span['start']:.0f}s")
