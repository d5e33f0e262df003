"""The certificate life cycle end to end: real certbot, real nginx, a real ACME CA (pebble).

One flow, in order, sharing one module fixture (each test needs the state the one before left):
  1. bootstrap: nginx runs only the rendered nginx/http.conf; `certbot certonly` with the rendered
     certbot/cli.ini gets the first certificate through the HTTP-01 webroot that nginx serves;
  2. nginx switches to http.conf + https.conf and serves that certificate, chaining to pebble's root;
  3. a forced renewal runs the rendered deploy hook (the `renewed` marker); after a reload nginx
     serves the new certificate;
  4. the renewal timer's service, as rendered: its ExecStart (renew-certificates.sh) renews a
     certificate that is due and reloads nginx itself, which then serves the new certificate;
  5. a renewal run with nothing due changes nothing and leaves no marker; through the timer's
     service, nginx is left alone.

Test and host differ only in HostLayout: loopback ports, temporary directories, pebble's directory.
certbot gets the rendered cli.ini via --config. Test-only inputs: REQUESTS_CA_BUNDLE (the CA of
pebble's own HTTPS listener), --no-random-sleep-on-renew on `renew` (see run_certbot) and an empty
XDG_CONFIG_HOME. Debian's own /etc/letsencrypt/cli.ini (max-log-backups, preconfigured-renewal) is
read too: certbot always reads its default config files besides --config, and has no switch against it.
The host's scripts call `docker compose`; tests/harness/host_standins.py turns their certbot runs and
nginx commands into this test's certbot and nginx (the layout's container paths equal its host paths).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from gitea_stack.bundle import HostLayout, write_bundle
from gitea_stack.settings import parse_settings
from tests.harness.acme import Pebble
from tests.harness.bundles import BASE, render
from tests.harness.host_standins import (
    HostStandIns,
    layout_mount_problems,
    service_calls,
)
from tests.harness.nginx import NginxServer, free_port, supports_http2_directive
from tests.harness.tools import require_tool

DOMAIN = "git.example.com"
# The bundle's JSON access-log line for pebble's validation request, answered 200.
CHALLENGE_FETCH = re.compile(
    r'"method":"GET","uri":"/\.well-known/acme-challenge/[A-Za-z0-9_-]+","status":200,.*"user_agent":"[^"]*Pebble-VA')


@dataclass
class Stack:
    root: Path
    bundle_dir: Path
    layout: HostLayout
    pebble: Pebble
    nginx: NginxServer
    certbot: str
    env: dict[str, str]
    https_port: int
    standins: HostStandIns
    first_serial: int | None = None
    renewed_serial: int | None = None

    @property
    def cli_ini(self) -> Path:
        return self.bundle_dir / "certbot" / "cli.ini"

    @property
    def live(self) -> Path:
        return Path(self.layout.letsencrypt_dir) / "live" / DOMAIN

    @property
    def marker(self) -> Path:
        return Path(self.layout.letsencrypt_dir) / "renewed"

    @property
    def access_log(self) -> Path:
        return self.nginx.workdir / "access.log"

    def run_certbot(self, *args: str) -> subprocess.CompletedProcess:
        if args[0] == "renew":
            # Test-only: with stdin not a terminal (cron, timers, and this test) `certbot renew` first
            # sleeps a random 1-480 s to spread load on the CA; production keeps that delay.
            args = (*args, "--no-random-sleep-on-renew")
        return subprocess.run([self.certbot, *args, "--config", str(self.cli_ini)], capture_output=True,
                              text=True, env=self.env, timeout=60)

    def explain(self, result: subprocess.CompletedProcess) -> str:
        log = Path(self.layout.certbot_logs_dir) / "letsencrypt.log"
        return (f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
                f"certbot log tail:\n{log.read_text()[-4000:] if log.exists() else '(none)'}\n"
                f"pebble log tail:\n{self.pebble.read_log()[-3000:]}")

    def file_serial(self) -> int:
        return x509.load_pem_x509_certificate((self.live / "cert.pem").read_bytes()).serial_number

    def served_certificate(self) -> x509.Certificate:
        """What nginx presents on the HTTPS port for SNI git.example.com (no verification)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)

    def wait_for_served_serial(self, expected: int, timeout: float = 10.0) -> int:
        """Polls until nginx's (new) workers serve `expected`; returns the last serial seen."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            try:
                seen = self.served_certificate().serial_number
            except OSError:
                pass
            if seen == expected or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)

    def verified_handshake(self, root_pem: bytes) -> dict:
        """A TLS handshake trusting only `root_pem`, checking the name: fails unless nginx serves the full chain."""
        context = ssl.create_default_context(cadata=root_pem.decode())
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
                return tls.getpeercert()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    certbot = require_tool("certbot", "certbot")
    nginx_path = require_tool("nginx", "nginx")
    root = tmp_path_factory.mktemp("acme")
    http_port, https_port = free_port(), free_port()
    bundle_dir = root / "bundle"
    # The data volume is `root`: the renewal script finds certbot's marker below DATA_DIR/letsencrypt.
    layout = HostLayout(
        bundle_dir=str(bundle_dir),
        data_dir=str(root),
        http_listen=f"127.0.0.1:{http_port}",
        https_listen=f"127.0.0.1:{https_port}",
        gitea_upstream=f"127.0.0.1:{free_port()}",  # nothing listens: the test never goes past TLS
        letsencrypt_dir=str(root / "letsencrypt"),
        certbot_work_dir=str(root / "certbot-work"),
        certbot_logs_dir=str(root / "certbot-logs"),
        certbot_host_logs_dir=str(root / "certbot-logs"),
        acme_webroot=str(root / "acme-webroot"),
        nginx_http2_directive=supports_http2_directive(nginx_path),
        # Where Stack.access_log reads it (stdout in production).
        nginx_access_log=str(root / "nginx" / "access.log"),
    )
    (root / "acme-webroot").mkdir()
    (root / "pebble").mkdir()
    with Pebble(root / "pebble", http_port=http_port) as pebble:
        settings = parse_settings({**BASE, "domain": DOMAIN, "acmeServer": pebble.directory_url}, "prod")
        bundle = render(settings, layout)
        assert layout_mount_problems(bundle["docker-compose.yml"][0]) == []
        write_bundle(bundle, bundle_dir)
        nginx = NginxServer(root / "nginx", [bundle_dir / "nginx" / "http.conf"], [http_port])
        certbot_env = {"REQUESTS_CA_BUNDLE": str(pebble.ca_file),
                       # No per-user certbot config may leak in (certbot also reads ~/.config/letsencrypt/cli.ini).
                       "XDG_CONFIG_HOME": str(root / "xdg-config")}
        with nginx:
            yield Stack(root=root, bundle_dir=bundle_dir, layout=layout, pebble=pebble, nginx=nginx,
                        certbot=certbot, env={**os.environ, **certbot_env}, https_port=https_port,
                        standins=HostStandIns(root / "standins", nginx, certbot_env))


def test_bootstrap_config_serves_the_challenge_for_the_first_certificate(stack):
    checked = stack.nginx.check()
    assert checked.returncode == 0, checked.stderr
    assert not stack.live.exists()

    result = stack.run_certbot("certonly", "-d", DOMAIN)

    assert result.returncode == 0, stack.explain(result)
    assert (stack.live / "fullchain.pem").is_file()
    assert (stack.live / "privkey.pem").is_file()
    # Pebble fetched the token over plain HTTP from nginx running only the bootstrap http.conf.
    fetches = CHALLENGE_FETCH.findall(stack.access_log.read_text())
    assert fetches, f"no challenge fetch by pebble in nginx's access log:\n{stack.access_log.read_text()}"
    # certbot removed its token again: nothing is left in the webroot.
    assert not any(Path(stack.layout.acme_webroot).rglob("*"))
    # The rendered cli.ini asked for an ECDSA P-256 key.
    certificate = x509.load_pem_x509_certificate((stack.live / "cert.pem").read_bytes())
    assert certificate.public_key().curve.name == "secp256r1"
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
    stack.first_serial = certificate.serial_number

    # certbot runs --deploy-hook after certonly too, not only on renewal: for a newly obtained
    # certificate `certonly` calls hooks.deploy_hook (certbot/_internal/main.py, _get_and_save_cert).
    # So the bootstrap leaves the marker; the forced renewal below must create it afresh.
    assert stack.marker.exists(), "certbot 2.1 runs the deploy hook on certonly for a new certificate"
    stack.marker.unlink()


def test_full_config_serves_the_issued_certificate_chaining_to_pebbles_root(stack):
    assert stack.first_serial is not None, "needs the certificate of the bootstrap test"
    stack.nginx.site_configs = [stack.bundle_dir / "nginx" / "http.conf", stack.bundle_dir / "nginx" / "https.conf"]
    stack.nginx.write_config()
    checked = stack.nginx.check()
    assert checked.returncode == 0, checked.stderr
    stack.nginx.reload()

    assert stack.file_serial() == stack.first_serial
    assert stack.wait_for_served_serial(stack.first_serial) == stack.first_serial

    peer = stack.verified_handshake(stack.pebble.root_pem())
    assert ("DNS", DOMAIN) in peer["subjectAltName"]
    # fullchain.pem = leaf + pebble's issuing intermediate.
    chain = x509.load_pem_x509_certificates((stack.live / "fullchain.pem").read_bytes())
    assert chain[1] == x509.load_pem_x509_certificate(stack.pebble.intermediate_pem())


def test_forced_renewal_runs_the_deploy_hook_and_a_reload_serves_the_new_certificate(stack):
    assert stack.first_serial is not None, "needs the certificate of the bootstrap test"
    assert not stack.marker.exists()
    previous_serial = stack.first_serial
    # With PEBBLE_AUTHZREUSE=0 pebble makes a new authorization for ~99% of orders (see the harness);
    # one that reused an authorization passed no HTTP-01, so the renewal is asked for again.
    for _ in range(3):
        fetches_before = len(CHALLENGE_FETCH.findall(stack.access_log.read_text()))
        authorizations_before = stack.pebble.authorizations_created()

        result = stack.run_certbot("renew", "--force-renewal")

        assert result.returncode == 0, stack.explain(result)
        assert stack.marker.exists(), f"the deploy hook did not leave {stack.marker}\n{stack.explain(result)}"
        renewed_serial = stack.file_serial()
        assert renewed_serial != previous_serial
        if stack.pebble.authorizations_created() > authorizations_before:
            break
        stack.marker.unlink()
        previous_serial = renewed_serial
    else:
        pytest.fail("pebble reused an authorization for three renewals in a row (about 1 in 10^6)")
    # The renewal passed HTTP-01 again through nginx running the full configuration, as every
    # renewal on the host does.
    assert len(CHALLENGE_FETCH.findall(stack.access_log.read_text())) > fetches_before, \
        f"pebble validated the renewal but nginx logged no challenge fetch:\n{stack.access_log.read_text()}"

    # nginx keeps the old certificate in memory until it reloads.
    assert stack.served_certificate().serial_number == stack.first_serial
    stack.nginx.reload()  # renew-certificates.sh does this on the marker: see the next test
    assert stack.wait_for_served_serial(renewed_serial) == renewed_serial
    stack.verified_handshake(stack.pebble.root_pem())
    stack.renewed_serial = renewed_serial
    stack.marker.unlink()  # the renewal script consumes the marker


def renewal_service_argv(stack: Stack) -> list[str]:
    """What systemd runs when the renewal timer fires: the rendered service's ExecStart."""
    systemd = stack.bundle_dir / "systemd"
    timer = (systemd / "gitea-stack-certbot-renew.timer").read_text()
    assert "OnCalendar=" in timer and "Unit=" not in timer  # the timer starts the service of its own name
    unit = (systemd / "gitea-stack-certbot-renew.service").read_text()
    exec_starts = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_starts) == 1, exec_starts
    argv = shlex.split(exec_starts[0])
    # An absolute path with no systemd prefix (such as `-`, which would ignore a failure).
    assert argv[0].startswith("/") and Path(argv[0]).is_file(), argv
    return argv


def run_renewal_service(stack: Stack) -> subprocess.CompletedProcess:
    return subprocess.run(renewal_service_argv(stack), capture_output=True, text=True, timeout=120, check=False,
                          env=stack.standins.environment())


def make_due(stack: Stack, certificate: x509.Certificate) -> str:
    """Makes certbot consider the certificate due (as time would); returns the renewal config as it was."""
    renewal = Path(stack.layout.letsencrypt_dir) / "renewal" / f"{DOMAIN}.conf"
    original = renewal.read_text()
    assert not re.search(r"^renew_before_expiry", original, re.MULTILINE), original
    days_left = (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days + 1
    renewal.write_text(f"renew_before_expiry = {days_left} days\n" + original)
    return original


def test_the_timers_service_renews_a_due_certificate_and_its_script_reloads_nginx(stack):
    assert stack.renewed_serial is not None, "needs the certificate of the forced renewal test"
    assert stack.served_certificate().serial_number == stack.renewed_serial
    renewal = Path(stack.layout.letsencrypt_dir) / "renewal" / f"{DOMAIN}.conf"
    original = make_due(stack, stack.served_certificate())
    calls_before = len(stack.standins.docker_calls())
    try:
        result = run_renewal_service(stack)
    finally:
        renewal.write_text(original)

    assert result.returncode == 0, stack.explain(result)
    assert "certificate renewed; nginx reloaded" in result.stderr, stack.explain(result)
    renewed_serial = stack.file_serial()
    assert renewed_serial != stack.renewed_serial
    # No reload by this test: the script's own made nginx serve the new certificate.
    assert stack.wait_for_served_serial(renewed_serial) == renewed_serial
    stack.verified_handshake(stack.pebble.root_pem())
    calls = stack.standins.docker_calls()[calls_before:]
    assert service_calls(calls, "certbot") == [["certbot", "renew", "--no-random-sleep-on-renew"]]
    assert service_calls(calls, "nginx") == [["nginx", "nginx", "-t"], ["nginx", "nginx", "-s", "reload"]]
    assert not stack.marker.exists(), "the script consumes certbot's marker"
    stack.renewed_serial = renewed_serial


def test_renewal_with_nothing_due_changes_nothing_and_leaves_no_marker(stack):
    assert stack.renewed_serial is not None, "needs the certificate of the forced renewal test"
    fullchain_before = (stack.live / "fullchain.pem").read_bytes()
    archive_before = sorted(p.name for p in (Path(stack.layout.letsencrypt_dir) / "archive" / DOMAIN).iterdir())

    result = stack.run_certbot("renew")

    assert result.returncode == 0, stack.explain(result)
    assert "not yet due for renewal" in result.stdout + result.stderr, stack.explain(result)
    assert not stack.marker.exists(), "the deploy hook ran although nothing was renewed"
    assert (stack.live / "fullchain.pem").read_bytes() == fullchain_before
    assert sorted(p.name for p in (Path(stack.layout.letsencrypt_dir) / "archive" / DOMAIN).iterdir()) == archive_before
    assert stack.file_serial() == stack.renewed_serial
    assert stack.served_certificate().serial_number == stack.renewed_serial


def test_the_timers_service_with_nothing_due_leaves_nginx_alone(stack):
    assert stack.renewed_serial is not None, "needs the certificate of the renewals before"
    reloads_before = (stack.nginx.workdir / "error.log").read_text().count("reconfiguring")
    calls_before = len(stack.standins.docker_calls())

    result = run_renewal_service(stack)

    assert result.returncode == 0, stack.explain(result)
    assert "no certificate was due for renewal" in result.stderr, stack.explain(result)
    calls = stack.standins.docker_calls()[calls_before:]
    assert service_calls(calls, "certbot") == [["certbot", "renew", "--no-random-sleep-on-renew"]]
    assert service_calls(calls, "nginx") == []
    assert (stack.nginx.workdir / "error.log").read_text().count("reconfiguring") == reloads_before
    assert stack.file_serial() == stack.served_certificate().serial_number == stack.renewed_serial
