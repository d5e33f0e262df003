"""scripts/health-check.sh on a loopback forge host: each check passing, each failing on its own, and
the mails of --notify.

One testbed for the module, as real as the host tier allows:
* the bundle is rendered by render_bundle (settings.env, the nginx sites, the scripts) with a
  HostLayout of loopback ports and test paths, and written where the scripts run it;
* nginx is the real one running the bundle's http.conf and https.conf with a certificate made with
  openssl, signed by a test CA the script trusts through HEALTH_CA_FILE; behind it a small HTTP
  server answers Gitea's /api/healthz;
* git over SSH is a listener on gitSshPort that sends an SSH banner, as Gitea's SSH server does;
* PostgreSQL is Debian's (tests/harness/postgres.py): `compose exec -T postgres pg_isready` runs the
  real pg_isready against it;
* the data volume is a small tmpfs (forge_host), so the disk and inode checks see a real filesystem
  fill up; backup.sh's status file is written there;
* `docker` on PATH is a stand-in that answers `compose ps` and `docker inspect` from a state file
  the tests edit (running, healthy, exited, restarting) and passes pg_isready through;
* the mail goes through send-mail.py to moto's SES, read back with sent_mails().
The tests break one thing at a time and put it back before the next.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gitea_stack.bundle import HostLayout, MonitoringLayout, write_bundle
from gitea_stack.settings import parse_settings
from tests.harness.bundles import BASE, render
from tests.harness.forge_host import ForgeHost, forge_host
from tests.harness.host_standins import MotoServer
from tests.harness.nginx import NginxServer, free_port, supports_http2_directive, wait_for_port
from tests.harness.postgres import run
from tests.harness.servers import ServedInThread
from tests.harness.tools import require_root, require_tool, stop_process

REGION = "eu-central-1"
STACK = "health"
DOMAIN = "git.example.com"
ALERT_EMAIL = "ops@example.com"
CHECKS = ["containers", "https", "git-ssh", "database", "certificate", "disk", "backup", "diun", "monitoring"]
SERVICES = ("postgres", "gitea", "nginx", "docker-socket-proxy", "diun", "prometheus", "alertmanager")
HEALTHCHECKED = ("postgres", "gitea", "nginx", "prometheus", "alertmanager")  # as in docker-compose.yml.j2
DATA_MIB = 32
DATA_INODES = 2000

DOCKER_STANDIN = """#!{python}
# docker for health-check.sh: `compose ps` and `docker inspect` answer from the containers' state
# file; `compose exec -T postgres pg_isready ARGS` runs the real pg_isready on the test's cluster.
import json, os, sys
CONFIG = {config!r}
SERVICE_STATE = "{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}{{{{.State.Status}}}}{{{{end}}}}"
DIUN_STATE = "{{{{.State.Status}}}} {{{{.State.Restarting}}}} {{{{.RestartCount}}}} {{{{.State.ExitCode}}}} {{{{.State.StartedAt}}}}"
argv = sys.argv[1:]
with open(CONFIG["log"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
with open(CONFIG["state"]) as state_file:
    containers = json.load(state_file)
def fail():
    print("docker stand-in (tests/host/test_health_check.py): no answer for `docker " + " ".join(argv) + "`",
          file=sys.stderr)
    sys.exit(125)
if argv[:1] == ["compose"]:
    rest = argv[1:]
    while rest and rest[0].startswith("--"):
        rest = rest[2:]  # --project-name, --project-directory, --file and their values
    if rest[:1] == ["ps"]:
        flags, service = rest[1:-1], rest[-1]
        container = containers.get(service)
        listed = container and (container["status"] in ("running", "restarting") or "--all" in flags)
        if listed:
            print("gitea-stack-" + service + "-1")
        sys.exit(0)
    if rest[:4] == ["exec", "-T", "postgres", "pg_isready"]:
        if containers["postgres"]["status"] != "running":
            print("service \\"postgres\\" is not running", file=sys.stderr)
            sys.exit(1)
        os.execv(CONFIG["pg_isready"], [CONFIG["pg_isready"], *rest[4:], "--host", CONFIG["sockets"],
                                        "--port", str(CONFIG["port"])])
elif argv[:2] == ["inspect", "--format"] and len(argv) == 4 and argv[3].startswith("gitea-stack-"):
    container = containers[argv[3].removeprefix("gitea-stack-").removesuffix("-1")]
    if argv[2] == SERVICE_STATE:
        print(container.get("health") or container["status"])
        sys.exit(0)
    if argv[2] == DIUN_STATE:
        print(container["status"], "true" if container["status"] == "restarting" else "false",
              container["restart_count"], container["exit_code"], container["started_at"])
        sys.exit(0)
fail()
"""


# --- certificates, made with openssl --------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    run(require_tool("openssl", "openssl"), *args, cwd=cwd)


def make_test_ca(directory: Path) -> Path:
    """A CA of the test's own (the script trusts it through HEALTH_CA_FILE); returns its certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "365",
            "-subj", "/CN=gitea-stack health test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    return directory / "ca.pem"


def make_certificate(directory: Path, name: str, days: int) -> tuple[Path, Path]:
    """A leaf for `name`, valid `days` days, signed by the test CA in `directory`: (fullchain, privkey)."""
    stem = f"{name}-{days}d"
    (directory / f"{stem}.ext").write_text(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                                           "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=directory)
    openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-days", str(days), "-extfile", f"{stem}.ext",
            "-out", f"{stem}.pem", cwd=directory)
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def not_after(certificate: Path) -> datetime.datetime:
    output = run(require_tool("openssl", "openssl"), "x509", "-noout", "-enddate", "-in", str(certificate)).stdout
    when = output.strip().removeprefix("notAfter=")
    return datetime.datetime.strptime(" ".join(when.split()), "%b %d %H:%M:%S %Y %Z")


# --- the services behind the checks ---------------------------------------------------------------

class HealthzHandler(BaseHTTPRequestHandler):
    """Gitea's /api/healthz: 200 and "pass", or 500 and "fail" while the upstream is told to fail; and
    its /metrics behind the metrics token, as Gitea answers them with [metrics] TOKEN set."""

    upstream: GiteaStandIn

    def log_message(self, *_):
        pass

    def do_GET(self):
        self.upstream.requests.append((self.path, self.headers.get("Host", "")))
        if self.path == "/metrics":
            return self.metrics()
        healthy = self.path == "/api/healthz" and not self.upstream.failing
        payload = json.dumps({"status": "pass" if healthy else "fail", "description": "Gitea: Git with a cup of tea",
                              "checks": {"cache:ping": [{"status": "pass"}]}}).encode()
        self.send_response(200 if healthy else 500)
        self.send_header("Content-Type", "application/health+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def metrics(self):
        authorization = self.headers.get("Authorization", "")
        self.upstream.metrics_authorizations.append(authorization)
        allowed = authorization == f"Bearer {self.upstream.metrics_token}"
        payload = (b"# TYPE gitea_build_info gauge\ngitea_build_info{version=\"1.27.3\"} 1\n"
                   b"# TYPE gitea_users gauge\ngitea_users 3\n") if allowed else b"Unauthorized\n"
        self.send_response(200 if allowed else 401)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GiteaStandIn(ServedInThread):
    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.failing = False
        self.metrics_token = "test-metrics-token"
        self.metrics_authorizations: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (HealthzHandler,), {"upstream": self}))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="gitea-standin", daemon=True)


class BannerHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"SSH-2.0-Go\r\n")  # what Gitea's built-in SSH server says first


class ReusableTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # the port is opened again after a test closed it


class SshBannerListener(ServedInThread):
    """Gitea's SSH server as far as a client sees before the key exchange: its banner, on `port`."""

    def __init__(self, port: int):
        self.server = ReusableTCPServer(("127.0.0.1", port), BannerHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ssh-banner", daemon=True)


# --- the testbed ----------------------------------------------------------------------------------

@dataclass
class HealthHost:
    host: ForgeHost
    bundle_dir: Path
    bin_dir: Path
    ca_file: Path
    certificates: Path
    live_dir: Path
    https_port: int
    ssh_port: int
    nginx: NginxServer
    gitea: GiteaStandIn
    ssh: SshBannerListener | None
    postgres: subprocess.Popen | None = None  # a cluster restarted by a test
    # Loopback addresses of the monitoring plane (tests/host/test_monitoring.py runs it on this host).
    monitoring: MonitoringLayout = MonitoringLayout()

    @property
    def root(self) -> Path:
        return self.host.root

    @property
    def data_dir(self) -> Path:
        return self.host.data_dir

    @property
    def moto(self) -> MotoServer:
        return self.host.moto

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state" / "health-state.json"

    @property
    def backup_timer_unit(self) -> Path:
        """Where deploy.sh installs the backup timer (none here unless a test puts it there)."""
        return self.root / "etc/systemd/system/gitea-stack-backup.timer"

    @property
    def lock_file(self) -> Path:
        return self.root / "gitea-stack.lock"

    def environment(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "GITEA_STACK_DIR": str(self.bundle_dir), "GITEA_STACK_LOCK": str(self.lock_file),
                "HEALTH_HTTPS_PORT": str(self.https_port), "HEALTH_CA_FILE": str(self.ca_file),
                "BACKUP_TIMER_UNIT": str(self.backup_timer_unit),
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **extra}

    def check(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.bundle_dir / "scripts/health-check.sh"), *args],
                              env=self.environment(**extra), capture_output=True, text=True, timeout=120)

    def json_check(self, *args: str, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
        result = self.check("--json", *args, **extra)
        assert result.stdout, f"no JSON on stdout; stderr: {result.stderr}"
        return result, json.loads(result.stdout)

    # The containers as the docker stand-in reports them.
    @property
    def containers_file(self) -> Path:
        return self.root / "containers.json"

    def containers(self) -> dict:
        return json.loads(self.containers_file.read_text())

    def set_container(self, service: str, **state: object) -> None:
        containers = self.containers()
        containers[service].update(state)
        self.containers_file.write_text(json.dumps(containers))

    def docker_calls(self) -> list[list[str]]:
        log = self.root / "docker-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    # backup.sh's status file
    @property
    def backup_status(self) -> Path:
        return self.data_dir / "state" / "backup-status.json"

    def write_backup_status(self, age: datetime.timedelta) -> str:
        finished = (datetime.datetime.now(datetime.timezone.utc) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.backup_status.write_text(json.dumps({"state": "ok", "message": "backed up in 12s", "started": finished,
                                                  "finished": finished, "last_success": finished}))
        return finished

    def serve_certificate(self, fullchain: Path, privkey: Path) -> None:
        shutil.copyfile(fullchain, self.live_dir / "fullchain.pem")
        shutil.copyfile(privkey, self.live_dir / "privkey.pem")
        self.nginx.reload()

    def mails(self) -> list[dict]:
        return self.moto.sent_mails()


def initial_containers() -> dict:
    started = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=5)).strftime(
        "%Y-%m-%dT%H:%M:%S.123456789Z")
    return {service: {"status": "running", "health": "healthy" if service in HEALTHCHECKED else None,
                      "restart_count": 0, "exit_code": 0, "started_at": started} for service in SERVICES}


@pytest.fixture(scope="module")
def testbed() -> Iterator[HealthHost]:
    require_root("the data volume is a tmpfs mount and PostgreSQL runs as the postgres user")
    for tool, package in (("curl", "curl"), ("openssl", "openssl"), ("systemd-analyze", "systemd"),
                          ("flock", "util-linux"), ("df", "coreutils"), ("numfmt", "coreutils")):
        require_tool(tool, package)
    nginx_binary = require_tool("nginx", "nginx")
    with forge_host("gitea-stack-health-", REGION, DOMAIN, tmpfs_mib=DATA_MIB) as host, GiteaStandIn() as gitea:
        root, data_dir = host.root, host.data_dir
        # Few inodes, so a test can use them up.
        run("mount", "-o", f"remount,nr_inodes={DATA_INODES}", str(data_dir))
        bundle_dir, bin_dir = root / "opt/gitea-stack", root / "bin"
        https_port, http_port, ssh_port = free_port(), free_port(), free_port()
        live_dir = data_dir / "letsencrypt" / "live" / DOMAIN
        live_dir.mkdir(parents=True)
        (data_dir / "acme-webroot").mkdir()
        (data_dir / "state").mkdir(mode=0o700)
        certificates = root / "certificates"
        ca_file = make_test_ca(certificates)
        for source, target in zip(make_certificate(certificates, DOMAIN, 90), ("fullchain.pem", "privkey.pem")):
            shutil.copyfile(source, live_dir / target)
        settings = parse_settings({**BASE, "domain": DOMAIN, "alertEmails": [ALERT_EMAIL], "gitSshPort": ssh_port,
                                   "awsEndpointUrl": host.moto.url}, STACK)
        monitoring = MonitoringLayout(
            **{name: f"127.0.0.1:{free_port()}" for name in (
                "prometheus", "alertmanager", "node_exporter", "postgres_exporter", "blackbox_exporter", "cadvisor",
                "alloy", "loki")},
            gitea=f"127.0.0.1:{gitea.port}", config_dir=str(bundle_dir / "prometheus"),
            secrets_dir=str(bundle_dir / "secrets/prometheus"),
            https_probe_url=f"https://127.0.0.1:{https_port}/api/healthz", git_ssh_probe_host="127.0.0.1",
            probe_ca_file=str(certificates / "ca.pem"))
        layout = HostLayout(monitoring=monitoring, bundle_dir=str(bundle_dir), data_dir=str(data_dir), http_listen=f"127.0.0.1:{http_port}",
                            https_listen=f"127.0.0.1:{https_port}", gitea_upstream=f"127.0.0.1:{gitea.port}",
                            letsencrypt_dir=str(data_dir / "letsencrypt"), acme_webroot=str(data_dir / "acme-webroot"),
                            nginx_http2_directive=supports_http2_directive(nginx_binary))
        write_bundle(render(settings, layout), bundle_dir)
        (bundle_dir / "stack-facts.env").write_text(f"AWS_REGION={REGION}\n")
        bin_dir.mkdir()
        standin_config = {"log": str(root / "docker-calls.jsonl"), "state": str(root / "containers.json"),
                          "pg_isready": host.tools["pg_isready"], "sockets": str(host.sockets), "port": host.port}
        (root / "containers.json").write_text(json.dumps(initial_containers()))
        for name, text in {"docker": DOCKER_STANDIN.format(python=sys.executable, config=standin_config),
                           "python3": f"#!/bin/sh\nexec '{sys.executable}' \"$@\"\n"}.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        sites = [bundle_dir / "nginx/http.conf", bundle_dir / "nginx/https.conf"]
        bed = None
        try:
            with NginxServer(root / "nginx", sites, [http_port, https_port]) as nginx:
                bed = HealthHost(host, bundle_dir, bin_dir, ca_file, certificates, live_dir, https_port, ssh_port,
                                 nginx, gitea, SshBannerListener(ssh_port).__enter__(), monitoring=monitoring)
                bed.write_backup_status(datetime.timedelta(minutes=20))
                yield bed
        finally:
            if bed:
                if bed.ssh:
                    bed.ssh.__exit__()
                if bed.postgres:
                    stop_postgres_cluster(bed)


# --- what breaks, one at a time; each puts back what it broke ------------------------------------

@contextlib.contextmanager
def container_state(testbed: HealthHost, service: str, **state: object) -> Iterator[None]:
    before = testbed.containers()[service]
    testbed.set_container(service, **state)
    try:
        yield
    finally:
        testbed.set_container(service, **before)


@contextlib.contextmanager
def nginx_stopped(testbed: HealthHost) -> Iterator[None]:
    testbed.nginx.stop()
    try:
        yield
    finally:
        testbed.nginx.start()


@contextlib.contextmanager
def certificate_served(testbed: HealthHost, name: str, days: int, ca: str = "") -> Iterator[None]:
    """nginx serves a certificate for `name`, valid `days` days, from the test CA (or another CA)."""
    directory = testbed.certificates
    if ca:
        directory = testbed.root / ca
        if not directory.exists():
            make_test_ca(directory)
    testbed.serve_certificate(*make_certificate(directory, name, days))
    try:
        yield
    finally:
        testbed.serve_certificate(*make_certificate(testbed.certificates, DOMAIN, 90))


@contextlib.contextmanager
def gitea_failing(testbed: HealthHost) -> Iterator[None]:
    testbed.gitea.failing = True
    try:
        yield
    finally:
        testbed.gitea.failing = False


@contextlib.contextmanager
def ssh_closed(testbed: HealthHost) -> Iterator[None]:
    assert testbed.ssh is not None
    testbed.ssh.__exit__()
    testbed.ssh = None
    try:
        yield
    finally:
        testbed.ssh = SshBannerListener(testbed.ssh_port).__enter__()
        wait_for_port(testbed.ssh_port)


def postmaster_pid(testbed: HealthHost) -> int:
    return int((testbed.root / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def stop_postgres_cluster(testbed: HealthHost) -> None:
    """PostgreSQL's fast shutdown of whichever postmaster runs the test's cluster, by its PID."""
    pid = postmaster_pid(testbed)
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while (testbed.root / "pgdata" / "postmaster.pid").exists():
        assert time.monotonic() < deadline, "PostgreSQL did not stop within 30s"
        time.sleep(0.1)
    if testbed.postgres:
        stop_process(testbed.postgres)
        testbed.postgres = None


@contextlib.contextmanager
def postgres_down(testbed: HealthHost) -> Iterator[None]:
    stop_postgres_cluster(testbed)
    try:
        yield
    finally:
        tools, sockets = testbed.host.tools, testbed.host.sockets
        with (testbed.root / "postgres-restarted.log").open("ab") as log:
            testbed.postgres = subprocess.Popen(
                [tools["postgres"], "-D", str(testbed.root / "pgdata"), "-k", str(sockets), "-p",
                 str(testbed.host.port), "-c", "listen_addresses=", "-c", "fsync=off"],
                user="postgres", group="postgres", cwd=testbed.root, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        ready = [tools["pg_isready"], "--host", str(sockets), "--port", str(testbed.host.port), "--quiet"]
        deadline = time.monotonic() + 30
        while subprocess.run(ready, check=False).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not start again within 30s"
            time.sleep(0.1)


def free_bytes(path: Path) -> tuple[int, int]:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


@contextlib.contextmanager
def disk_filled(testbed: HealthHost) -> Iterator[None]:
    """Leaves 10 % of the data volume free (real bytes written: tmpfs counts what is written)."""
    filler = testbed.data_dir / "filler"
    available, size = free_bytes(testbed.data_dir)
    with filler.open("wb") as out:
        remaining = available - size // 10
        while remaining > 0:
            remaining -= out.write(b"\0" * min(remaining, 1 << 20))
    try:
        yield
    finally:
        filler.unlink()


@contextlib.contextmanager
def inodes_used_up(testbed: HealthHost) -> Iterator[None]:
    """Empty files until 10 % of the data volume's inodes are left."""
    directory = testbed.data_dir / "many-files"
    directory.mkdir()
    stats = os.statvfs(testbed.data_dir)
    for number in range(stats.f_favail - stats.f_files // 10):
        (directory / str(number)).touch()
    try:
        yield
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def backup_status(testbed: HealthHost, age: datetime.timedelta | None) -> Iterator[None]:
    """backup.sh's status with its last success `age` ago, or no status file at all (None)."""
    previous = testbed.backup_status.read_text()
    if age is None:
        testbed.backup_status.unlink()
    else:
        testbed.write_backup_status(age)
    try:
        yield
    finally:
        testbed.backup_status.write_text(previous)


def minutes_ago(minutes: int) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.5Z")


BREAKAGES = {
    # name: (the check that must fail, what breaks it, what its detail must say)
    "gitea-unhealthy": ("containers", lambda bed: container_state(bed, "gitea", health="unhealthy"),
                        "gitea is unhealthy"),
    "proxy-stopped": ("containers", lambda bed: container_state(bed, "docker-socket-proxy", status="exited",
                                                                exit_code=137),
                      "docker-socket-proxy is not running"),
    "nginx-stopped": ("https", nginx_stopped, "Failed to connect"),
    "certificate-for-another-name": ("https", lambda bed: certificate_served(bed, "other.example.org", 90),
                                     "no alternative certificate subject name matches target host name"),
    "certificate-from-an-untrusted-ca": ("https", lambda bed: certificate_served(bed, DOMAIN, 90, ca="other-ca"),
                                         "SSL certificate problem: unable to get local issuer certificate"),
    "gitea-healthz-fails": ("https", gitea_failing, "answered HTTP 500"),
    "ssh-port-closed": ("git-ssh", ssh_closed, "nothing answers on 127.0.0.1"),
    "postgres-down": ("database", postgres_down, "no response"),
    "certificate-expiring": ("certificate", lambda bed: certificate_served(bed, DOMAIN, 10),
                             "days left, fewer than 14"),
    "disk-full": ("disk", disk_filled, "of the bytes free"),
    "inodes-used-up": ("disk", inodes_used_up, "of the inodes free"),
    "backup-too-old": ("backup", lambda bed: backup_status(bed, datetime.timedelta(hours=3)),
                       "3h 0min ago; the limit is 2h 0min (twice the schedule 'hourly')"),
    "backup-missing": ("backup", lambda bed: backup_status(bed, None),
                       "no backup has succeeded yet: {data_dir}/state/backup-status.json is missing and the backup timer"),
    "diun-stopped": ("diun", lambda bed: container_state(bed, "diun", status="exited", exit_code=1),
                     "Diun's container is exited (exit code 1)"),
    "diun-restarting": ("diun", lambda bed: container_state(bed, "diun", status="restarting", restart_count=7),
                        "Docker is restarting it (restarted 7 times"),
    "diun-crash-loop": ("diun", lambda bed: container_state(bed, "diun", restart_count=4, started_at=minutes_ago(2)),
                        "restarted by Docker 4 times, the last time 2 min ago"),
    "alertmanager-stopped": ("monitoring", lambda bed: container_state(bed, "alertmanager", status="exited",
                                                                       exit_code=1),
                             "alertmanager is not running: no alert is mailed until they are back"),
    "prometheus-unhealthy": ("monitoring", lambda bed: container_state(bed, "prometheus", health="unhealthy"),
                             "prometheus is unhealthy"),
}


# --- the tests ------------------------------------------------------------------------------------

def test_help_documents_every_check_and_the_exit_codes():
    from gitea_stack.rendering import SCRIPTS_DIR
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "health-check.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: health-check.sh [--help] [--json] [--notify]" in result.stdout and "Exit codes:" in result.stdout
    for name in CHECKS:
        assert f"\n  {name} " in result.stdout, name


@pytest.mark.parametrize("arguments", [["--bogus"], ["--json", "extra"], ["-x"]])
def test_bad_usage_exits_2_naming_the_argument(arguments):
    from gitea_stack.rendering import SCRIPTS_DIR
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "health-check.sh"), *arguments], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"unknown argument '{arguments[-1]}'" in result.stderr and "usage: health-check.sh" in result.stderr
    assert result.stdout == ""


def test_every_check_passes_on_a_healthy_host(testbed):
    requests_before, mails_before = len(testbed.gitea.requests), len(testbed.mails())
    result, report = testbed.json_check()
    assert result.returncode == 0, result.stderr + result.stdout
    assert report["ok"] is True and report["failed"] == []
    assert [check["name"] for check in report["checks"]] == CHECKS
    assert all(check["status"] == "ok" and check["action"] == "" for check in report["checks"]), report
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "postgres healthy, gitea healthy, nginx healthy, docker-socket-proxy running" == details["containers"]
    assert f"https://{DOMAIN}:{testbed.https_port}/api/healthz answered 200" in details["https"]
    assert '"status": "pass"' in details["https"]
    assert details["git-ssh"] == f"127.0.0.1:{testbed.ssh_port} answers SSH-2.0-Go"
    assert "accepting connections" in details["database"]
    expiry = not_after(testbed.live_dir / "fullchain.pem").strftime("%Y-%m-%d %H:%M UTC")
    # 90 days from the certificate's making, in whole days: 89 once a second has passed.
    assert re.search(f"served on 127.0.0.1:{testbed.https_port} is valid until {expiry} \\((89|90) days left",
                     details["certificate"]), details["certificate"]
    assert f"{testbed.data_dir}: " in details["disk"] and "inodes free; at least 15% wanted" in details["disk"]
    assert "20min ago; the limit is 2h 0min (twice the schedule 'hourly')" in details["backup"]
    assert "Diun is running since" in details["diun"]
    assert datetime.datetime.strptime(report["checked_at"], "%Y-%m-%dT%H:%M:%SZ")
    # The request went through nginx, with the domain, to Gitea's health endpoint.
    assert ("/api/healthz", DOMAIN) in testbed.gitea.requests[requests_before:]
    # Human output: one line a check; no mail and no state without --notify.
    human = testbed.check()
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == len(CHECKS) and all(line.startswith("✔ ok") for line in lines)
    assert [line.split()[2] for line in lines] == CHECKS
    assert len(testbed.mails()) == mails_before and not testbed.state_file.exists()


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_check_fails_on_its_own(testbed, breakage):
    name, breaks, expected_detail = BREAKAGES[breakage]
    with breaks(testbed):
        result, report = testbed.json_check()
        human = testbed.check()
    assert result.returncode == 1, result.stderr
    assert report["ok"] is False and report["failed"] == [name], report
    failed = next(check for check in report["checks"] if check["name"] == name)
    expected_detail = expected_detail.format(data_dir=testbed.data_dir)
    assert failed["status"] == "failed" and expected_detail in failed["detail"], failed
    assert failed["action"], "a failed check says what to do first"
    assert f"1 of {len(CHECKS)} checks FAILED: {name}\n" in result.stderr
    assert human.returncode == 1 and f"FAILED: {name}\n" in human.stderr
    failed_lines = [line for line in human.stdout.splitlines() if line.startswith("✘")]
    assert len(failed_lines) == 1 and failed_lines[0].split()[2] == name and expected_detail in failed_lines[0]
    assert "what to do first: " in human.stdout
    # Put back: everything passes again.
    after = testbed.check()
    assert after.returncode == 0, after.stdout + after.stderr


def metric_samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_run_writes_the_checks_and_the_backup_state_as_metrics(testbed):
    metrics_file = testbed.data_dir / "metrics" / "gitea-stack.prom"
    finished = testbed.write_backup_status(datetime.timedelta(minutes=20))
    drill = testbed.data_dir / "state" / "restore-drill-status.json"
    updates = testbed.data_dir / "state" / "update-status.json"
    drill.write_text(json.dumps({"state": "failed", "finished": finished}))
    updates.write_text(json.dumps({"services": {
        "nginx": {"outcome": "updated", "at": finished}, "gitea": {"outcome": "rolled-back", "at": finished}}}))
    try:
        with nginx_stopped(testbed):
            assert testbed.check().returncode == 1
        text = metrics_file.read_text()
    finally:
        drill.unlink()
        updates.unlink()
    # Prometheus' own checker accepts the file node_exporter will serve.
    checked = subprocess.run([require_tool("promtool", "prometheus"), "check", "metrics"], input=text,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert stat_mode(metrics_file) == 0o644
    samples = metric_samples(text)
    finished_at = datetime.datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    assert samples['gitea_stack_health_check_success{check="https"}'] == 0
    assert samples['gitea_stack_health_check_success{check="database"}'] == 1
    assert len([name for name in samples if name.startswith("gitea_stack_health_check_success{")]) == len(CHECKS)
    assert samples["gitea_stack_backup_last_success_timestamp_seconds"] == finished_at
    assert samples["gitea_stack_backup_last_run_success"] == 1
    assert samples["gitea_stack_backup_interval_seconds"] == 3600  # backupSchedule hourly
    assert samples["gitea_stack_restore_drill_last_run_success"] == 0
    assert samples['gitea_stack_update_last_run_success{service="nginx"}'] == 1
    assert samples['gitea_stack_update_last_run_success{service="gitea"}'] == 0
    assert abs(samples["gitea_stack_health_check_last_run_timestamp_seconds"] - time.time()) < 120
    # A status file not written yet gives no metric, rather than a made-up value.
    testbed.check()
    assert "gitea_stack_restore_drill_last_run_success" not in metrics_file.read_text()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_certificate_is_checked_from_its_file_when_nginx_does_not_answer(testbed):
    with nginx_stopped(testbed):
        _, report = testbed.json_check()
    certificate = next(check for check in report["checks"] if check["name"] == "certificate")
    assert certificate["status"] == "ok"
    assert f"in {testbed.live_dir}/fullchain.pem (nginx did not answer" in certificate["detail"]


def test_an_expiring_certificate_is_named_with_its_expiry_date(testbed):
    with certificate_served(testbed, DOMAIN, 3):
        expiry = not_after(testbed.live_dir / "fullchain.pem").strftime("%Y-%m-%d %H:%M UTC")
        _, report = testbed.json_check()
        _, strict = testbed.json_check(HEALTH_CERT_MIN_DAYS="2")
    certificate = next(check for check in report["checks"] if check["name"] == "certificate")
    assert re.fullmatch(f"the certificate served on 127.0.0.1:{testbed.https_port} expires on {expiry}: "
                        "[23] days left, fewer than 14 \\(renewal should have replaced it 30 days before\\)",
                        certificate["detail"]), certificate["detail"]
    assert "gitea-stack-certbot-renew.service" in certificate["action"]
    assert "certificate" not in strict["failed"], "HEALTH_CERT_MIN_DAYS sets the limit"


def test_a_new_forge_waits_twice_the_schedule_for_its_first_backup(testbed):
    timer = testbed.backup_timer_unit
    timer.parent.mkdir(parents=True, exist_ok=True)
    timer.write_text((testbed.bundle_dir / "systemd/gitea-stack-backup.timer").read_text())
    try:
        with backup_status(testbed, None):
            installed = time.time() - 1805  # half an hour ago (and a little: the check counts whole seconds)
            os.utime(timer, (installed, installed))
            result, fresh = testbed.json_check()
            installed = time.time() - 3 * 3600 - 5
            os.utime(timer, (installed, installed))
            _, late = testbed.json_check()
    finally:
        timer.unlink()
    assert result.returncode == 0 and fresh["failed"] == [], fresh
    backup = next(check for check in fresh["checks"] if check["name"] == "backup")
    assert ("the backup timer was installed 30min ago and the first backup is due within 2h 0min (twice the "
            "schedule 'hourly')") in backup["detail"]
    assert late["failed"] == ["backup"]
    assert "the backup timer was installed 3h 0min ago" in late["checks"][6]["detail"]


def test_every_failed_check_is_named(testbed):
    with backup_status(testbed, None), container_state(testbed, "diun", status="exited"), ssh_closed(testbed):
        result, report = testbed.json_check()
    assert result.returncode == 1
    assert report["failed"] == ["git-ssh", "backup", "diun"]
    assert f"3 of {len(CHECKS)} checks FAILED: git-ssh, backup, diun" in result.stderr


@pytest.mark.parametrize("setting", ["HEALTH_MIN_FREE_PERCENT", "HEALTH_CERT_MIN_DAYS", "HEALTH_REMINDER_HOURS"])
def test_a_setting_that_is_not_a_number_is_bad_usage(testbed, setting):
    result = testbed.check(**{setting: "ten"})
    assert result.returncode == 2 and "'ten'" in result.stderr and result.stdout == ""


def notify(testbed: HealthHost) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """One --notify run and the mails it sent."""
    before = len(testbed.mails())
    result = testbed.check("--notify")
    return result, testbed.mails()[before:]


def test_notify_mails_on_each_change_of_state_and_reminds_once_a_day(testbed):
    testbed.state_file.unlink(missing_ok=True)
    result, mails = notify(testbed)
    assert result.returncode == 0 and mails == [], result.stderr
    state = json.loads(testbed.state_file.read_text())
    assert state["failed"] == [] and testbed.state_file.stat().st_mode & 0o777 == 0o644

    with container_state(testbed, "diun", status="exited", exit_code=2):
        result, mails = notify(testbed)
        assert result.returncode == 1 and len(mails) == 1
        mail = mails[0]
        assert mail["subject"] == f"[gitea-stack {STACK}] health check FAILED: diun"
        assert mail["destinations"]["ToAddresses"] == [ALERT_EMAIL]
        assert "Diun's container is exited (exit code 2)" in mail["body"]
        assert "What to do first: read docker logs --tail 100 gitea-stack-diun-1" in mail["body"]
        assert "docs/runbooks/health.md" in mail["body"]

        result, mails = notify(testbed)
        assert result.returncode == 1 and mails == [], "a second failing run mails nobody"

        with backup_status(testbed, datetime.timedelta(hours=5)):
            result, mails = notify(testbed)
            assert len(mails) == 1 and mails[0]["subject"].endswith("health check FAILED: backup, diun")
            assert "Still failing since the last mail: diun; recovered: none" in mails[0]["body"]
            assert "5h 0min ago; the limit is 2h 0min" in mails[0]["body"]

            result, mails = notify(testbed)
            assert mails == []
            # A day later (the last mail's time moved back), one reminder, then quiet again.
            state = json.loads(testbed.state_file.read_text())
            state["last_mail"] = (datetime.datetime.now(datetime.timezone.utc)
                                  - datetime.timedelta(hours=24, minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            testbed.state_file.write_text(json.dumps(state))
            result, mails = notify(testbed)
            assert len(mails) == 1 and mails[0]["subject"].endswith("health check still FAILING: backup, diun")
            assert f"failing since {state['since']}" in mails[0]["body"]
            result, mails = notify(testbed)
            assert mails == []

        result, mails = notify(testbed)  # the backup recovered, Diun did not: a new set, one mail
        assert len(mails) == 1 and mails[0]["subject"].endswith("health check FAILED: diun")
        assert "recovered: backup" in mails[0]["body"]

    result, mails = notify(testbed)
    assert result.returncode == 0 and len(mails) == 1
    assert mails[0]["subject"] == f"[gitea-stack {STACK}] health check recovered: diun pass again"
    result, mails = notify(testbed)
    assert mails == [] and json.loads(testbed.state_file.read_text())["failed"] == []


def test_notify_skips_while_another_job_holds_the_lock(testbed):
    notify(testbed)  # a known state: all passing
    with container_state(testbed, "diun", status="exited"):
        state_before = testbed.state_file.read_bytes()
        calls_before = len(testbed.docker_calls())
        with open(testbed.lock_file, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what deploy.sh's hold_lock takes (flock(1))
            started = time.monotonic()
            result, mails = notify(testbed)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 30, "it must not wait for the lock"
        assert "skipping this run, no mail, state unchanged" in result.stderr
        assert mails == [] and testbed.state_file.read_bytes() == state_before
        assert len(testbed.docker_calls()) == calls_before, "nothing was checked"
        # Without --notify the checks run anyway: an operator asks, whatever else runs.
        with open(testbed.lock_file, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert testbed.check().returncode == 1
        # The lock released: the same failure is mailed, and the lock is not left held.
        result, mails = notify(testbed)
        assert result.returncode == 1 and len(mails) == 1 and mails[0]["subject"].endswith("FAILED: diun")
        with open(testbed.lock_file, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if health-check.sh still held it
    result, mails = notify(testbed)
    assert len(mails) == 1 and "recovered" in mails[0]["subject"]
