"""deploy.sh itself, run on this machine: the modes of what it writes, and nginx reloads on changes.

The bundle is rendered with a HostLayout of temporary directories (bundle at …/opt/gitea-stack, data
volume at …/srv/gitea-stack) and loopback ports; the secrets are canaries in a real Secrets Manager
API (moto), named in stack-facts.env as `pulumi up` writes it. deploy.sh runs as root, as on the
host, with the stand-ins of tests/harness/host_standins.py: nginx is real (started as the nginx
container starts: including the site directory deploy.sh fills), and so are its `nginx -t` and
`nginx -s reload`; certbot is not needed (a certificate from the ACME server the settings name is
already there, as after a first deploy). It runs with umask 000, so every mode that matters is one
the scripts set, not one inherited.

The module's tests run in order on one host: first converge, modes, a changed nginx config, a
converge with nothing changed.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitea_stack.bundle import HostLayout, write_bundle
from gitea_stack.provision import stack_facts
from gitea_stack.secrets import GENERATED_SECRETS, PLANE_SECRETS
from gitea_stack.settings import parse_settings
from tests.harness.bundles import BASE, render
from tests.harness.host_standins import (
    HostStandIns,
    MotoServer,
    host_script_argv,
    layout_mount_problems,
    service_calls,
)
from tests.harness.nginx import NginxServer, free_port, supports_http2_directive
from tests.harness.secret_scan import scan
from tests.harness.tools import require_root, require_tool
from tests.host.test_nginx import wait_until, write_certificate

DOMAIN = BASE["domain"]
REGION = "eu-central-1"
# Who owns each service's secrets: the user each image runs as (postgres 999, rootless Gitea 1000,
# the Prometheus images nobody, Grafana 472).
SECRET_OWNERS = {"postgres": 999, "gitea": 1000, "diun": 0, "host": 0, "prometheus": 65534, "alertmanager": 65534,
                 "postgres-exporter": 65534, "grafana": 472}


@dataclass
class Host:
    root: Path
    bundle_dir: Path
    data_dir: Path
    systemd_dir: Path
    https_port: int
    nginx: NginxServer
    standins: HostStandIns
    canaries: dict[str, str]  # secret key -> its value in Secrets Manager
    runs: list[subprocess.CompletedProcess]

    def converge(self) -> subprocess.CompletedProcess:
        result = subprocess.run(
            host_script_argv(self.bundle_dir / "scripts" / "deploy.sh", self.systemd_dir),
            env=self.standins.environment(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                                          MIN_FREE_MIB="1", HEALTH_TIMEOUT_SECONDS="10"),
            capture_output=True, text=True, timeout=120, umask=0o000, check=False)
        self.runs.append(result)
        return result

    def https_headers(self, path: str = "/") -> tuple[int, dict[str, str]]:
        """Status and headers (lower-case names) nginx answers on HTTPS; Gitea is down, so 502."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
        head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        return int(head[0].split()[1]), headers

    def nginx_processes(self) -> tuple[int, set[int]]:
        """(master PID, worker PIDs) of the running nginx."""
        master = int((self.nginx.workdir / "nginx.pid").read_text())
        workers = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == master:
                    workers.add(int(entry.name))
        return master, workers


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def store_canaries(moto: MotoServer) -> tuple[dict[str, str], dict[str, str]]:
    """Secrets Manager holds a canary for every secret, as `pulumi up` stores them: (names, values)."""
    client = moto.client("secretsmanager")
    values = {key: f"CANARY{key.replace('-', '')}{secrets.token_hex(12)}" for key in [*GENERATED_SECRETS, *PLANE_SECRETS]}
    values["smtp-password"] = f"CANARYsmtp{secrets.token_hex(12)}"
    stored = {**{key: value for key, value in values.items() if key != "smtp-password"},
              "smtp-credentials": (f'{{"host": "email-smtp.{REGION}.amazonaws.com", "port": 587, '
                                   f'"username": "AKIAEXAMPLESMTPUSER01", "password": "{values["smtp-password"]}"}}')}
    names = {}
    for key, value in stored.items():
        names[key] = client.create_secret(Name=f"gitea-stack/prod/{key}-abc123", SecretString=value)["Name"]
    return names, values


@pytest.fixture(scope="module")
def host(tmp_path_factory, request):
    require_root("deploy.sh gives secret files to the users the images run as (install -o)")
    nginx_path = require_tool("nginx", "nginx")
    root = tmp_path_factory.mktemp("converge")
    bundle_dir, data_dir = root / "opt" / "gitea-stack", root / "srv" / "gitea-stack"
    systemd_dir = root / "etc-systemd-system"
    systemd_dir.mkdir()
    # The data volume is a mount point (deploy.sh refuses to run on an unmounted one); a tmpfs has no
    # block device, so the converge's filesystem growth leaves it alone.
    data_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "gitea-stack-test-data", str(data_dir)],
                   check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", str(data_dir)], check=True))
    https_port = free_port()
    layout = HostLayout(
        bundle_dir=str(bundle_dir), data_dir=str(data_dir),
        http_listen=f"127.0.0.1:{free_port()}", https_listen=f"127.0.0.1:{https_port}",
        gitea_upstream=f"127.0.0.1:{free_port()}",  # nothing listens: Gitea is down, nginx answers 502
        letsencrypt_dir=str(data_dir / "letsencrypt"), acme_webroot=str(data_dir / "acme-webroot"),
        certbot_logs_dir=str(root / "certbot-logs"), certbot_host_logs_dir=str(root / "certbot-logs"),
        certbot_work_dir=str(root / "certbot-work"), nginx_http2_directive=supports_http2_directive(nginx_path))
    (root / "moto").mkdir()
    with MotoServer(root / "moto", REGION) as moto:
        settings = parse_settings({**BASE, "awsEndpointUrl": moto.url}, "prod")
        bundle = render(settings, layout)
        assert layout_mount_problems(bundle["docker-compose.yml"][0]) == []
        write_bundle(bundle, bundle_dir)
        names, values = store_canaries(moto)
        (bundle_dir / "stack-facts.env").write_text(stack_facts(REGION, "gitea-stack-prod-backups-test", names))
        # After a first deploy: the certificate from the ACME server the settings name.
        write_certificate(data_dir / "letsencrypt" / "live" / DOMAIN, DOMAIN)
        (data_dir / "letsencrypt" / "renewal").mkdir()
        (data_dir / "letsencrypt" / "renewal" / f"{DOMAIN}.conf").write_text(f"server = {settings.acme_server}\n")
        # The nginx container includes its conf.d, which deploy.sh fills (nothing there yet).
        nginx = NginxServer(root / "nginx", [bundle_dir / "runtime" / "nginx" / "*.conf"], [])
        with nginx:
            yield Host(root, bundle_dir, data_dir, systemd_dir, https_port, nginx, HostStandIns(root / "standins", nginx),
                       values, [])


def test_the_first_converge_succeeds_and_nginx_serves_https(host):
    result = host.converge()
    assert result.returncode == 0, explain(result)
    assert f"converged: https://{DOMAIN}/" in result.stderr
    status, headers = host.https_headers()
    assert status == 502 and headers["x-frame-options"] == "SAMEORIGIN"
    # deploy.sh's own `nginx -t` and `nginx -s reload` put the site files into service.
    assert service_calls(host.standins.docker_calls(), "nginx") == [["nginx", "nginx", "-t"],
                                                                   ["nginx", "nginx", "-s", "reload"]]



def mode_and_owner(path: Path) -> tuple[int, int]:
    status = path.stat()
    return stat.S_IMODE(status.st_mode), status.st_uid


def test_secret_files_are_0600_in_0700_directories_owned_by_their_service(host):
    secrets_dir = host.bundle_dir / "secrets"
    assert mode_and_owner(secrets_dir) == (0o711, 0)  # others may pass through, not list
    services = sorted(path.name for path in secrets_dir.iterdir())
    assert services == sorted(SECRET_OWNERS), services  # and no staging directory is left behind
    for service, owner in SECRET_OWNERS.items():
        directory = secrets_dir / service
        assert mode_and_owner(directory) == (0o700, owner), service
        files = sorted(directory.iterdir())
        assert files, f"no secret files for {service}"
        for path in files:
            assert path.is_file() and mode_and_owner(path) == (0o600, owner), (path, oct(mode_and_owner(path)[0]))


def test_state_gitea_config_and_secret_digests_are_private(host):
    assert mode_and_owner(host.data_dir / "state") == (0o700, 0)
    assert mode_and_owner(host.data_dir / "gitea" / "config") == (0o700, 1000)
    env_files = sorted((host.bundle_dir / "runtime").glob("*.env"))
    assert [path.name for path in env_files] == ["alertmanager.env", "diun.env", "gitea.env", "grafana.env",
                                                 "postgres-exporter.env", "prometheus.env"]
    for path in env_files:
        assert mode_and_owner(path) == (0o600, 0), path


def test_fetch_secrets_stages_into_a_private_directory_that_goes_away(host):
    (fetched,) = host.standins.fetched_modes()
    staging = min(fetched, key=len)
    assert Path(staging).parent == host.bundle_dir / "secrets" and fetched[staging] == [0o700, 0]
    files = {path: mode for path, (mode, _) in fetched.items() if path != staging}
    assert len(files) >= len(GENERATED_SECRETS) + 4  # every generated secret, and the SMTP credentials in 4 files
    assert all(mode == 0o600 for mode in files.values()), {path: oct(mode) for path, mode in files.items()}
    assert not Path(staging).exists()


def holders_of_secrets(host: Host) -> dict[Path, int]:
    """Every file below the bundle, the data volume and the installed units that holds a secret value
    (in any form the scan knows), with its mode."""
    found = {}
    for base in (host.bundle_dir, host.data_dir, host.systemd_dir):
        for path in base.rglob("*"):
            if path.is_file() and scan(path.read_bytes(), host.canaries.values()).findings:
                found[path] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_secret_values_are_in_the_secret_files_only_and_never_in_output_or_command_lines(host):
    holders = holders_of_secrets(host)
    secrets_dir = host.bundle_dir / "secrets"
    assert len(holders) >= len(GENERATED_SECRETS), holders
    assert {path for path in holders if secrets_dir not in path.parents} == set(), holders
    assert all(mode == 0o600 for mode in holders.values()), holders
    logged = {"deploy output": [run.stdout + run.stderr for run in host.runs],
              "docker command lines": host.standins.docker_calls(),
              "systemctl command lines": host.standins.systemctl_log.read_text()}
    assert scan(logged, host.canaries.values()).findings == []


def test_an_app_ini_gitea_wrote_is_made_private(host):
    app_ini = host.data_dir / "gitea" / "config" / "app.ini"
    app_ini.write_text("[database]\nPASSWD = written by Gitea at its start\n")
    app_ini.chmod(0o644)  # Gitea's default mode
    os.chown(app_ini, 1000, 1000)
    result = host.converge()
    assert result.returncode == 0, explain(result)
    assert mode_and_owner(app_ini) == (0o600, 1000)


# --- nginx follows its configuration ---------------------------------------------------------------

def nginx_calls_of_the_last_run(host: Host, calls_before: int) -> list[list[str]]:
    return service_calls(host.standins.docker_calls()[calls_before:], "nginx")


def test_a_changed_nginx_config_is_checked_and_reloaded(host):
    master, workers = host.nginx_processes()
    assert workers, "nginx runs no worker"
    assert host.https_headers()[1]["x-frame-options"] == "SAMEORIGIN"
    site = host.bundle_dir / "nginx" / "https.conf"  # as the copy step leaves a changed bundle
    site.write_text(site.read_text().replace('X-Frame-Options "SAMEORIGIN"', 'X-Frame-Options "DENY"'))
    calls_before = len(host.standins.docker_calls())

    result = host.converge()

    assert result.returncode == 0, explain(result)
    assert nginx_calls_of_the_last_run(host, calls_before) == [["nginx", "nginx", "-t"],
                                                               ["nginx", "nginx", "-s", "reload"]]
    wait_until(lambda: host.https_headers()[1]["x-frame-options"] == "DENY", what="nginx serving the changed header")
    # A reload, not a restart: the same master, new workers.
    new_master, new_workers = wait_until(lambda: (p := host.nginx_processes())[1] and not p[1] & workers and p,
                                         what="the old workers replaced")
    assert new_master == master and new_workers


def test_a_converge_with_nothing_changed_leaves_nginx_alone(host):
    master, workers = host.nginx_processes()
    calls_before = len(host.standins.docker_calls())

    result = host.converge()

    assert result.returncode == 0, explain(result)
    assert nginx_calls_of_the_last_run(host, calls_before) == []
    assert host.nginx_processes() == (master, workers)
    assert host.https_headers()[1]["x-frame-options"] == "DENY"


def test_a_restore_password_is_installed_for_the_host_when_the_stack_names_one(host):
    # restoreFrom: the old stack's restic password, by ARN in another region (boto3 asks the same
    # endpoint, moto keeps each region apart). Without it (every converge above) nothing is installed.
    import boto3
    assert not (host.bundle_dir / "secrets" / "host" / "restore-from-password").exists()
    settings_env = (host.bundle_dir / "settings.env").read_text()
    endpoint = next(line.split("=", 1)[1] for line in settings_env.splitlines() if line.startswith("AWS_ENDPOINT_URL="))
    old_region = "eu-west-1"
    client = boto3.client("secretsmanager", region_name=old_region, endpoint_url=endpoint,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    canary = f"CANARYrestorefrom{secrets.token_hex(12)}"
    arn = client.create_secret(Name="gitea-stack/old/restic-password-abc123", SecretString=canary)["ARN"]
    facts = host.bundle_dir / "stack-facts.env"
    facts.write_text(facts.read_text() + f"RESTORE_FROM_BUCKET=gitea-stack-old-backups-test\n"
                                          f"RESTORE_FROM_REGION={old_region}\nSECRET_RESTORE_FROM_PASSWORD={arn}\n")
    result = host.converge()
    assert result.returncode == 0, explain(result)
    installed = host.bundle_dir / "secrets" / "host" / "restore-from-password"
    assert installed.read_text() == canary and mode_and_owner(installed) == (0o600, 0)
    assert canary not in result.stdout + result.stderr
