"""scripts/fetch-secrets.py against moto: names in the stack's region, ARNs in the ARN's region.

restoreFrom.passwordSecret may live in the old stack's region, which need not be the new stack's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch-secrets.py"
STACK_REGION = "eu-central-1"
OLD_REGION = "eu-west-1"


def load_script():
    spec = importlib.util.spec_from_file_location("fetch_secrets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws
    for variable in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3
        yield {region: boto3.client("secretsmanager", region_name=region) for region in (STACK_REGION, OLD_REGION)}


def write_facts(directory: Path, **secrets: str) -> Path:
    facts = directory / "stack-facts.env"
    lines = [f"AWS_REGION={STACK_REGION}", "BACKUP_BUCKET=gitea-stack-new-backups-x"]
    lines += [f"SECRET_{key}={value}" for key, value in secrets.items()]
    facts.write_text("\n".join(lines) + "\n")
    return facts


def test_a_secret_given_by_arn_is_read_in_the_arns_region(aws, tmp_path):
    aws[STACK_REGION].create_secret(Name="gitea-stack/new/restic-password-AbCdEf", SecretString="new-password")
    old_arn = aws[OLD_REGION].create_secret(Name="gitea-stack/old/restic-password-XyZabc",
                                            SecretString="old-password")["ARN"]
    assert f":{OLD_REGION}:" in old_arn
    out = tmp_path / "staging"
    out.mkdir()
    facts = write_facts(tmp_path, RESTIC_PASSWORD="gitea-stack/new/restic-password-AbCdEf",
                        RESTORE_FROM_PASSWORD=old_arn)
    assert load_script().main(["fetch-secrets.py", str(facts), str(out)]) == 0
    assert (out / "restore-from-password").read_text() == "old-password"
    assert (out / "restic-password").read_text() == "new-password"
    assert (out / "restore-from-password").stat().st_mode & 0o777 == 0o600


def test_a_password_secret_that_cannot_be_read_names_the_setting(aws, tmp_path, capsys):
    missing = f"arn:aws:secretsmanager:{OLD_REGION}:123456789012:secret:gitea-stack/old/restic-password-Gone00"
    out = tmp_path / "staging"
    out.mkdir()
    facts = write_facts(tmp_path, RESTORE_FROM_PASSWORD=missing)
    assert load_script().main(["fetch-secrets.py", str(facts), str(out)]) == 1
    error = capsys.readouterr().err
    assert f"restore-from-password ({missing}, set by gitea-stack:restoreFrom.passwordSecret)" in error
    assert "ResourceNotFoundException" in error
    assert not (out / "restore-from-password").exists()


def test_the_stacks_own_restore_password_secret_is_read_by_name_in_the_stacks_region(aws, tmp_path, capsys):
    aws[STACK_REGION].create_secret(Name="gitea-stack/new/restore-from-password-AbCdEf", SecretString="old-password")
    out = tmp_path / "staging"
    out.mkdir()
    facts = write_facts(tmp_path, RESTORE_FROM_PASSWORD="gitea-stack/new/restore-from-password-AbCdEf")
    assert load_script().main(["fetch-secrets.py", str(facts), str(out)]) == 0
    assert (out / "restore-from-password").read_text() == "old-password"
    # By name, and not there: the message names the config value it came from.
    facts = write_facts(tmp_path, RESTORE_FROM_PASSWORD="gitea-stack/new/restore-from-password-Gone00")
    assert load_script().main(["fetch-secrets.py", str(facts), str(out)]) == 1
    assert "set by gitea-stack:restoreFrom.password)" in capsys.readouterr().err


@pytest.mark.parametrize("secret_id, region", [
    ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:a-AbCdEf", "eu-west-1"),
    ("arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:a-AbCdEf", "us-gov-west-1"),
    ("gitea-stack/new/restic-password-AbCdEf", STACK_REGION),
])
def test_region_of(secret_id, region):
    assert load_script().region_of(secret_id, STACK_REGION) == region
