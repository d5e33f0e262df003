"""Alert mail, with the real programs: the bundle's alertmanager.yml passes Debian's amtool, and
Debian's Alertmanager running it mails a fired alert to every alertEmails address through a real
SMTP server on loopback (aiosmtpd) that, like SES, wants STARTTLS and a user name and password.
Inhibited alerts are not mailed. Prometheus' side (rules that fire) is tests/host/test_alert_rules.py.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.harness.acme import make_listener_certificate
from tests.harness.bundles import render, variant
from tests.harness.nginx import free_port, wait_for_port
from tests.harness.smtp import Mailbox, SesLikeSmtp
from tests.harness.tools import require_tool, stop_process

SETTINGS = variant("another-domain")  # two alertEmails addresses
STACK = SETTINGS.stack
SMTP_USER = "AKIAEXAMPLESMTPUSER"
SMTP_PASSWORD = "ses-smtp-password-from-secrets-manager"
PASSWORD_FILE_IN_CONTAINER = "/run/gitea-stack/smtp-password"


def production_config() -> str:
    return render(SETTINGS)["alertmanager/alertmanager.yml"][0]


def with_secrets(text: str, smarthost: str, password_file: Path) -> str:
    """What deploy.sh does with Secrets Manager's SMTP endpoint and user name; the password file is
    mounted at /run/gitea-stack/ in the container, here it is a file of the test's."""
    return (text.replace("SMTP_SMARTHOST_FROM_SECRET", smarthost).replace("SMTP_USERNAME_FROM_SECRET", SMTP_USER)
            .replace(PASSWORD_FILE_IN_CONTAINER, str(password_file)))


def test_the_rendered_config_passes_amtool(tmp_path):
    amtool = require_tool("amtool", "prometheus-alertmanager")
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD)
    config = tmp_path / "alertmanager.yml"
    config.write_text(with_secrets(production_config(), "email-smtp.eu-west-1.amazonaws.com:587", password_file))
    result = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 receivers" in result.stdout and "4 inhibit rules" in result.stdout, result.stdout


def test_the_production_config_requires_tls_and_mails_every_address():
    config = yaml.safe_load(production_config())
    assert config["global"]["smtp_require_tls"] is True
    assert config["global"]["smtp_auth_password_file"] == PASSWORD_FILE_IN_CONTAINER
    assert config["global"]["smtp_from"] == f"alertmanager@{SETTINGS.domain}"
    assert [mail["to"] for mail in config["receivers"][0]["email_configs"]] == list(SETTINGS.alert_emails)
    assert config["route"]["group_by"] == ["alertname", "stack"]


@dataclass
class RunningAlertmanager:
    url: str
    mailbox: Mailbox
    workdir: Path
    address: str

    def post(self, *alerts: dict) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(list(alerts)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as response:
            return json.load(response)

    def status_of(self, alertname: str, timeout: float = 10, **labels: str) -> dict:
        """The alert's status once Alertmanager has decided whether it is inhibited."""
        deadline = time.monotonic() + timeout
        while True:
            found = [alert["status"] for alert in self.alerts() if alert["labels"]["alertname"] == alertname
                     and all(alert["labels"].get(name) == value for name, value in labels.items())]
            if found and (found[0]["state"] != "unprocessed" or time.monotonic() > deadline):
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"Alertmanager does not know {alertname} {labels}: {self.alerts()}")
            time.sleep(0.2)


def alert(alertname: str, severity: str, **labels: str) -> dict:
    """An alert as Prometheus sends it: its rule's labels and annotations, and the stack as external label."""
    return {"labels": {"alertname": alertname, "severity": severity, "stack": STACK, **labels},
            "annotations": {"summary": f"{alertname} summary",
                            "description": f"{alertname}: what broke, with the value 0",
                            "action": f"{alertname}: run `sudo /opt/gitea-stack/scripts/health-check.sh` first",
                            "runbook": f"docs/monitoring.md#{alertname.lower()}"}}


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory) -> Iterator[RunningAlertmanager]:
    binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("alertmanager")
    ca_file, cert_file, key_file = make_listener_certificate(workdir / "tls")
    smtp_port, web_port = free_port(), free_port()
    # As SES: STARTTLS before anything else, then AUTH with the SMTP credentials.
    smtp = SesLikeSmtp("127.0.0.1", smtp_port, cert_file, key_file, SMTP_USER, SMTP_PASSWORD)
    mailbox = smtp.mailbox
    password_file = workdir / "smtp-password"
    password_file.write_text(SMTP_PASSWORD)
    config = yaml.safe_load(with_secrets(production_config(), f"127.0.0.1:{smtp_port}", password_file))
    # Test-only changes: group_wait (30 s) lets alerts of one cause travel together, group_interval
    # (5 min) bounds the mails of an open group, resolutions included; seconds keep the test short.
    # SES' certificate is publicly trusted; the test's comes from its own CA.
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "2s"
    for mail in config["receivers"][0]["email_configs"]:
        mail["tls_config"] = {"ca_file": str(ca_file)}
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    log = (workdir / "alertmanager.log").open("wb")
    process = None
    smtp.__enter__()
    try:
        # --cluster.listen-address= : no gossip port, a single Alertmanager as on the host.
        process = subprocess.Popen([
            binary, f"--config.file={config_file}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}", "--cluster.listen-address=", "--log.level=debug"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(web_port, timeout=30)
        except TimeoutError:
            pytest.fail(f"Alertmanager did not start: {(workdir / 'alertmanager.log').read_text()}")
        yield RunningAlertmanager(f"http://127.0.0.1:{web_port}", mailbox, workdir, f"127.0.0.1:{web_port}")
    finally:
        stop_process(process)
        smtp.__exit__()


def test_a_fired_alert_is_mailed_to_every_address_with_what_to_do(alertmanager):
    alertmanager.post(alert("GiteaDown", "critical", job="gitea", instance="gitea:3000"))
    mails = alertmanager.mailbox.wait_for("GiteaDown", count=len(SETTINGS.alert_emails))
    log = alertmanager.workdir / "alertmanager.log"
    assert len(mails) == len(SETTINGS.alert_emails), f"mails: {alertmanager.mailbox.messages}\n{log.read_text()}"
    assert sorted(address for recipients, _ in mails for address in recipients) == sorted(SETTINGS.alert_emails)
    for _, message in mails:
        assert message["Subject"] == f"[gitea-stack {STACK}] FIRING: GiteaDown (critical)"
        assert message["From"] == f"alertmanager@{SETTINGS.domain}"
        body = message.get_body(preferencelist=("plain",)).get_content()
        assert "What broke: GiteaDown: what broke, with the value 0" in body
        assert "What to do first: GiteaDown: run `sudo /opt/gitea-stack/scripts/health-check.sh` first" in body
        assert "docs/monitoring.md#giteadown" in body
    # Through STARTTLS with the user name deploy.sh filled in and the password from its file.
    assert set(alertmanager.mailbox.logins) == {(SMTP_USER, SMTP_PASSWORD)}


def test_a_down_gitea_mutes_the_probe_and_5xx_alerts_it_causes(alertmanager):
    alertmanager.post(alert("GiteaDown", "critical", job="gitea", instance="gitea:3000"),
                      alert("HttpsProbeFailed", "critical", job="probe-https",
                            instance=f"https://{SETTINGS.domain}/api/healthz"),
                      alert("NginxHigh5xxRate", "critical", job="alloy"))
    for name in ("HttpsProbeFailed", "NginxHigh5xxRate"):
        status = alertmanager.status_of(name)
        assert status["state"] == "suppressed" and status["inhibitedBy"], status
    # GiteaDown's group mails again (it is already open); the muted ones never come.
    alertmanager.mailbox.wait_for("GiteaDown", count=len(SETTINGS.alert_emails), timeout=5)
    time.sleep(3)
    assert not alertmanager.mailbox.about("HttpsProbeFailed") and not alertmanager.mailbox.about("NginxHigh5xxRate")


def test_a_critical_alert_mutes_the_warning_of_the_same_thing(alertmanager):
    disk = {"job": "node", "instance": "node-exporter:9100", "mountpoint": "/srv/gitea-stack"}
    alertmanager.post(alert("DiskSpaceLow", "critical", **disk), alert("DiskSpaceLow", "warning", **disk),
                      alert("DiskSpaceLow", "warning", job="node", instance="node-exporter:9100", mountpoint="/"))
    assert alertmanager.status_of("DiskSpaceLow", severity="warning", mountpoint="/srv/gitea-stack")["state"] == "suppressed"
    assert alertmanager.status_of("DiskSpaceLow", severity="warning", mountpoint="/")["state"] == "active"
    # The severities take different routes: a critical mail and a warning mail to each address.
    mails = alertmanager.mailbox.wait_for("DiskSpaceLow", count=2 * len(SETTINGS.alert_emails))
    subjects = sorted(message["Subject"] for _, message in mails)
    assert subjects == sorted([f"[gitea-stack {STACK}] FIRING: DiskSpaceLow (critical)",
                               f"[gitea-stack {STACK}] FIRING: DiskSpaceLow (warning)"] * len(SETTINGS.alert_emails))
    bodies = "".join(message.get_body(preferencelist=("plain",)).get_content() for _, message in mails)
    assert "mountpoint=/srv/gitea-stack severity=critical" in bodies
    assert "mountpoint=/ severity=warning" in bodies
    assert "mountpoint=/srv/gitea-stack severity=warning" not in bodies


def test_postgres_down_mutes_gitea_down(alertmanager):
    alertmanager.post(alert("PostgresqlDown", "critical", job="postgres", instance="postgres-exporter:9187"),
                      alert("GiteaDown", "critical", job="gitea", instance="gitea:3000"))
    status = alertmanager.status_of("GiteaDown")
    assert status["state"] == "suppressed" and status["inhibitedBy"], status


def test_a_resolved_alert_is_mailed_as_resolved(alertmanager):
    backup = alert("BackupFailed", "warning", job="node", instance="node-exporter:9100")
    alertmanager.post(backup)
    alertmanager.mailbox.wait_for("FIRING: BackupFailed", count=len(SETTINGS.alert_emails))
    alertmanager.post({**backup, "endsAt": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    mails = alertmanager.mailbox.wait_for("RESOLVED: BackupFailed", count=len(SETTINGS.alert_emails))
    assert sorted(address for recipients, _ in mails for address in recipients) == sorted(SETTINGS.alert_emails)
    assert mails[0][1]["Subject"] == f"[gitea-stack {STACK}] RESOLVED: BackupFailed (warning)"
    assert "RESOLVED BackupFailed (warning)" in mails[0][1].get_body(preferencelist=("plain",)).get_content()


def test_a_stopped_gitea_is_mailed_by_prometheus_with_the_bundles_rules(alertmanager, tmp_path):
    """The whole path: Debian's Prometheus runs the bundle's target rules against a Gitea that does
    not answer, fires GiteaDown after its minute, and Alertmanager mails it with the rule's action."""
    binary = require_tool("prometheus", "prometheus")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "targets.yml").write_text(render(SETTINGS)["prometheus/rules/targets.yml"][0])
    gitea, web_port = f"127.0.0.1:{free_port()}", free_port()  # nothing listens on gitea's port
    # Scraped and evaluated every 5 s (production: 60 s and 30 s); a stack label of its own makes
    # a new mail group beside the alerts the other tests posted.
    config = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s",
                         "external_labels": {"stack": "prometheus-test"}},
              "rule_files": [str(rules_dir / "*.yml")],
              "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.address]}]}]},
              "scrape_configs": [{"job_name": "gitea", "static_configs": [{"targets": [gitea]}]}]}
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen([binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{web_port}"],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        mails: list = []
        while len(mails) < len(SETTINGS.alert_emails) and time.monotonic() < deadline:
            mails = [(recipients, message) for recipients, message in alertmanager.mailbox.about("FIRING: GiteaDown")
                     if f"instance={gitea}" in message.get_body(preferencelist=("plain",)).get_content()]
            time.sleep(1)
    finally:
        stop_process(process)
    assert len(mails) == len(SETTINGS.alert_emails), (tmp_path / "prometheus.log").read_text()
    body = mails[0][1].get_body(preferencelist=("plain",)).get_content()
    assert f"What broke: Prometheus cannot scrape Gitea's /metrics at {gitea} (up = 0)" in body
    assert "What to do first: On the host: `sudo docker compose -f /opt/gitea-stack/docker-compose.yml ps gitea`" in body
    assert "stack=prometheus-test" in body and "docs/monitoring.md#giteadown" in body
