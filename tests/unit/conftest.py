"""Shared fixtures: the example stack run once under mocks, and runs with config changes."""

from __future__ import annotations

from collections.abc import Callable

import boto3
import pytest
from moto import mock_aws

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


# The region of the AWS fixtures: the example stack's (Pulumi.prod.yaml).
AWS_REGION = "eu-central-1"


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials, and nothing from the environment that would send boto3 elsewhere."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def aws(aws_credentials):
    """A boto3 session on moto, in-process."""
    with mock_aws():
        yield boto3.Session(region_name=AWS_REGION)
