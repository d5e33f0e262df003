"""status: a healthy forge in moto (in-process) and a loopback TLS server, then each problem in turn
→ the right line and exit code; the pure judges for what moto cannot make (impaired status checks,
a late certificate renewal); and bad input → exit 2 naming what is wrong.

moto models the SES identities (their DKIM status follows DkimSigningAttributes; "verified for
sending" is a flag of moto's backend, set here as SES would after finding the DNS records), the
bucket, the volume and its snapshots, the instance, the alarm and the secrets. It does not model
sesv2:GetAccount nor an identity's MailFromAttributes: `SesStandIn` answers those two and passes
every other call to moto.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from gitea_stack import status
from gitea_stack.checks import FAIL, OK, WARN
from gitea_stack.cli import main
from gitea_stack.rendering import SCRIPTS_DIR
from gitea_stack.status import (
    AwsClients,
    ForgeFacts,
    judge_certificate,
    judge_instance_status,
    judge_recovery_alarm,
)
from tests.harness.acme import listener_certificate, new_listener_ca
from tests.unit.conftest import AWS_REGION

DOMAIN = "git.example.com"
ALERT = "ops@example.com"
UNVERIFIED_ALERT = "oncall@example.com"
BUCKET = "gitea-stack-prod-backups-test"
ALARM = "host-auto-recover-a1b2c3d"
SECRET_KEYS = ("postgres-password", "restic-password", "smtp-credentials")
HEALTHY_ACCOUNT = {"ProductionAccessEnabled": True, "SendingEnabled": True, "EnforcementStatus": "HEALTHY"}
SANDBOX_ACCOUNT = {**HEALTHY_ACCOUNT, "ProductionAccessEnabled": False}
MAIL_FROM_OK = {"MailFromDomain": f"mail.{DOMAIN}", "MailFromDomainStatus": "SUCCESS",
                "BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}
STACK_CONFIG = {
    "aws:region": AWS_REGION,
    "gitea-stack:domain": DOMAIN,
    "gitea-stack:hostedZone": "example.com",
    "gitea-stack:acmeEmail": ALERT,
    "gitea-stack:alertEmails": [ALERT],
    "gitea-stack:sshAllowedCidrs": ["203.0.113.0/24"],
}


class SesStandIn:
    """moto's sesv2 client, plus the two answers moto lacks: GetAccount (moto raises
    NotImplementedError) and the domain's MailFromAttributes (moto's GetEmailIdentity leaves them out)."""

    def __init__(self, client: Any, account: dict | None, mail_from: dict | None):
        self._client, self.account, self.mail_from = client, account, mail_from

    def get_account(self) -> dict:
        if self.account is None:
            raise NotImplementedError("GetAccount")
        return dict(self.account)

    def get_email_identity(self, EmailIdentity: str) -> dict:  # noqa: N803 - boto3's parameter name
        identity = self._client.get_email_identity(EmailIdentity=EmailIdentity)
        if EmailIdentity == DOMAIN and self.mail_from:
            identity["MailFromAttributes"] = dict(self.mail_from)
        return identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def mark_verified(identity: str, verified: bool = True) -> None:
    """What SES does once it finds the DNS records (or the address's owner clicks the link)."""
    ses_backends[DEFAULT_ACCOUNT_ID][AWS_REGION].email_identities[identity].verified_for_sending_status = verified


def write_backup_status(path: Path, *pairs: str) -> dict:
    """The status JSON exactly as backup.sh writes it: through backup-support.py write-status."""
    result = subprocess.run([sys.executable, str(SCRIPTS_DIR / "backup-support.py"), "write-status", str(path), *pairs],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TlsSite:
    """A TLS server on 127.0.0.1 serving a certificate for DOMAIN that a throwaway CA signed."""
    directory: Path
    days: int = 90
    port: int = 0
    ca_file: Path = field(init=False)
    _server: socket.socket | None = None

    def __enter__(self) -> TlsSite:
        ca, ca_key = new_listener_ca("gitea-stack status test CA", days=365)
        cert_file, key_file = listener_certificate(ca, ca_key, [], [DOMAIN], self.directory, days=self.days)
        self.ca_file = self.directory / "ca.pem"
        from cryptography.hazmat.primitives import serialization
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, args=(context, self._server), daemon=True).start()
        return self

    @staticmethod
    def _serve(context: ssl.SSLContext, server: socket.socket) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # closed by __exit__
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                connection.close()  # a client that refused the certificate

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


@dataclass
class Forge:
    """A healthy deployed stack in moto: its outputs, its SES stand-in and its site."""
    session: Any
    outputs: dict
    ses: SesStandIn
    site: TlsSite
    status_file: Path
    now: datetime

    @property
    def facts(self) -> ForgeFacts:
        return ForgeFacts(stack="prod", region=AWS_REGION, domain=DOMAIN, mail_from_domain=f"mail.{DOMAIN}",
                          alert_emails=(ALERT,), backup_schedule="hourly", backup_bucket=BUCKET,
                          instance_id=self.outputs["instanceId"], data_volume_id=self.outputs["dataVolumeId"],
                          recovery_alarm_name=ALARM, secret_names=self.outputs["secretNames"])

    @functools.cached_property
    def clients(self) -> AwsClients:
        """One client per service for the whole test (boto3 takes a while to make each)."""
        client = self.session.client
        return AwsClients(self.ses, client("s3"), client("ec2"), client("cloudwatch"), client("secretsmanager"))

    def put_backup_status(self, *pairs: str) -> dict:
        written = write_backup_status(self.status_file, *pairs)
        self.clients.s3.put_object(Bucket=BUCKET, Key="status/backup.json",
                                             Body=self.status_file.read_bytes())
        return written

    def results(self, now: datetime | None = None) -> dict[str, status.StatusResult]:
        found = status.run_checks(self.facts, self.clients, ("127.0.0.1", self.site.port), now or self.now,
                                  lambda message: None)
        return {result.check: result for result in found}


@pytest.fixture
def forge(aws, tmp_path, monkeypatch):
    # moto lists thousands of AMIs by default, which costs seconds a test; any image id will do here.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    now = datetime.now(timezone.utc)
    sesv2 = aws.client("sesv2")
    sesv2.create_email_identity(EmailIdentity=DOMAIN, DkimSigningAttributes={
        "DomainSigningSelector": "gitea", "DomainSigningPrivateKey": "c3RhbmQtaW4="})
    sesv2.create_email_identity(EmailIdentity=ALERT)
    mark_verified(DOMAIN)
    mark_verified(ALERT)

    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": AWS_REGION})
    ec2 = aws.client("ec2")
    instance = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1, InstanceType="t3.medium")["Instances"][0]
    volume = ec2.create_volume(AvailabilityZone=f"{AWS_REGION}a", Size=50, VolumeType="gp3")["VolumeId"]
    ec2.create_snapshot(VolumeId=volume, Description="daily, kept 7 days")
    # moto starts an alarm in OK; AWS starts it in INSUFFICIENT_DATA until the first minutes of data.
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=ALARM, Namespace="AWS/EC2", MetricName="StatusCheckFailed_System",
        Dimensions=[{"Name": "InstanceId", "Value": instance["InstanceId"]}], Statistic="Maximum", Period=60,
        EvaluationPeriods=2, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
        AlarmActions=[f"arn:aws:automate:{AWS_REGION}:ec2:recover"])
    secretsmanager = aws.client("secretsmanager")
    secret_names = {key: f"gitea-stack/prod/{key}-AbC123" for key in SECRET_KEYS}
    for name in secret_names.values():
        secretsmanager.create_secret(Name=name, SecretString="never-read-by-status")

    outputs = {"url": f"https://{DOMAIN}/", "backupBucket": BUCKET, "instanceId": instance["InstanceId"],
               "dataVolumeId": volume, "recoveryAlarmName": ALARM, "secretNames": secret_names,
               "region": AWS_REGION, "adminPassword": "[secret]", "provisioningPrivateKey": "[secret]"}
    with TlsSite(tmp_path / "site") as site:
        monkeypatch.setenv("SSL_CERT_FILE", str(site.ca_file))
        forge = Forge(aws, outputs, SesStandIn(sesv2, dict(HEALTHY_ACCOUNT), dict(MAIL_FROM_OK)), site,
                      tmp_path / "backup-status.json", now)
        forge.put_backup_status("state=ok", "message=backed up in 42s", f"finished={utc(now - timedelta(minutes=20))}",
                                "run_id=20261202T070000.000000000Z", "bytes_added=12582912", "snapshot.database=d1",
                                "snapshot.files=f1")
        yield forge


@pytest.mark.parametrize("duration, words", [
    (timedelta(seconds=30), "under a minute"), (timedelta(minutes=59), "59 min"), (timedelta(hours=3), "3 h"),
    (timedelta(hours=3, minutes=5), "3 h 5 min"), (timedelta(days=2), "2 d"), (timedelta(days=2, hours=7), "2 d 7 h"),
])
def test_durations_read_as_an_operator_would_say_them(duration, words):
    assert status.human_duration(duration) == words


@pytest.mark.parametrize("count, words", [(512, "512 B"), (12582912, "12.0 MiB"), (3 * 2**40, "3072.0 GiB")])
def test_sizes(count, words):
    assert status.human_bytes(count) == words


def test_a_healthy_forge_is_all_ok(forge):
    results = forge.results()
    expected = {"SES domain", "SES DKIM", "SES MAIL FROM", "SES account", f"alert {ALERT}", "latest backup",
                "latest snapshot", "instance status", "recovery alarm", "certificate",
                *(f"secret {key}" for key in SECRET_KEYS)}
    assert set(results) == expected
    not_ok = {check: result for check, result in results.items() if result.status != OK}
    assert not_ok == {}
    assert all(result.action == "" for result in results.values())
    assert "12.0 MiB added" in results["latest backup"].detail and "20 min ago" in results["latest backup"].detail
    assert "due within 2 h" in results["latest backup"].detail
    # 90 days from the certificate's making, which x509 truncates to the second: a hair less than 90 d.
    assert re.search(r"\((90 d|89 d 23 h) left\), issued by gitea-stack status test CA$", results["certificate"].detail)


def test_an_unverified_domain_fails(forge):
    mark_verified(DOMAIN, False)
    result = forge.results()["SES domain"]
    assert result.status == FAIL and f"{DOMAIN} is not verified for sending" in result.detail
    assert "_domainkey" in result.action


def test_a_domain_without_an_identity_fails_every_ses_domain_line(forge):
    forge.session.client("sesv2").delete_email_identity(EmailIdentity=DOMAIN)
    forge.ses.mail_from = None
    results = forge.results()
    assert [results[check].status for check in ("SES domain", "SES DKIM", "SES MAIL FROM")] == [FAIL] * 3
    assert "pulumi up" in results["SES domain"].action


def test_dkim_not_started_fails(forge):
    sesv2 = forge.session.client("sesv2")
    sesv2.delete_email_identity(EmailIdentity=DOMAIN)
    sesv2.create_email_identity(EmailIdentity=DOMAIN)  # without signing attributes: moto says NOT_STARTED
    mark_verified(DOMAIN)
    result = forge.results()["SES DKIM"]
    assert result.status == FAIL and "NOT_STARTED" in result.detail


@pytest.mark.parametrize("state, expected", [("PENDING", WARN), ("TEMPORARY_FAILURE", WARN), ("FAILED", FAIL)])
def test_mail_from_that_is_not_confirmed(forge, state, expected):
    forge.ses.mail_from["MailFromDomainStatus"] = state
    result = forge.results()["SES MAIL FROM"]
    assert result.status == expected and state in result.detail
    assert f"feedback-smtp.{AWS_REGION}.amazonses.com" in result.action


def test_the_sandbox_needs_attention_and_says_how_to_leave_it(forge):
    forge.ses.account = dict(SANDBOX_ACCOUNT)
    result = forge.results()["SES account"]
    assert result.status == FAIL and "SES sandbox" in result.detail
    assert "aws sesv2 put-account-details" in result.action and "--production-access-enabled" in result.action
    assert status.SES_PRODUCTION_ACCESS_URL in result.action


def test_a_pending_production_access_request_is_a_warning(forge):
    forge.ses.account = {**SANDBOX_ACCOUNT, "Details": {"ReviewDetails": {"Status": "PENDING", "CaseId": "42"}}}
    result = forge.results()["SES account"]
    assert result.status == WARN and "case 42" in result.detail


def test_an_unverified_alert_address_fails_only_in_the_sandbox(forge):
    forge.session.client("sesv2").create_email_identity(EmailIdentity=UNVERIFIED_ALERT)
    facts = replace(forge.facts, alert_emails=(ALERT, UNVERIFIED_ALERT))
    clients = forge.clients

    def alert_lines() -> dict[str, str]:
        results = status.check_ses(clients.sesv2, facts, lambda message: None)
        return {r.check: r for r in results if r.check.startswith("alert ")}

    lines = alert_lines()
    assert lines[f"alert {UNVERIFIED_ALERT}"].status == OK and "does not need" in lines[f"alert {UNVERIFIED_ALERT}"].detail
    forge.ses.account = dict(SANDBOX_ACCOUNT)
    lines = alert_lines()
    assert lines[f"alert {ALERT}"].status == OK
    assert lines[f"alert {UNVERIFIED_ALERT}"].status == FAIL
    assert f"verify-email-identity --email-address {UNVERIFIED_ALERT}" in lines[f"alert {UNVERIFIED_ALERT}"].action
    forge.ses.account = None  # GetAccount unanswered: the sandbox is unknown
    lines = alert_lines()
    assert lines[f"alert {UNVERIFIED_ALERT}"].status == WARN


def test_a_stale_backup_fails(forge):
    forge.put_backup_status("state=ok", "message=backed up in 40s", f"finished={utc(forge.now - timedelta(hours=3))}",
                            "bytes_added=1024")
    result = forge.results()["latest backup"]
    assert result.status == FAIL and "finished 3 h ago" in result.detail and "older than 2 h" in result.detail
    assert "gitea-stack-backup.timer" in result.action


def test_a_daily_schedule_allows_a_backup_of_three_hours(forge):
    facts = replace(forge.facts, backup_schedule="*-*-* 02:30")
    forge.put_backup_status("state=ok", "message=ok", f"finished={utc(forge.now - timedelta(hours=3))}")
    assert status.check_backup(forge.clients.s3, facts, forge.now).status == OK
    assert status.check_backup(forge.clients.s3, facts, forge.now + timedelta(days=2)).status == FAIL


def test_a_failed_last_backup_fails_naming_the_last_success(forge):
    written = forge.put_backup_status("state=failed", "message=restic could not store the database dump",
                                      f"finished={utc(forge.now - timedelta(minutes=5))}")
    assert written["last_success"] == utc(forge.now - timedelta(minutes=20))  # kept by write-status
    result = forge.results()["latest backup"]
    assert result.status == FAIL and "the last run failed" in result.detail
    assert "restic could not store the database dump" in result.detail and "20 min ago" in result.detail
    assert "journalctl -u gitea-stack-backup.service" in result.action


def test_no_backup_status_object_fails(forge):
    forge.clients.s3.delete_object(Bucket=BUCKET, Key="status/backup.json")
    result = forge.results()["latest backup"]
    assert result.status == FAIL and f"no s3://{BUCKET}/status/backup.json" in result.detail


def test_a_status_object_that_is_not_json_fails(forge):
    forge.clients.s3.put_object(Bucket=BUCKET, Key="status/backup.json", Body=b"[1, 2]")
    result = forge.results()["latest backup"]
    assert result.status == FAIL and "not backup.sh's status JSON" in result.detail


def test_a_stale_snapshot_fails_and_a_new_volume_without_one_only_warns(forge):
    clients = forge.clients
    three_days_on = forge.now + timedelta(days=3)
    stale = status.check_snapshot(clients.ec2, forge.facts, three_days_on)
    assert stale.status == FAIL and "older than 2 d" in stale.detail and "dlm get-lifecycle-policy" in stale.action
    fresh_volume = clients.ec2.create_volume(AvailabilityZone=f"{AWS_REGION}a", Size=50)["VolumeId"]
    facts = replace(forge.facts, data_volume_id=fresh_volume)
    assert status.check_snapshot(clients.ec2, facts, forge.now).status == WARN
    assert status.check_snapshot(clients.ec2, facts, three_days_on).status == FAIL


def test_a_missing_secret_fails_and_no_value_is_ever_read(forge):
    secretsmanager = forge.clients.secretsmanager
    secretsmanager.delete_secret(SecretId=forge.outputs["secretNames"]["restic-password"], ForceDeleteWithoutRecovery=True)
    secretsmanager.delete_secret(SecretId=forge.outputs["secretNames"]["smtp-credentials"], RecoveryWindowInDays=7)
    results = forge.results()
    missing, deleted = results["secret restic-password"], results["secret smtp-credentials"]
    assert missing.status == FAIL and "no secret gitea-stack/prod/restic-password" in missing.detail
    assert deleted.status == FAIL and "scheduled for deletion" in deleted.detail
    assert "restore-secret" in deleted.action
    assert results["secret postgres-password"].status == OK
    assert not any("never-read-by-status" in result.detail for result in results.values())


def test_the_alarm_in_alarm_fails(forge):
    forge.clients.cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM",
                                                       StateReason="Threshold Crossed: 2 datapoints were >= 1")
    result = forge.results()["recovery alarm"]
    assert result.status == FAIL and f"{ALARM} ALARM" in result.detail and "Threshold Crossed" in result.detail


def test_an_alarm_without_data_warns_and_a_missing_one_fails(forge):
    forge.clients.cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="INSUFFICIENT_DATA",
                                                       StateReason="no datapoints")
    assert forge.results()["recovery alarm"].status == WARN
    forge.clients.cloudwatch.delete_alarms(AlarmNames=[ALARM])
    result = forge.results()["recovery alarm"]
    assert result.status == FAIL and f"no alarm {ALARM}" in result.detail


def test_an_alarm_with_its_actions_disabled_fails(forge):
    forge.clients.cloudwatch.disable_alarm_actions(AlarmNames=[ALARM])
    result = forge.results()["recovery alarm"]
    assert result.status == FAIL and "enable-alarm-actions" in result.action


def test_a_stopped_instance_fails(forge):
    forge.clients.ec2.stop_instances(InstanceIds=[forge.outputs["instanceId"]])
    result = forge.results()["instance status"]
    assert result.status == FAIL and "is stopped" in result.detail and "start-instances" in result.action


def test_an_instance_that_no_longer_exists_fails(forge):
    facts = replace(forge.facts, instance_id="i-0000000000000dead")
    result = status.check_instance(forge.clients.ec2, facts)
    assert result.status == FAIL and "no instance i-0000000000000dead" in result.detail


def running(system: str = "ok", instance: str = "ok", **extra) -> list[dict]:
    # moto reports every running instance's checks as ok, so impaired ones are judged from AWS's shape.
    return [{"InstanceId": "i-1", "InstanceState": {"Name": "running"}, "SystemStatus": {"Status": system},
             "InstanceStatus": {"Status": instance}, **extra}]


@pytest.mark.parametrize("statuses, expected, words", [
    (running(), OK, "system check ok, instance check ok"),
    (running(system="impaired"), FAIL, "hardware or network"),
    (running(instance="impaired"), FAIL, "operating system does not answer"),
    (running(system="initializing", instance="initializing"), WARN, "not ok yet"),
    (running(Events=[{"Code": "system-reboot", "NotBefore": datetime(2026, 12, 9, tzinfo=timezone.utc)}]), WARN,
     "system-reboot not before 2026-12-09"),
    ([{"InstanceId": "i-1", "InstanceState": {"Name": "pending"}}], WARN, "is pending"),
])
def test_instance_status_checks_are_judged(statuses, expected, words):
    result = judge_instance_status("i-1", AWS_REGION, statuses)
    assert result.status == expected and words in result.detail
    assert (result.action == "") == (expected == OK)


def test_the_recovery_alarm_judge_without_moto():
    assert judge_recovery_alarm("a", [{"StateValue": "OK", "ActionsEnabled": True}]).status == OK
    assert judge_recovery_alarm("a", [{"StateValue": "ALARM", "ActionsEnabled": True}]).status == FAIL


def test_a_certificate_expiring_within_14_days_fails(forge, tmp_path, monkeypatch):
    with TlsSite(tmp_path / "expiring", days=10) as expiring:
        monkeypatch.setenv("SSL_CERT_FILE", str(expiring.ca_file))
        result = status.check_certificate(DOMAIN, ("127.0.0.1", expiring.port), forge.now)
    assert result.status == FAIL and "under 14 days" in result.detail
    assert "gitea-stack-certbot-renew.service" in result.action


def test_a_certificate_from_an_untrusted_ca_fails(forge, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-ca.pem"))
    (tmp_path / "no-ca.pem").write_text("")
    result = status.check_certificate(DOMAIN, ("127.0.0.1", forge.site.port), forge.now)
    assert result.status == FAIL and "does not verify" in result.detail


def test_a_certificate_for_another_name_fails(forge):
    result = status.check_certificate("git.example.org", ("127.0.0.1", forge.site.port), forge.now)
    assert result.status == FAIL and "does not verify" in result.detail and "mismatch" in result.detail.lower()


def test_a_site_that_does_not_answer_fails(forge):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    result = status.check_certificate(DOMAIN, ("127.0.0.1", closed), forge.now)
    assert result.status == FAIL and "no TLS answer" in result.detail


def test_a_late_renewal_warns():
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    issued = now - timedelta(days=70)
    assert judge_certificate(DOMAIN, issued, issued + timedelta(days=90), "CA", now).status == WARN
    assert judge_certificate(DOMAIN, now - timedelta(days=10), now + timedelta(days=80), "CA", now).status == OK
    assert judge_certificate(DOMAIN, issued, now + timedelta(days=13), "CA", now).status == FAIL


def test_refused_credentials_fail_and_other_errors_are_unchecked(forge, monkeypatch):
    from botocore.exceptions import ClientError

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "DescribeAlarms")

    cloudwatch = forge.clients.cloudwatch
    monkeypatch.setattr(cloudwatch, "describe_alarms", refuse)
    facts = forge.facts
    result = status.check_recovery_alarm(cloudwatch, facts)
    assert result.status == FAIL and "refused the credentials" in result.detail and "aws sso login" in result.action
    monkeypatch.setattr(cloudwatch, "describe_alarms", lambda **_: (_ for _ in ()).throw(
        ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DescribeAlarms")))
    result = status.check_recovery_alarm(cloudwatch, facts)
    assert result.status == WARN and result.detail.startswith("could not check")


# --- the command end to end ---------------------------------------------------------------------------

# Outputs of the shape the program exports, for the tests that end before any check runs.
OUTPUTS = {"backupBucket": BUCKET, "instanceId": "i-0123456789abcdef0", "dataVolumeId": "vol-0123456789abcdef0",
           "recoveryAlarmName": ALARM, "secretNames": {"restic-password": "gitea-stack/prod/restic-password-AbC123"},
           "region": AWS_REGION, "adminPassword": "[secret]"}


@pytest.fixture
def stack_dir(tmp_path):
    """A project directory with Pulumi.prod.yaml and outputs.json, and no AWS behind it."""
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": STACK_CONFIG}))
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    return tmp_path


@pytest.fixture
def project(stack_dir, forge, monkeypatch):
    """stack_dir with the healthy forge's outputs; the command asks moto (through the SES stand-in)
    and the loopback site."""
    (stack_dir / "outputs.json").write_text(json.dumps(forge.outputs))
    monkeypatch.setattr(status, "aws_clients", lambda session, region: forge.clients)
    monkeypatch.setenv(status.HTTPS_ADDRESS_VARIABLE, f"127.0.0.1:{forge.site.port}")
    return stack_dir


def run(capsys, project: Path, *argv: str, outputs: bool = True) -> tuple[int, str, str]:
    extra = ["--outputs", str(project / "outputs.json")] if outputs else []
    code = main(["status", "--stack", "prod", "--project-dir", str(project), *extra, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out: str) -> dict[str, str]:
    return {line[:line.index("  ")]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith(" ")
            and "  " in line}


def test_command_prints_a_table_and_exits_0_when_all_is_well(project, capsys):
    code, out, err = run(capsys, project)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    table = rows(out)
    assert " OK " in table["SES domain"] and " OK " in table["latest backup"] and " OK " in table["certificate"]
    assert lines[-1].startswith(f"{len(table)} OK, 0 WARN, 0 FAIL") and "all right" in lines[-1]
    assert "status: reading s3://" in err and "never their values" in err


def test_command_exits_1_and_prints_what_to_do_under_the_failed_line(project, forge, capsys):
    forge.ses.account = dict(SANDBOX_ACCOUNT)
    code, out, _ = run(capsys, project)
    assert code == 1
    lines = out.splitlines()
    account = next(index for index, line in enumerate(lines) if line.startswith("SES account"))
    assert " FAIL " in lines[account] and lines[account + 1].lstrip().startswith("-> request production access")
    assert "needs attention" in lines[-1]


def test_command_json_document(project, forge, capsys):
    forge.clients.cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="test")
    code, out, _ = run(capsys, project, "--json")
    document = json.loads(out)
    assert code == 1
    assert (document["stack"], document["region"]) == ("prod", AWS_REGION)
    assert datetime.fromisoformat(document["checked_at"]).tzinfo is not None
    assert all(set(check) == {"check", "status", "detail", "action"} for check in document["checks"])
    failed = [check for check in document["checks"] if check["status"] != OK]
    assert [check["check"] for check in failed] == ["recovery alarm"] and failed[0]["action"]
    count = len(document["checks"])
    assert document["summary"] == {"ok": count - 1, "warn": 0, "fail": 1, "passed": False}


def test_command_warnings_alone_exit_0(project, forge, capsys):
    forge.ses.mail_from["MailFromDomainStatus"] = "PENDING"
    code, out, _ = run(capsys, project, "--json")
    assert code == 0 and json.loads(out)["summary"]["warn"] == 1


def test_command_reads_the_outputs_from_the_pulumi_cli(project, capsys, monkeypatch):
    # A stand-in `pulumi` on PATH that prints the outputs and records its arguments and directory.
    bin_dir = project / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(f"#!/bin/sh\necho \"$PWD $*\" > {project}/pulumi-call\ncat {project}/outputs.json\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, out, err = run(capsys, project, outputs=False)
    assert code == 0, out + err
    assert (project / "pulumi-call").read_text().split() == [str(project), "stack", "output", "--json",
                                                             "--stack", "prod"]


def test_command_reports_a_failing_pulumi_cli(stack_dir, capsys, monkeypatch):
    bin_dir = stack_dir / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text("#!/bin/sh\necho \"error: no stack named 'prod' found\" >&2\nexit 255\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, out, err = run(capsys, stack_dir, outputs=False)
    assert code == 2 and out == ""
    assert "no stack named 'prod' found" in err and "--outputs FILE" in err


def test_command_without_the_pulumi_cli_says_to_pass_outputs(stack_dir, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(stack_dir / "empty"))
    code, out, err = run(capsys, stack_dir, outputs=False)
    assert code == 2 and out == "" and "not on PATH" in err and "--outputs FILE" in err


def test_command_with_an_unknown_stack_is_bad_usage(stack_dir, capsys):
    code = main(["status", "--stack", "staging", "--project-dir", str(stack_dir), "--outputs",
                 str(stack_dir / "outputs.json")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Pulumi.staging.yaml" in captured.err


@pytest.mark.parametrize("content, words", [
    (None, "cannot read --outputs"),
    ("{not json", "is not JSON"),
    ("[1, 2]", "holds a JSON list; expected an object"),
])
def test_command_with_unreadable_outputs_is_bad_usage(stack_dir, capsys, content, words):
    path = stack_dir / "outputs.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    code, out, err = run(capsys, stack_dir)
    assert code == 2 and out == "" and words in err


def test_command_with_outputs_missing_keys_names_each(stack_dir, capsys):
    outputs = {key: value for key, value in OUTPUTS.items() if key not in ("recoveryAlarmName", "dataVolumeId")}
    outputs["backupBucket"] = "[secret]"
    (stack_dir / "outputs.json").write_text(json.dumps(outputs))
    code, out, err = run(capsys, stack_dir)
    assert code == 2 and out == ""
    assert "recoveryAlarmName (str) is missing" in err and "dataVolumeId (str) is missing" in err
    assert "backupBucket is secret" in err and "run `pulumi up` once" in err


def test_command_with_a_bad_https_address_is_bad_usage(stack_dir, capsys, monkeypatch):
    monkeypatch.setenv(status.HTTPS_ADDRESS_VARIABLE, "127.0.0.1")
    code, out, err = run(capsys, stack_dir)
    assert code == 2 and out == "" and "expected HOST:PORT" in err


def test_command_with_bad_config_is_bad_usage(stack_dir, capsys):
    (stack_dir / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": {**STACK_CONFIG,
                                                                          "gitea-stack:backupSchedule": "often"}}))
    code, out, err = run(capsys, stack_dir)
    assert code == 2 and out == "" and "gitea-stack:backupSchedule" in err


def test_command_help_names_checks_exit_codes_and_environment(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["status", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for words in ("--outputs", "--json", "exit codes", status.HTTPS_ADDRESS_VARIABLE, "SSL_CERT_FILE",
                  "INSUFFICIENT_DATA"):
        assert words in out
