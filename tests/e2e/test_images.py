"""Smoke test of the e2e tier's images: built by `build_images` into a dockerd of this test's own.

The dockerd runs in its own network and mount namespaces (nothing of the host's networking is
touched), keeps its data root in the testbed cache (so a second run finds every image and takes
seconds) and is stopped by its PID. Then: postgres initialises from a password file and takes a
SCRAM login from another container; the gitea stand-in starts against it with its secret files
(0600, owned by 1000) and serves /api/healthz; its CLI creates and lists the admin as deploy.sh
does; it keeps a repository as a row in PostgreSQL and a directory in its data; nginx accepts
the bundle's own site files (`http2 on;`) and answers its healthcheck; certbot runs and trusts the
extra CA; diun reads its secrets and the Docker socket. The observability plane, each image as the
compose file runs it (user, command, mounts, healthcheck): Prometheus, Alertmanager, node_exporter
and blackbox_exporter as nobody; postgres_exporter logs in from DATA_SOURCE_*; the Grafana stand-in
reads the bundle's ini, secrets and provisioning and its CLI resets the admin password; Loki (as
10001, /busybox/wget) takes a push; Alloy runs the bundle's config; cAdvisor lists containers.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gitea_stack.settings import parse_image_reference
from tests.harness.bundles import render, variant
from tests.harness.testbed_images import SERVICES, build_images, image_references, remove_stale_images
from tests.harness.tools import require_root, require_tool

CACHE_DIR = Path(os.environ.get("GITEA_STACK_TESTBED_CACHE", "/var/cache/gitea-stack-testbed"))
SMOKE_DIR = CACHE_DIR / "docker-smoke"
LABEL = "org.gitea-stack.smoke=1"
DOMAIN = "git.example.com"


def _self_signed(common_name: str, *, ca: bool, names: list[str] | None = None) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=3650 if ca else 1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def smoke_ca_pem() -> str:
    """A CA kept in the cache: the same CA every run, so the certbot image stays cached too."""
    path = SMOKE_DIR / "extra-ca.pem"
    if not path.exists():
        cert, _ = _self_signed("gitea-stack testbed smoke CA", ca=True)
        path.write_bytes(cert)
    return path.read_text()


class Dockerd:
    """A dockerd in its own network and mount namespaces; stopped by its PID."""

    def __init__(self, data_root: Path, run_dir: Path):
        self.dockerd = require_tool("dockerd", "docker.io")
        self.docker = require_tool("docker", "docker.io")
        self.unshare = require_tool("unshare", "util-linux")
        self.data_root = data_root
        self.run_dir = run_dir
        self.socket = run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = run_dir / "dockerd.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [self.unshare, "--net", "--mount", "--propagation", "private", "--",
                   self.dockerd, "--data-root", str(self.data_root), "--exec-root", str(self.run_dir / "exec"),
                   "--pidfile", str(self.run_dir / "dockerd.pid"), "--host", self.host,
                   "--bridge=none", "--default-address-pool", "base=10.213.0.0/16,size=24"]
        with self.log.open("w") as log:
            # unshare execs dockerd: this PID is dockerd's.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"dockerd exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.run("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        pytest.fail(f"dockerd did not answer on {self.socket} within 60s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([self.docker, "--host", self.host, *args], capture_output=True, text=True,
                                input=input, timeout=timeout,
                                env={k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")})
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def remove_leftovers(self) -> None:
        """Containers and networks an interrupted earlier run left in the persistent data root."""
        containers = self.run("ps", "--all", "--quiet", "--filter", f"label={LABEL}").stdout.split()
        if containers:
            self.run("rm", "--force", "--volumes", *containers)
        networks = self.run("network", "ls", "--quiet", "--filter", f"label={LABEL}").stdout.split()
        if networks:
            self.run("network", "rm", *networks)

    def logs(self, container: str) -> str:
        result = self.run("logs", container, check=False)
        return result.stdout + result.stderr


def wait_until(what: str, probe, timeout: float = 60, on_timeout=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} not within {timeout:.0f}s\n{on_timeout()}")


@pytest.fixture(scope="module")
def docker() -> Iterator[Dockerd]:
    require_root("dockerd, mmdebstrap and the 999/1000-owned secret files need root")
    require_tool("mmdebstrap", "mmdebstrap")
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    with open(SMOKE_DIR.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one dockerd per data root
        run_dir = Path(tempfile.mkdtemp(prefix="gs-smoke-", dir="/tmp"))  # short: unix socket paths
        daemon = Dockerd(SMOKE_DIR / "data", run_dir)
        try:
            daemon.start()
            daemon.remove_leftovers()
            yield daemon
            daemon.remove_leftovers()
        finally:
            daemon.stop()
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def extra_ca(docker) -> str:
    return smoke_ca_pem()


@pytest.fixture(scope="module")
def images(docker, extra_ca) -> dict[str, str]:
    started = time.monotonic()
    built = build_images(docker.host, CACHE_DIR, extra_ca)
    print(f"build_images took {time.monotonic() - started:.1f}s")
    remove_stale_images(docker.host, built)  # the data root persists: keep only what this run uses
    return built


@pytest.fixture(scope="module")
def network(docker) -> str:
    name = f"smoke-{os.getpid()}"
    docker.run("network", "create", "--label", LABEL, name)
    return name


def container_name(service: str) -> str:
    return f"smoke-{service}-{os.getpid()}"


def write_secret(directory: Path, name: str, value: str, owner: int) -> None:
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chown(directory, owner, owner)
    path = directory / name
    path.write_text(value)
    os.chown(path, owner, owner)
    path.chmod(0o600)


def test_references_are_exact_tags_the_settings_accept(images, extra_ca):
    assert set(images) == set(SERVICES)
    assert images == image_references(extra_ca)
    for service, reference in images.items():
        assert parse_image_reference(reference) == reference
        assert reference.startswith(f"gitea-stack-testbed/{service}:")
    assert images["gitea"].startswith("gitea-stack-testbed/gitea:1.27.3-rootless-")


def test_a_second_build_finds_every_image(docker, images, extra_ca):
    started = time.monotonic()
    assert build_images(docker.host, CACHE_DIR, extra_ca) == images
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def postgres(docker, images, network, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("postgres")
    data = work / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 999, 999)
    write_secret(work / "secrets", "postgres-password", "smoke-db-pass'word", 999)
    name = container_name("postgres")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--network", network,
               "--network-alias", "postgres", "--security-opt", "no-new-privileges:true",
               "--env", "POSTGRES_USER=gitea", "--env", "POSTGRES_DB=gitea",
               "--env", "POSTGRES_PASSWORD_FILE=/run/gitea-stack/postgres-password",
               # As the compose file mounts the data volume for a 17 image: at its PGDATA.
               "--volume", f"{data}:/var/lib/postgresql/data",
               "--volume", f"{work / 'secrets'}:/run/gitea-stack:ro", images["postgres"])
    # Compose's healthcheck: over TCP, which is up only once initdb's socket-only server has stopped.
    wait_until("postgres ready (compose's healthcheck)",
               lambda: docker.run("exec", name, "pg_isready", "--host=127.0.0.1", "--username=gitea",
                                  "--dbname=gitea", check=False).returncode == 0,
               on_timeout=lambda: docker.logs(name))
    assert (data / "PG_VERSION").read_text().strip() == "17"
    return name


def test_postgres_takes_a_scram_login_from_another_container(docker, images, network, postgres):
    query = "SELECT current_user, current_database(), rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
    result = docker.run("run", "--rm", "--label", LABEL, "--network", network,
                        "--env", "PGPASSWORD=smoke-db-pass'word", images["postgres"],
                        "psql", "--host=postgres", "--username=gitea", "--dbname=gitea", "--tuples-only",
                        "--no-align", f"--command={query}")
    assert result.stdout.strip() == "gitea|gitea|t"
    wrong = docker.run("run", "--rm", "--label", LABEL, "--network", network, "--env", "PGPASSWORD=wrong",
                       images["postgres"], "psql", "--host=postgres", "--username=gitea", "--dbname=gitea",
                       "--command=SELECT 1", check=False)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


@pytest.fixture(scope="module")
def gitea(docker, images, network, postgres, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("gitea")
    secrets = {"postgres-password": "smoke-db-pass'word", "gitea-secret-key": "k" * 64,
               "gitea-internal-token": "t" * 64, "metrics-token": "smoke-metrics-token",
               "smtp-host": "email-smtp.eu-west-1.amazonaws.com", "smtp-port": "587",
               "smtp-username": "AKIA-SMOKE", "smtp-password": "smtp-secret"}
    for key, value in secrets.items():
        write_secret(work / "secrets", key, value, 1000)
    for directory in ("data", "config"):
        (work / directory).mkdir(mode=0o750)
        os.chown(work / directory, 1000, 1000)
    environment = {
        "GITEA__database__DB_TYPE": "postgres", "GITEA__database__HOST": "postgres:5432",
        "GITEA__database__NAME": "gitea", "GITEA__database__USER": "gitea",
        "GITEA__database__PASSWD__FILE": "/run/gitea-stack/postgres-password",
        "GITEA__server__ROOT_URL": f"https://{DOMAIN}/", "GITEA__server__HTTP_PORT": "3000",
        "GITEA__server__START_SSH_SERVER": "true", "GITEA__server__SSH_LISTEN_PORT": "2222",
        "GITEA__security__INSTALL_LOCK": "true",
        "GITEA__security__SECRET_KEY__FILE": "/run/gitea-stack/gitea-secret-key",
        "GITEA__security__INTERNAL_TOKEN__FILE": "/run/gitea-stack/gitea-internal-token",
        "GITEA__mailer__SMTP_ADDR__FILE": "/run/gitea-stack/smtp-host",
        "GITEA__mailer__PASSWD__FILE": "/run/gitea-stack/smtp-password",
        "GITEA__metrics__ENABLED": "true", "GITEA__metrics__TOKEN__FILE": "/run/gitea-stack/metrics-token",
    }
    name = container_name("gitea")
    env_args = [arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")]
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--network", network,
               "--security-opt", "no-new-privileges:true", *env_args,
               "--volume", f"{work / 'data'}:/var/lib/gitea", "--volume", f"{work / 'config'}:/etc/gitea",
               "--volume", f"{work / 'secrets'}:/run/gitea-stack:ro", images["gitea"])
    wait_until("gitea's /api/healthz (compose's healthcheck)",
               lambda: docker.run("exec", name, "curl", "--fail", "--silent", "--show-error",
                                  "http://localhost:3000/api/healthz", check=False).returncode == 0,
               on_timeout=lambda: docker.logs(name))
    return name


def test_gitea_answers_its_healthcheck_and_version(docker, gitea):
    health = docker.run("exec", gitea, "curl", "--fail", "--silent", "http://localhost:3000/api/healthz").stdout
    assert json.loads(health)["status"] == "pass"
    version = docker.run("exec", gitea, "curl", "--fail", "--silent", "http://localhost:3000/api/v1/version").stdout
    assert json.loads(version) == {"version": "1.27.3"}
    assert docker.run("exec", gitea, "id", "-u").stdout.strip() == "1000"
    assert "database gitea on postgres:5432 answers as gitea" in docker.logs(gitea)


def test_gitea_cli_creates_and_lists_the_admin_as_deploy_sh_does(docker, gitea):
    created = docker.run("exec", gitea, "gitea", "admin", "user", "create", "--admin", "--username", "smoke-admin",
                         "--email", "ops@example.com", "--random-password", "--must-change-password=false")
    temporary = [line.removeprefix("generated random password is '").removesuffix("'")
                 for line in created.stdout.splitlines() if line.startswith("generated random password is '")]
    assert len(temporary) == 1 and temporary[0].isalnum() and len(temporary[0]) >= 8
    listed = docker.run("exec", gitea, "gitea", "admin", "user", "list", "--admin").stdout.splitlines()
    assert listed[0].split()[:2] == ["ID", "Username"]
    assert [line.split()[1] for line in listed[1:]] == ["smoke-admin"]
    again = docker.run("exec", gitea, "gitea", "admin", "user", "create", "--admin", "--username", "smoke-admin",
                       "--email", "ops@example.com", "--random-password", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    unknown = docker.run("exec", gitea, "gitea", "admin", "user", "list", "--no-such-flag", check=False)
    assert unknown.returncode != 0 and "flag provided but not defined" in unknown.stderr

    # deploy.sh's password change: curl reads credentials and body from its standard input.
    body = json.dumps({"login_name": "smoke-admin", "source_id": 0, "password": "smoke-final-password",
                       "must_change_password": False})
    config = "\n".join([f'user = "smoke-admin:{temporary[0]}"', 'request = "PATCH"',
                        'header = "Content-Type: application/json"', f"data = {json.dumps(body)}",
                        'url = "http://localhost:3000/api/v1/admin/users/smoke-admin"',
                        "fail", "silent", "show-error", 'output = "/dev/null"']) + "\n"
    docker.run("exec", "--interactive", gitea, "curl", "--config", "-", input=config)
    me = docker.run("exec", gitea, "curl", "--fail", "--silent", "--user", "smoke-admin:smoke-final-password",
                    "http://localhost:3000/api/v1/user").stdout
    assert json.loads(me)["login"] == "smoke-admin"
    old = docker.run("exec", gitea, "curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}",
                     "--user", f"smoke-admin:{temporary[0]}", "http://localhost:3000/api/v1/user").stdout
    assert old == "401"
    token = docker.run("exec", gitea, "gitea", "actions", "generate-runner-token").stdout.strip()
    assert len(token) >= 32

    # deploy.sh's way back when a new administrator's password could not be set.
    docker.run("exec", gitea, "gitea", "admin", "user", "create", "--username", "smoke-throwaway",
               "--email", "throwaway@example.com", "--random-password")
    docker.run("exec", gitea, "gitea", "admin", "user", "delete", "--username", "smoke-throwaway")
    names = [line.split()[1] for line in docker.run("exec", gitea, "gitea", "admin", "user", "list").stdout
             .splitlines()[1:]]
    assert names == ["smoke-admin"]


def test_gitea_keeps_repositories_in_its_database_and_data_directory(docker, gitea, postgres):
    docker.run("exec", gitea, "gitea", "admin", "user", "create", "--username", "smoke-owner", "--email",
               "owner@example.com", "--password", "smoke-owner-password", "--must-change-password=false")

    def api(method: str, path: str, user: str | None = None, body: dict | None = None) -> tuple[int, str]:
        args = ["exec", gitea, "curl", "--silent", "--write-out", "\n%{http_code}", "--request", method]
        if user is not None:
            args += ["--user", user]
        if body is not None:
            args += ["--header", "Content-Type: application/json", "--data", json.dumps(body)]
        text, _, status = docker.run(*args, f"http://localhost:3000{path}").stdout.rpartition("\n")
        return int(status), text

    owner = "smoke-owner:smoke-owner-password"
    try:
        description = "it's :'name' \"quoted\""  # psql variables are values, never SQL
        status, created = api("POST", "/api/v1/user/repos", owner,
                              {"name": "Smoke-Repo", "description": description, "private": True})
        assert status == 201, created
        repository = json.loads(created)
        assert (repository["full_name"], repository["description"], repository["private"]) == \
            ("smoke-owner/Smoke-Repo", description, True)
        assert repository["clone_url"] == f"https://{DOMAIN}/smoke-owner/Smoke-Repo.git"
        assert api("GET", "/api/v1/repos/smoke-owner/smoke-repo", owner) == (200, created)
        assert api("GET", "/api/v1/repos/smoke-owner/smoke-repo")[0] == 404  # private
        assert api("POST", "/api/v1/user/repos", owner, {"name": "smoke-repo"})[0] == 409
        assert api("POST", "/api/v1/user/repos", owner, {"name": "../escape"})[0] == 422
        assert api("POST", "/api/v1/user/repos", None, {"name": "anonymous"})[0] == 401
        rows = docker.run("exec", postgres, "psql", "--username=gitea", "--dbname=gitea", "--tuples-only",
                          "--no-align", "--command=SELECT owner_name, name, is_private FROM repository").stdout
        assert rows.strip() == "smoke-owner|Smoke-Repo|t"
        head = docker.run("exec", gitea, "cat", "/var/lib/gitea/git/repositories/smoke-owner/smoke-repo.git/HEAD")
        assert head.stdout == "ref: refs/heads/main\n"
    finally:
        docker.run("exec", gitea, "gitea", "admin", "user", "delete", "--username", "smoke-owner")


def test_nginx_accepts_the_bundles_sites_and_answers_its_healthcheck(docker, images, tmp_path):
    bundle = render(variant("example"))
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    for name in ("http", "https"):
        (conf_d / f"{name}.conf").write_text(bundle[f"nginx/{name}.conf"][0])
    assert "http2 on;" in (conf_d / "https.conf").read_text()
    live = tmp_path / "letsencrypt" / "live" / DOMAIN
    live.mkdir(parents=True)
    cert, key = _self_signed(DOMAIN, ca=False, names=[DOMAIN])
    (live / "fullchain.pem").write_bytes(cert)
    (live / "privkey.pem").write_bytes(key)
    mounts = ["--volume", f"{conf_d}:/etc/nginx/conf.d:ro",
              "--volume", f"{tmp_path / 'letsencrypt'}:/etc/letsencrypt:ro",
              "--add-host", "gitea:127.0.0.1"]  # proxy_pass http://gitea:3000 must resolve
    checked = docker.run("run", "--rm", "--label", LABEL, *mounts, images["nginx"], "nginx", "-t", check=False)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr

    name = container_name("nginx")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--security-opt", "no-new-privileges:true",
               *mounts, images["nginx"])
    wait_until("nginx's healthcheck",
               lambda: docker.run("exec", name, "wget", "--quiet", "--output-document=/dev/null",
                                  "http://127.0.0.1/nginx-health", check=False).returncode == 0,
               timeout=30, on_timeout=lambda: docker.logs(name))
    docker.run("rm", "--force", name)


def test_certbot_runs_and_trusts_the_extra_ca(docker, images, extra_ca):
    version = docker.run("run", "--rm", "--label", LABEL, images["certbot"], "--version")
    assert (version.stdout + version.stderr).startswith("certbot ")
    bundle = docker.run("run", "--rm", "--label", LABEL, "--entrypoint", "cat", images["certbot"],
                        "/etc/ssl/certs/ca-certificates.crt").stdout
    body = "".join(line for line in extra_ca.splitlines() if not line.startswith("-----"))
    assert body in bundle.replace("\n", "")
    where = docker.run("run", "--rm", "--label", LABEL, "--entrypoint", "python3", images["certbot"],
                       "-c", "import requests.certs; print(requests.certs.where())").stdout.strip()
    assert where == "/etc/ssl/certs/ca-certificates.crt"


def test_diun_reads_its_secrets_and_the_docker_socket(docker, images, tmp_path):
    for key, value in (("smtp-username", "AKIA-SMOKE"), ("smtp-password", "smtp-secret")):
        write_secret(tmp_path / "secrets", key, value, 0)
    name = container_name("diun")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--security-opt", "no-new-privileges:true",
               "--env", "DIUN_WATCH_SCHEDULE=0 4 * * 1", "--env", "DIUN_PROVIDERS_DOCKER=true",
               "--env", "DIUN_NOTIF_MAIL_USERNAMEFILE=/run/gitea-stack/smtp-username",
               "--env", "DIUN_NOTIF_MAIL_PASSWORDFILE=/run/gitea-stack/smtp-password",
               "--env", "DIUN_DB_PATH=/data/diun.db",
               "--volume", f"{tmp_path / 'secrets'}:/run/gitea-stack:ro", "--volume", f"{tmp_path}:/data",
               "--volume", f"{docker.socket}:/var/run/docker.sock:ro", images["diun"], "serve")
    wait_until("diun's schedule in its log", lambda: "Cron initialized" in docker.logs(name), timeout=30,
               on_timeout=lambda: docker.logs(name))
    assert "containers through unix:///var/run/docker.sock" in docker.logs(name)
    docker.run("stop", name)
    assert docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    docker.run("rm", name)


# --- the observability plane: each image run as the compose file runs it (user, command, mounts) ---

NOBODY = 65534


def _wait_healthy(docker: Dockerd, name: str, healthcheck: list[str], timeout: float = 60) -> None:
    """Compose's healthcheck command, run in the container until it succeeds."""
    wait_until(f"{name}: {' '.join(healthcheck)}",
               lambda: docker.run("exec", name, *healthcheck, check=False).returncode == 0,
               timeout=timeout, on_timeout=lambda: docker.logs(name))


def _owned_dir(path: Path, owner: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner, owner)
    return path


def _wget(url: str) -> list[str]:
    return ["wget", "--quiet", "--output-document=/dev/null", url]


# Debian's builds of the exporters end at once with exit code 2 on docker stop's SIGTERM (seen here):
# still a stop, not a kill after the grace period (137).
EXPORTER_EXIT_CODES = ("0", "2", "143")


def _stop_cleanly(docker: Dockerd, name: str, exit_codes: tuple[str, ...] = ("0", "143")) -> None:
    docker.run("stop", name)
    assert docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() in exit_codes, \
        docker.logs(name)
    docker.run("rm", name)


def _prometheus_program_args(service: str, work: Path, bundle: dict,
                             cleanup: list[Path]) -> tuple[list[str], list[str], list[str]]:
    """(docker run options, command, healthcheck) as the compose file has them, with small configs."""
    if service == "prometheus":
        (work / "config").mkdir()
        (work / "config" / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
        options = ["--volume", f"{work / 'config'}:/etc/prometheus:ro",
                   "--volume", f"{_owned_dir(work / 'data', NOBODY)}:/prometheus"]
        command = ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                   "--storage.tsdb.retention.time=15d", "--storage.tsdb.retention.size=1GB",
                   "--web.listen-address=:9090"]
        return options, command, _wget("http://127.0.0.1:9090/-/healthy")
    if service == "alertmanager":
        write_secret(work / "secrets", "alertmanager.yml",
                     "route:\n  receiver: mail\nreceivers:\n  - name: mail\n", NOBODY)
        options = ["--volume", f"{work / 'secrets'}:/run/gitea-stack:ro",
                   "--volume", f"{_owned_dir(work / 'data', NOBODY)}:/alertmanager"]
        command = ["--config.file=/run/gitea-stack/alertmanager.yml", "--storage.path=/alertmanager",
                   "--web.listen-address=:9093", "--cluster.listen-address="]
        return options, command, _wget("http://127.0.0.1:9093/-/healthy")
    if service == "node-exporter":
        # Readable by nobody along its whole path below /host (pytest's tmp_path is root's, 0700).
        textfiles = Path(tempfile.mkdtemp(prefix="gs-smoke-textfile-", dir="/tmp"))
        cleanup.append(textfiles)
        (textfiles / "smoke.prom").write_text("gitea_stack_smoke 1\n")
        textfiles.chmod(0o755)
        (textfiles / "smoke.prom").chmod(0o644)
        # No --collector.systemd: the smoke test has no host D-Bus to give it.
        options = ["--volume", "/:/host:ro"]
        command = ["--path.rootfs=/host", "--web.listen-address=:9100",
                   f"--collector.textfile.directory=/host{textfiles}",
                   "--collector.filesystem.mount-points-exclude=^/(dev|proc|run|sys|var/lib/docker/.+)($|/)"]
        return options, command, _wget("http://127.0.0.1:9100/metrics")
    if service == "blackbox-exporter":
        (work / "blackbox.yml").write_text(bundle["blackbox/blackbox.yml"][0])
        options = ["--volume", f"{work / 'blackbox.yml'}:/etc/blackbox/blackbox.yml:ro"]
        command = ["--config.file=/etc/blackbox/blackbox.yml", "--web.listen-address=:9115"]
        return options, command, _wget("http://127.0.0.1:9115/-/healthy")
    raise AssertionError(service)


OWN_METRICS = {
    "prometheus": ("http://127.0.0.1:9090/metrics", "prometheus_build_info{"),
    "alertmanager": ("http://127.0.0.1:9093/metrics", "alertmanager_build_info{"),
    "node-exporter": ("http://127.0.0.1:9100/metrics", "gitea_stack_smoke 1"),
    "blackbox-exporter": ("http://127.0.0.1:9115/metrics", "blackbox_exporter_build_info{"),
}


@pytest.mark.parametrize("service", ["prometheus", "alertmanager", "node-exporter", "blackbox-exporter"])
def test_prometheus_programs_run_as_nobody_with_the_compose_command(docker, images, service, tmp_path):
    cleanup: list[Path] = []
    options, command, healthcheck = _prometheus_program_args(service, tmp_path, render(variant("example")), cleanup)
    name = container_name(service)
    try:
        docker.run("run", "--detach", "--name", name, "--label", LABEL, "--user", f"{NOBODY}:{NOBODY}",
                   "--security-opt", "no-new-privileges:true", *options, images[service], *command)
        _wait_healthy(docker, name, healthcheck)
        assert docker.run("exec", name, "id", "-u").stdout.strip() == str(NOBODY)
        # Each serves its metrics; node_exporter's include the textfile collector's file.
        url, expected = OWN_METRICS[service]
        assert expected in docker.run("exec", name, "wget", "--quiet", "--output-document=-", url).stdout
        _stop_cleanly(docker, name, EXPORTER_EXIT_CODES if service.endswith("-exporter") else ("0", "143"))
    finally:
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)


def test_postgres_exporter_logs_in_with_the_data_source_environment(docker, images, network, postgres, tmp_path):
    write_secret(tmp_path / "secrets", "postgres-exporter-password", "smoke-db-pass'word", NOBODY)
    name = container_name("postgres-exporter")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--network", network,
               "--user", f"{NOBODY}:{NOBODY}", "--security-opt", "no-new-privileges:true",
               "--env", "DATA_SOURCE_URI=postgres:5432/gitea?sslmode=disable", "--env", "DATA_SOURCE_USER=gitea",
               "--env", "DATA_SOURCE_PASS_FILE=/run/gitea-stack/postgres-exporter-password",
               "--volume", f"{tmp_path / 'secrets'}:/run/gitea-stack:ro", images["postgres-exporter"])
    _wait_healthy(docker, name, _wget("http://127.0.0.1:9187/metrics"))
    wait_until("pg_up 1 in postgres-exporter's metrics",
               lambda: "\npg_up 1" in docker.run("exec", name, "wget", "--quiet", "--output-document=-",
                                                  "http://127.0.0.1:9187/metrics", check=False).stdout,
               timeout=30, on_timeout=lambda: docker.logs(name))
    _stop_cleanly(docker, name, EXPORTER_EXIT_CODES)


def test_grafana_reads_its_secret_files_and_provisioning_and_resets_the_admin_password(docker, images, tmp_path):
    bundle = render(variant("example"))
    for path, (content, *_rest) in bundle.items():
        if path.startswith("grafana/"):
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    for key in ("grafana-admin-password", "grafana-oauth-client-id", "grafana-oauth-client-secret"):
        write_secret(tmp_path / "secrets", key, f"smoke-{key}", 472)
    data = _owned_dir(tmp_path / "data", 472)
    name = container_name("grafana")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--user", "472:472",
               "--security-opt", "no-new-privileges:true",
               "--volume", f"{tmp_path / 'grafana' / 'grafana.ini'}:/etc/grafana/grafana.ini:ro",
               "--volume", f"{tmp_path / 'grafana' / 'provisioning'}:/etc/grafana/provisioning:ro",
               "--volume", f"{tmp_path / 'grafana' / 'dashboards'}:/etc/grafana/dashboards:ro",
               "--volume", f"{tmp_path / 'secrets'}:/run/gitea-stack:ro",
               "--volume", f"{data}:/var/lib/grafana", images["grafana"])
    _wait_healthy(docker, name, _wget("http://127.0.0.1:3000/grafana/api/health"))
    login = docker.run("exec", name, "wget", "--quiet", "--output-document=-", "http://127.0.0.1:3000/grafana/login")
    assert "Gitea" in login.stdout
    # deploy.sh's reset of the break-glass admin's password.
    docker.run("exec", "--interactive", name, "grafana", "cli", "--homepath", "/usr/share/grafana", "admin",
               "reset-admin-password", "--password-from-stdin", input="smoke-grafana-admin\n")
    recorded = (data / "standin-admin-password.sha256").read_text().strip()
    assert recorded == hashlib.sha256(b"smoke-grafana-admin").hexdigest()
    _stop_cleanly(docker, name)


def test_loki_runs_the_bundles_config_as_10001_and_accepts_a_push(docker, images, tmp_path):
    (tmp_path / "config.yml").write_text(render(variant("example"))["loki/config.yml"][0])
    data = _owned_dir(tmp_path / "loki", 10001)
    name = container_name("loki")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--user", "10001:10001",
               "--security-opt", "no-new-privileges:true",
               "--volume", f"{tmp_path / 'config.yml'}:/etc/loki/config.yml:ro", "--volume", f"{data}:/loki",
               images["loki"], "-config.file=/etc/loki/config.yml")
    _wait_healthy(docker, name, ["/busybox/wget", "--quiet", "--output-document=/dev/null",
                                 "http://127.0.0.1:3100/ready"])
    push = json.dumps({"streams": [{"stream": {"service": "smoke"}, "values": [[str(time.time_ns()), "hello"]]}]})
    docker.run("exec", name, "/busybox/wget", "--quiet", "--output-document=/dev/null",
               "--header=Content-Type: application/json", f"--post-data={push}",
               "http://127.0.0.1:3100/loki/api/v1/push")
    assert (data / "wal").is_dir()
    _stop_cleanly(docker, name)


def test_alloy_runs_the_bundles_config_and_answers_its_healthcheck(docker, images, tmp_path):
    (tmp_path / "config.alloy").write_text(render(variant("example"))["alloy/config.alloy"][0])
    name = container_name("alloy")
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--user", "0:0", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges:true",
               "--volume", f"{tmp_path / 'config.alloy'}:/etc/alloy/config.alloy:ro",
               "--volume", f"{tmp_path / 'data'}:/var/lib/alloy/data", images["alloy"],
               "run", "/etc/alloy/config.alloy", "--storage.path=/var/lib/alloy/data",
               "--server.http.listen-addr=0.0.0.0:12345", "--disable-reporting")
    _wait_healthy(docker, name, ["curl", "--fail", "--silent", "--output", "/dev/null", "http://127.0.0.1:12345/-/ready"])
    metrics = docker.run("exec", name, "curl", "--fail", "--silent", "http://127.0.0.1:12345/metrics").stdout
    assert "nginx_http_requests_total" in metrics and "admin_ssh_failed_logins_total" in metrics
    _stop_cleanly(docker, name)


def test_cadvisor_lists_containers_through_the_docker_api(docker, images):
    name = container_name("cadvisor")
    # The socket itself here (the product goes through docker-socket-proxy, tested with the stack).
    docker.run("run", "--detach", "--name", name, "--label", LABEL, "--label", "com.docker.compose.service=cadvisor",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
               "--volume", f"{docker.socket}:/var/run/docker.sock", images["cadvisor"],
               "--docker=unix:///var/run/docker.sock", "--docker_only=true", "--housekeeping_interval=30s",
               "--store_container_labels=false", "--whitelisted_container_labels=com.docker.compose.service",
               "--disable_metrics=advtcp,cpu_topology,cpuset,hugetlb,memory_numa,percpu,perf_event,process,"
               "referenced_memory,resctrl,sched,tcp,udp")
    _wait_healthy(docker, name, _wget("http://127.0.0.1:8080/healthz"))
    metrics = docker.run("exec", name, "wget", "--quiet", "--output-document=-", "http://127.0.0.1:8080/metrics").stdout
    assert f'name="{name}",container_label_com_docker_compose_service="cadvisor"' in metrics
    assert "machine_memory_bytes" in metrics
    _stop_cleanly(docker, name)
