"""restoreFrom through the whole program: the host's facts, its read-only grant, the password's secret.

A new stack restores an old stack's restic backups (docs/runbooks/restore.md section 4). The cloud
half gives the host what it needs: RESTORE_FROM_* facts, the password as a secret it may read, and
read-only access to the old bucket. Without restoreFrom nothing changes.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile

import pulumi
import pytest

from tests.harness.pulumi_mocks import is_secret_wrapper, run_program
from tests.harness.secret_scan import scan
from tests.unit.test_compute import role_policies

OLD_BUCKET = "gitea-stack-old-backups-20260101abcdef"
# In another region than the stack's (eu-central-1): a disaster recovery out of a lost region's copy.
OLD_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gitea-stack/old/restic-password-AbCdEf"
PASSWORD = "canary-old-restic-password-5b7e"
RESTORE_POLICY = "restore-from"


def facts_of(run) -> str:
    payload = run.named("provision-copy-bundle").inputs["stdin"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(payload)))) as archive:
        return archive.extractfile("stack-facts.env").read().decode()


@pytest.fixture(scope="module")
def secret_run(example_config):
    return run_program({**example_config, "gitea-stack:restoreFrom": json.dumps(
        {"bucket": OLD_BUCKET, "passwordSecret": OLD_SECRET_ARN})})


@pytest.fixture(scope="module")
def password_run(example_config):
    return run_program({**example_config, "gitea-stack:restoreFrom": json.dumps(
        {"bucket": OLD_BUCKET, "password": PASSWORD})})


def test_without_restore_from_the_host_learns_nothing_of_it(example_run):
    facts = facts_of(example_run)
    assert "RESTORE_FROM" not in facts
    assert RESTORE_POLICY not in role_policies(example_run)


def test_the_host_learns_the_bucket_and_the_secrets_region_from_a_password_secret(secret_run):
    facts = facts_of(secret_run).splitlines()
    assert f"RESTORE_FROM_BUCKET={OLD_BUCKET}" in facts
    assert "RESTORE_FROM_REGION=eu-west-1" in facts
    assert f"SECRET_RESTORE_FROM_PASSWORD={OLD_SECRET_ARN}" in facts
    assert "AWS_REGION=eu-central-1" in facts and "BACKUP_BUCKET=gitea-stack-prod-backups-mock" in facts


def test_an_explicit_region_is_the_one_the_host_learns(example_config):
    run = run_program({**example_config, "gitea-stack:restoreFrom": json.dumps(
        {"bucket": OLD_BUCKET, "passwordSecret": OLD_SECRET_ARN, "region": "eu-north-1"})})
    assert "RESTORE_FROM_REGION=eu-north-1\n" in facts_of(run)


def test_a_password_becomes_a_secret_of_the_stack_that_the_host_reads_in_its_region(password_run):
    secret = password_run.named("secrets-restore-from-password-secret")
    assert secret.inputs["namePrefix"] == "gitea-stack/prod/restore-from-password-"
    # Only a restore reads it, and the config still holds it: a destroy need not keep it.
    assert not secret.retain_on_delete
    version = password_run.named("secrets-restore-from-password-secret-value")
    assert is_secret_wrapper(version.raw_inputs["secretString"]) and version.inputs["secretString"] == PASSWORD
    facts = facts_of(password_run).splitlines()
    assert "SECRET_RESTORE_FROM_PASSWORD=gitea-stack/prod/restore-from-password-MOCK" in facts
    assert "RESTORE_FROM_REGION=eu-central-1" in facts and f"RESTORE_FROM_BUCKET={OLD_BUCKET}" in facts
    # It is no secret of the forge itself: not among the outputs' secret names.
    assert "restore-from-password" not in password_run.outputs["secretNames"]


def test_a_new_restore_password_runs_the_converge_again(password_run):
    # A restore refused for a wrong password is tried again once the config holds the right one:
    # the password's version id is among what triggers the converge (as every stored secret's is).
    version = password_run.named("secrets-restore-from-password-secret-value")
    assert version.urn in password_run.named("provision-converge").property_dependencies["triggers"]


def test_the_password_is_never_in_plaintext(password_run):
    findings = []
    for resource in password_run.resources:
        for finding in scan({"name": resource.name, "inputs": resource.inputs}, {PASSWORD}).findings:
            findings.append((resource.name, finding.where))
    assert findings == [("secrets-restore-from-password-secret-value", ".inputs.secretString")]
    assert not scan(password_run.outputs, {PASSWORD}).findings


def restore_statements(run) -> dict[str, dict]:
    return {statement["Sid"]: statement for statement in role_policies(run)[RESTORE_POLICY]["Statement"]}


def test_the_role_may_only_read_the_old_bucket_and_the_password_secret(secret_run):
    bucket_arn = f"arn:aws:s3:::{OLD_BUCKET}"
    assert restore_statements(secret_run) == {
        "ListRestoreSourceBucket": {"Sid": "ListRestoreSourceBucket", "Effect": "Allow", "Action": "s3:ListBucket",
                                    "Resource": bucket_arn},
        "ReadRestoreSourceObjects": {"Sid": "ReadRestoreSourceObjects", "Effect": "Allow", "Action": "s3:GetObject",
                                     "Resource": f"{bucket_arn}/*"},
        "ReadRestoreSourcePassword": {"Sid": "ReadRestoreSourcePassword", "Effect": "Allow",
                                      "Action": "secretsmanager:GetSecretValue", "Resource": OLD_SECRET_ARN},
    }


def test_with_a_password_the_role_reads_the_stacks_own_password_secret(password_run):
    statement = restore_statements(password_run)["ReadRestoreSourcePassword"]
    assert statement["Resource"] == ("arn:aws:secretsmanager:eu-central-1:123456789012:secret:"
                                     "gitea-stack/prod/restore-from-password-MOCK")


@pytest.mark.parametrize("run_name", ["secret_run", "password_run"])
def test_restore_from_changes_no_other_policy_of_the_role(example_run, request, run_name):
    run = request.getfixturevalue(run_name)
    with_restore = role_policies(run)
    assert set(with_restore) == {*role_policies(example_run), RESTORE_POLICY}
    assert {name: document for name, document in with_restore.items() if name != RESTORE_POLICY} == \
        role_policies(example_run)


def test_the_policy_pack_finds_nothing_wrong_with_a_restore(secret_run, password_run):
    import rules

    from tests.unit.test_policy_on_the_program import as_policy_resources
    for run in (secret_run, password_run):
        assert rules.evaluate(as_policy_resources(run)) == []


@pytest.mark.parametrize("restore_from, key", [
    ({"bucket": "Not A Bucket", "passwordSecret": OLD_SECRET_ARN}, "gitea-stack:restoreFrom.bucket"),
    ({"bucket": OLD_BUCKET, "passwordSecret": "restic-password"}, "gitea-stack:restoreFrom.passwordSecret"),
    ({"bucket": OLD_BUCKET, "password": PASSWORD, "region": "west"}, "gitea-stack:restoreFrom.region"),
    ({"bucket": OLD_BUCKET, "password": PASSWORD, "passwordSecret": OLD_SECRET_ARN},
     "gitea-stack:restoreFrom.passwordSecret"),
    ({"bucket": "gitea-stack-prod-backups-20260101abcdef", "password": PASSWORD}, "gitea-stack:restoreFrom.bucket"),
])
def test_a_bad_restore_from_registers_nothing_and_names_its_field(example_config, restore_from, key):
    with pytest.raises(pulumi.RunError) as caught:
        run_program({**example_config, "gitea-stack:restoreFrom": json.dumps(restore_from)})
    assert f"\n  - {key}: expected" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.registered == []


@pytest.mark.parametrize("secret, warned", [(True, False), (False, True)])
def test_a_password_in_plaintext_in_the_stack_file_is_warned_of(monkeypatch, secret, warned):
    import gitea_stack.program as program
    from gitea_stack.settings import parse_settings
    from tests.unit.test_settings import MINIMAL
    warnings = []
    monkeypatch.setattr(program.pulumi.log, "warn", warnings.append)
    monkeypatch.setattr(program.runtime_config, "is_config_secret", lambda key: secret)
    settings = parse_settings({**MINIMAL, "restoreFrom": {"bucket": OLD_BUCKET, "password": PASSWORD}}, "prod")
    program.warn_of_a_plaintext_restore_password(settings)
    assert bool(warnings) is warned
    assert all("pulumi config set --secret --path gitea-stack:restoreFrom.password" in w and PASSWORD not in w
               for w in warnings)
