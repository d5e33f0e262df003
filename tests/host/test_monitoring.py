"""The metrics half of the observability plane, with the real programs: Debian's Prometheus runs the
bundle's prometheus.yml and scrapes Debian's node_exporter (with the textfile metrics health-check.sh
writes), postgres_exporter (against a real PostgreSQL), blackbox_exporter (the bundle's
blackbox.yml, probing real nginx serving the bundle's https.conf with a test certificate, and the
git SSH port) and Alertmanager (the bundle's alertmanager.yml), plus Gitea's /metrics behind its
token (the health testbed's Gitea stand-in).

The host is tests/host/test_health_check.py's testbed, whose HostLayout carries loopback addresses
for the plane (MonitoringLayout). cAdvisor, Alloy and Loki cannot run here (no images, no
packages): their targets must be configured and are expected down. Alert rules are proven by
tests/host/test_alert_rules.py (promtool test rules), mail by tests/host/test_alertmanager.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.harness.nginx import wait_for_port
from tests.harness.postgres import run
from tests.harness.tools import require_tool, stop_process
from tests.host.test_health_check import DOMAIN, HealthHost, not_after, testbed  # noqa: F401 (the fixture)

# Targets that run here, and those whose programs cannot (configured, expected down).
RUNNING_JOBS = {"prometheus", "alertmanager", "node", "postgres", "gitea", "probe-https", "probe-git-ssh"}
ABSENT_JOBS = {"cadvisor", "alloy", "loki"}
MONITOR_ROLE = "gitea_stack_monitor"


@dataclass
class Plane:
    prometheus_url: str
    processes: dict[str, subprocess.Popen]
    workdir: Path

    def query(self, expression: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float:
        result = self.query(expression)
        assert len(result) == 1, f"{expression}: {result}"
        return float(result[0]["value"][1])

    def targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/targets", timeout=10) as response:
            return json.load(response)["data"]["activeTargets"]


def start(name: str, argv: list[str], workdir: Path, port_address: str, **env: str) -> subprocess.Popen:
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                               env={**os.environ, **env})
    try:
        wait_for_port(int(port_address.rsplit(":", 1)[1]), timeout=30)
    except TimeoutError:
        stop_process(process)
        pytest.fail(f"{name} did not start: {(workdir / f'{name}.log').read_text()}")
    return process


def alertmanager_config(bed: HealthHost, workdir: Path) -> Path:
    """The bundle's alertmanager.yml with what deploy.sh fills in from Secrets Manager (the SMTP
    endpoint and user name; here a loopback port nobody answers: no alert fires in this module)."""
    text = (bed.bundle_dir / "alertmanager/alertmanager.yml").read_text()
    text = text.replace("SMTP_SMARTHOST_FROM_SECRET", "127.0.0.1:2525").replace("SMTP_USERNAME_FROM_SECRET", "monitor")
    password = workdir / "smtp-password"
    password.write_text("not-used")
    config = workdir / "alertmanager.yml"
    config.write_text(text.replace("/run/gitea-stack/smtp-password", str(password)))
    return config


@pytest.fixture(scope="module")
def plane(testbed: HealthHost) -> Iterator[Plane]:  # noqa: F811 (the fixture imported above)
    binaries = {name: require_tool(binary, package) for name, binary, package in (
        ("prometheus", "prometheus", "prometheus"),
        ("node", "prometheus-node-exporter", "prometheus-node-exporter"),
        ("postgres", "prometheus-postgres-exporter", "prometheus-postgres-exporter"),
        ("blackbox", "prometheus-blackbox-exporter", "prometheus-blackbox-exporter"),
        ("alertmanager", "prometheus-alertmanager", "prometheus-alertmanager"))}
    bed, m = testbed, testbed.monitoring
    workdir = bed.root / "monitoring"
    workdir.mkdir()
    # What deploy.sh installs: Gitea's metrics token where Prometheus reads it, and the role
    # postgres_exporter signs in as (pg_monitor: statistics of every session, nothing else).
    secrets = Path(m.secrets_dir)
    secrets.mkdir(parents=True, mode=0o700)
    (secrets / "metrics-token").write_text(bed.gitea.metrics_token)
    run(*bed.host.psql, "--dbname", "postgres", "--command",
        f"CREATE ROLE {MONITOR_ROLE} LOGIN IN ROLE pg_monitor")
    # health-check.sh writes the textfile metrics node_exporter serves.
    assert bed.check().returncode == 0
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["alertmanager"] = start("alertmanager", [
            binaries["alertmanager"], f"--config.file={alertmanager_config(bed, workdir)}",
            f"--storage.path={workdir / 'alertmanager-data'}", f"--web.listen-address={m.alertmanager}",
            "--cluster.listen-address="], workdir, m.alertmanager)
        processes["node"] = start("node-exporter", [
            binaries["node"], f"--web.listen-address={m.node_exporter}",
            f"--collector.textfile.directory={bed.data_dir / 'metrics'}"], workdir, m.node_exporter)
        # The host tier's cluster has no gitea database; the role and the statistics are the same.
        processes["postgres"] = start("postgres-exporter", [
            binaries["postgres"], f"--web.listen-address={m.postgres_exporter}"], workdir, m.postgres_exporter,
            DATA_SOURCE_NAME=f"host={bed.host.sockets} port={bed.host.port} user={MONITOR_ROLE} dbname=postgres "
                             "sslmode=disable")
        processes["blackbox"] = start("blackbox-exporter", [
            binaries["blackbox"], f"--config.file={bed.bundle_dir / 'blackbox/blackbox.yml'}",
            f"--web.listen-address={m.blackbox_exporter}"], workdir, m.blackbox_exporter)
        processes["prometheus"] = start("prometheus", [
            binaries["prometheus"], f"--config.file={bed.bundle_dir / 'prometheus/prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}", f"--web.listen-address={m.prometheus}",
            "--storage.tsdb.retention.time=1d"], workdir, m.prometheus)
        yield Plane(f"http://{m.prometheus}", processes, workdir)
    finally:
        for process in processes.values():
            stop_process(process)


def wait_for_scrapes(plane: Plane, timeout: float = 150) -> list[dict]:
    """The targets once each has been scraped (the first scrape comes within one interval: 60 s for
    Gitea and the probes)."""
    deadline = time.monotonic() + timeout
    while True:
        targets = plane.targets()
        scraped = targets and all(target["health"] != "unknown" for target in targets)
        if scraped or time.monotonic() > deadline:
            return targets
        time.sleep(2)


def test_the_rendered_config_passes_promtool(plane, testbed):  # noqa: F811
    """With the files it names in place, as deploy.sh installs them (the metrics token)."""
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "config", str(testbed.bundle_dir / "prometheus/prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_target_the_forge_runs_here_is_up(plane):
    targets = wait_for_scrapes(plane)
    health = {target["labels"]["job"]: (target["health"], target["lastError"]) for target in targets}
    assert set(health) == RUNNING_JOBS | ABSENT_JOBS
    down = {job: state for job, state in health.items() if job in RUNNING_JOBS and state[0] != "up"}
    assert not down, f"targets down: {down}\nlogs in {plane.workdir}"
    assert all(health[job][0] == "down" for job in ABSENT_JOBS), health
    # Every series names its stack, so the dashboards can select it.
    assert plane.value('count(up{stack="health"})') == len(RUNNING_JOBS | ABSENT_JOBS)


def test_the_probes_see_the_forge_as_users_do(plane, testbed):  # noqa: F811
    wait_for_scrapes(plane)
    assert plane.value('probe_success{job="probe-https"}') == 1
    assert plane.value('probe_http_status_code{job="probe-https"}') == 200
    # The certificate nginx serves, verified against the CA: its expiry as the alert reads it.
    expiry = not_after(testbed.live_dir / "fullchain.pem").timestamp()
    assert abs(plane.value('probe_ssl_earliest_cert_expiry{job="probe-https"}') - expiry) < 2
    assert plane.value('probe_success{job="probe-git-ssh"}') == 1


def test_gitea_is_scraped_with_its_metrics_token(plane, testbed):  # noqa: F811
    wait_for_scrapes(plane)
    assert plane.value('gitea_users{job="gitea"}') == 3
    assert testbed.gitea.metrics_authorizations
    assert set(testbed.gitea.metrics_authorizations) == {f"Bearer {testbed.gitea.metrics_token}"}


def test_postgres_and_the_host_are_measured(plane, testbed):  # noqa: F811
    wait_for_scrapes(plane)
    assert plane.value('pg_up{job="postgres"}') == 1
    assert plane.value('pg_settings_max_connections{job="postgres"}') > 0
    # The alert on connections compares these (docs/monitoring.md).
    assert plane.value('sum(pg_stat_activity_count{job="postgres"})') >= 1
    assert plane.value('node_memory_MemAvailable_bytes{job="node"}') > 0
    # The data volume, as the disk alerts read it.
    assert plane.value(f'node_filesystem_avail_bytes{{job="node",mountpoint="{testbed.data_dir}"}}') > 0
    # health-check.sh's results, through node_exporter's textfile collector.
    assert plane.value('gitea_stack_health_check_success{check="https"}') == 1
    assert plane.value("gitea_stack_backup_interval_seconds") == 3600


def test_prometheus_loads_every_rule_file_of_the_bundle(plane, testbed):  # noqa: F811
    with urllib.request.urlopen(f"{plane.prometheus_url}/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    rule_files = sorted((testbed.bundle_dir / "prometheus/rules").glob("*.yml"))
    expected = {group["name"] for path in rule_files for group in yaml.safe_load(path.read_text())["groups"]}
    assert {group["name"] for group in groups} == expected
    alerts = [rule for group in groups for rule in group["rules"] if rule["type"] == "alerting"]
    assert all(rule["health"] in ("ok", "unknown") for rule in alerts), [
        (rule["name"], rule.get("lastError")) for rule in alerts if rule["health"] == "err"]
