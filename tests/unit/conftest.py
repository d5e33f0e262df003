"""Shared fixtures: the example stack run once under mocks, and runs with config changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gitea_stack.cli import engine_value
from tests.harness.pulumi_mocks import StackRun, run_program, stack_file_config


@pytest.fixture(scope="session")
def example_config() -> dict[str, str]:
    return stack_file_config()


@pytest.fixture(scope="session")
def example_run(example_config) -> StackRun:
    """Pulumi.prod.yaml, as `pulumi up` would run it."""
    return run_program(example_config)


@pytest.fixture
def run_with(example_config) -> Callable[..., StackRun]:
    """Runs the program with the example config changed: run_with(instanceType="t4g.large")."""
    def run(**changes) -> StackRun:
        config = dict(example_config)
        for key, value in changes.items():
            if value is None:
                config.pop(f"gitea-stack:{key}", None)
            else:
                config[f"gitea-stack:{key}"] = engine_value(value)
        return run_program(config)
    return run
