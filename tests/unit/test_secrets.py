"""Secrets: generated, stored in Secrets Manager, and never visible in plaintext anywhere."""

from __future__ import annotations

import json

import pytest

from gitea_stack.secrets import GENERATED_SECRETS, PLANE_SECRETS
from tests.harness.pulumi_mocks import is_secret_wrapper, plain_strings

SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
PASSWORD = "random:index/randomPassword:RandomPassword"


def test_each_generated_secret_is_random_and_stored(example_run):
    passwords = {r.name.removeprefix("secrets-"): r for r in example_run.of_type(PASSWORD)}
    assert set(passwords) == set(GENERATED_SECRETS) | set(PLANE_SECRETS)
    for key, password in passwords.items():
        assert password.inputs["length"] == {**GENERATED_SECRETS, **PLANE_SECRETS}[key] >= 40
        assert password.inputs["special"] is False
        secret = example_run.named(f"secrets-{key}-secret")
        assert secret.inputs["namePrefix"] == f"gitea-stack/prod/{key}-"
        version = example_run.named(f"secrets-{key}-secret-value")
        assert version.property_dependencies["secretId"] == [secret.urn]
        assert version.property_dependencies["secretString"] == [password.urn]


def test_secret_values_are_wrapped_as_secrets_in_every_version(example_run):
    versions = example_run.of_type(VERSION)
    assert len(versions) == len(GENERATED_SECRETS) + len(PLANE_SECRETS) + 1  # + the SMTP credentials
    for version in versions:
        assert not any(s in example_run.mock_secrets for s in plain_strings(version.raw_inputs))
        assert is_secret_wrapper(version.raw_inputs["secretString"])


def test_no_secret_appears_in_plaintext_in_any_input_or_public_output(example_run):
    # + private key, SMTP password, AWS secret key
    assert len(example_run.mock_secrets) == len(GENERATED_SECRETS) + len(PLANE_SECRETS) + 3
    for resource in example_run.resources:
        for text in plain_strings(resource.raw_inputs):
            leaked = [s for s in example_run.mock_secrets if s in text]
            assert not leaked, f"{resource.name} carries a secret in plaintext"
    public = json.dumps({k: v for k, v in example_run.outputs.items() if k not in example_run.secret_outputs})
    assert not [s for s in example_run.mock_secrets if s in public]


@pytest.mark.parametrize("window", [0, 7, 30])
def test_recovery_window_comes_from_the_settings(run_with, window):
    run = run_with(secretRecoveryWindowDays=window)
    assert {r.inputs["recoveryWindowInDays"] for r in run.of_type(SECRET)} == {window}


@pytest.mark.parametrize("retain", [True, False])
def test_secrets_a_restore_needs_outlive_a_destroy_when_data_is_retained(run_with, retain):
    run = run_with(retainDataOnDestroy=retain)
    for key in GENERATED_SECRETS:
        assert run.named(f"secrets-{key}-secret").retain_on_delete is retain
        assert run.named(f"secrets-{key}-secret-value").retain_on_delete is retain
    # Nothing stored depends on the plane's: they go with the stack.
    for key in PLANE_SECRETS:
        assert run.named(f"secrets-{key}-secret").retain_on_delete is False
    # The SMTP key dies with its IAM user, so its copy is never kept.
    assert run.named("mail-smtp-credentials").retain_on_delete is False
