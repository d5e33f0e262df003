"""`pulumi up`'s own remote steps, replayed over real SSH against a testbed host.

The program runs under mocks with a test stack; its remote steps (wait, install, copy, converge)
run unchanged on a loopback testbed: sshd and dockerd in their own network and mount namespaces,
moto for Secrets Manager, pebble for ACME, images built locally. Then: does the host converge,
does a second run change nothing, does an nginx change touch nginx only, does it heal, and does
bad input fail clearly while leaving what runs alone?
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

import gitea_stack.bundle
from gitea_stack.bundle import PRODUCTION
from tests.harness.pulumi_mocks import run_program, stack_file_config
from tests.harness.replay import SshTarget, remote_steps, replay, stored_secrets
from tests.harness.acme import listener_certificate
from tests.harness.smtp import SesLikeSmtp
from tests.harness.testbed import Testbed, persistent_listener_ca
from tests.harness.testbed_images import build_images

DOMAIN = "git.example.com"
CACHE_DIR = Path("/var/cache/gitea-stack-testbed")
SERVICES = ("postgres", "gitea", "nginx", "docker-socket-proxy", "diun", "prometheus", "alertmanager", "node-exporter",
            "postgres-exporter", "blackbox-exporter", "cadvisor", "grafana", "loki", "alloy")
SMTP_PORT = 2525
COMPOSE = "docker compose --project-name gitea-stack --project-directory /opt/gitea-stack"


@pytest.fixture(scope="module")
def testbed():
    with Testbed() as bed:
        yield bed


@pytest.fixture(scope="module")
def images(testbed):
    return build_images(testbed.docker_host, CACHE_DIR, testbed.acme_ca_pem)


@pytest.fixture(scope="module")
def target(testbed) -> SshTarget:
    return SshTarget(testbed.ssh_host, testbed.ssh_port, testbed.ssh_user, Path(testbed.private_key_path),
                     Path(testbed.known_hosts_path))


def stack_config(testbed, images, **changes) -> dict[str, str]:
    config = {**stack_file_config(), "gitea-stack:domain": DOMAIN, "gitea-stack:hostedZone": "example.com",
              "gitea-stack:acmeServer": testbed.directory_url, "gitea-stack:awsEndpointUrl": testbed.moto_url,
              "gitea-stack:images": json.dumps(images)}
    config.update({f"gitea-stack:{key}": value for key, value in changes.items()})
    return config


def seeded_secrets(run, smtp_endpoint: tuple[str, int] | None = None) -> dict[str, str]:
    """The stack's secrets as the program stores them; with `smtp_endpoint`, the SMTP credentials
    name that server instead of SES's."""
    secrets = stored_secrets(run)
    for name, value in secrets.items():
        if smtp_endpoint and "/smtp-credentials-" in name:
            secrets[name] = json.dumps({**json.loads(value), "host": smtp_endpoint[0], "port": smtp_endpoint[1]})
    return secrets


def store_secrets(testbed, run, smtp_endpoint: tuple[str, int] | None = None) -> None:
    """Puts the stack's secrets in moto's Secrets Manager, as `pulumi up` does (seeded_secrets)."""
    secrets_manager = testbed.boto3_client("secretsmanager")
    for name, value in seeded_secrets(run, smtp_endpoint).items():
        secrets_manager.create_secret(Name=name, SecretString=value)


def smtp_endpoint(testbed) -> tuple[str, int]:
    """Where this module's SES-like SMTP server listens: this machine's end of the testbed's link."""
    return testbed.host_address, SMTP_PORT


def smtp_credentials(run) -> dict:
    return json.loads(next(value for name, value in stored_secrets(run).items() if "/smtp-credentials-" in name))


@pytest.fixture(scope="module")
def smtp(testbed, stack_run, tmp_path_factory):
    """SES's SMTP interface as the forge's containers reach it: STARTTLS with a certificate of the CA
    the testbed's images trust (pebble's listener CA), then AUTH with the stack's SMTP user."""
    ca, ca_key = persistent_listener_ca(testbed.cache_dir / "pebble-ca")
    cert_file, key_file = listener_certificate(ca, ca_key, [testbed.host_address], [],
                                               tmp_path_factory.mktemp("smtp"), days=1)
    credentials = smtp_credentials(stack_run)
    with SesLikeSmtp(*smtp_endpoint(testbed), cert_file, key_file, credentials["username"],
                     credentials["password"]) as server:
        yield server


def create_backup_bucket(testbed) -> dict[str, str]:
    """The bucket the program made, in moto (which has only what the test creates), as the host's
    stack-facts.env names it; returns those facts."""
    facts = dict(line.split("=", 1) for line in testbed.path("/opt/gitea-stack/stack-facts.env").read_text()
                 .splitlines() if "=" in line and not line.startswith("#"))
    testbed.boto3_client("s3").create_bucket(
        Bucket=facts["BACKUP_BUCKET"], CreateBucketConfiguration={"LocationConstraint": facts["AWS_REGION"]})
    return facts


@pytest.fixture(scope="module")
def stack_run(testbed, images):
    run = run_program(stack_config(testbed, images), stack="e2e")
    store_secrets(testbed, run, smtp_endpoint(testbed))
    return run


def check_replay(run, target, only=None):
    results = replay(run, target, only=only)
    for step, result in results:
        assert result.returncode == 0, (
            f"{step.name} failed ({result.returncode}):\n{result.stdout.decode()[-3000:]}\n{result.stderr.decode()[-3000:]}")
    return results


@pytest.fixture(scope="module")
def converged(stack_run, target, smtp):
    started = time.monotonic()
    results = check_replay(stack_run, target)
    print(f"\nfirst replay: {time.monotonic() - started:.0f}s for {len(results)} steps")
    assert [step.name for step, _ in results] == [step.name for step in remote_steps(stack_run)]
    return results


def containers(testbed) -> dict[str, tuple[str, str]]:
    """service -> (container id, started at) of the forge's running containers."""
    listed = testbed.run("docker ps --filter label=com.docker.compose.project=gitea-stack "
                         "--format '{{.ID}} {{.Label \"com.docker.compose.service\"}}'").stdout
    found = {}
    for line in listed.splitlines():
        container_id, service = line.split()
        started = testbed.run(f"docker inspect --format '{{{{.State.StartedAt}}}}' {container_id}").stdout
        found[service] = (container_id, started.strip())
    return found


def https_get(testbed, path: str) -> tuple[int, bytes, dict]:
    context = ssl.create_default_context(cadata=testbed.pebble_root_pem())
    with socket.create_connection((testbed.address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    return status, body, headers


def test_first_replay_serves_gitea_over_https_with_a_pebble_certificate(testbed, converged):
    status, body, headers = https_get(testbed, "/api/healthz")
    assert status == 200 and b"pass" in body
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    status, body, _ = https_get(testbed, "/")
    assert status == 200 and f"https://{DOMAIN}/".encode() in body


def test_every_service_runs_healthy(testbed, converged):
    running = containers(testbed)
    assert set(SERVICES) <= set(running)
    for service in ("postgres", "gitea", "nginx"):
        health = testbed.run(f"docker inspect --format '{{{{.State.Health.Status}}}}' {running[service][0]}").stdout
        assert health.strip() == "healthy", service


def test_the_admin_user_exists_once(testbed, converged):
    gitea = containers(testbed)["gitea"][0]
    listed = testbed.run(f"docker exec {gitea} gitea admin user list --admin").stdout
    assert [line.split()[1] for line in listed.strip().splitlines()[1:]] == ["gitea-admin"]


def test_secret_files_are_private_and_hold_what_secrets_manager_holds(testbed, stack_run, converged):
    stored = stored_secrets(stack_run)
    by_key = {name.split("/")[-1].rsplit("-", 1)[0]: value for name, value in stored.items()}
    for service, key in (("postgres", "postgres-password"), ("gitea", "postgres-password"),
                         ("gitea", "gitea-secret-key"), ("host", "restic-password")):
        path = testbed.path(f"/opt/gitea-stack/secrets/{service}/{key}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.read_text() == by_key[key]
    smtp = json.loads(by_key["smtp-credentials"])
    assert testbed.path("/opt/gitea-stack/secrets/gitea/smtp-password").read_text() == smtp["password"]


def test_the_renewal_timer_is_installed_and_enabled(testbed, converged):
    assert testbed.path("/etc/systemd/system/gitea-stack-certbot-renew.timer").is_file()
    assert testbed.path("/etc/systemd/system/gitea-stack-certbot-renew.service").is_file()
    assert "enable --now gitea-stack-certbot-renew.timer" in testbed.systemctl_log()


def test_a_second_replay_recreates_nothing(testbed, stack_run, target, converged):
    before = containers(testbed)
    check_replay(stack_run, target)
    assert containers(testbed) == before


def test_an_nginx_change_reloads_nginx_and_leaves_the_rest_running(testbed, images, target, converged, monkeypatch):
    original = gitea_stack.bundle.render_template
    monkeypatch.setattr(gitea_stack.bundle, "render_template", lambda template, **context: (
        original(template, **context) + ("# e2e nginx change\n" if template.startswith("nginx/") else "")))
    changed_run = run_program(stack_config(testbed, images), stack="e2e")
    before = containers(testbed)
    check_replay(changed_run, target, only={"provision-copy-bundle", "provision-converge"})
    after = containers(testbed)
    assert after == before  # nginx reloaded in place, gitea and postgres untouched
    served = testbed.path("/opt/gitea-stack/runtime/nginx/http.conf").read_text()
    assert served.endswith("# e2e nginx change\n")
    logs = testbed.run(f"docker logs {after['nginx'][0]} 2>&1").stdout
    assert "signal process started" in logs or "reconfiguring" in logs
    # Put the original bundle back for the tests that follow.
    monkeypatch.undo()
    check_replay(run_program(stack_config(testbed, images), stack="e2e"), target,
                 only={"provision-copy-bundle", "provision-converge"})


def test_a_killed_gitea_comes_back_on_the_next_converge(testbed, stack_run, target, converged):
    gitea_id = containers(testbed)["gitea"][0]
    testbed.run(f"docker kill {gitea_id}")
    check_replay(stack_run, target, only={"provision-converge"})
    status, _, _ = https_get(testbed, "/api/healthz")
    assert status == 200


def secret_name(run, key: str) -> str:
    return next(n for n in stored_secrets(run) if f"/{key}-" in n)


@contextlib.contextmanager
def rotated(testbed, run, key: str, value: str):
    """The secret `key` holds `value` in Secrets Manager until the block ends; then the original again."""
    client = testbed.boto3_client("secretsmanager")
    name = secret_name(run, key)
    original = client.get_secret_value(SecretId=name)["SecretString"]
    client.put_secret_value(SecretId=name, SecretString=value)
    try:
        yield original
    finally:
        client.put_secret_value(SecretId=name, SecretString=original)


def unchanged(before, after, services) -> bool:
    return {s: after[s] for s in services} == {s: before[s] for s in services}


def test_a_rotated_secret_recreates_only_the_services_that_use_it(testbed, stack_run, target, converged):
    before = containers(testbed)
    try:
        with rotated(testbed, stack_run, "metrics-token", "RotatedMetricsToken0123456789abcdefABCD"):
            check_replay(stack_run, target, only={"provision-converge"})
            after = containers(testbed)
            assert after["gitea"][0] != before["gitea"][0]  # the metrics token is Gitea's alone
            assert unchanged(before, after, ("postgres", "nginx", "docker-socket-proxy", "diun"))
            assert testbed.path("/opt/gitea-stack/secrets/gitea/metrics-token").read_text() == \
                "RotatedMetricsToken0123456789abcdefABCD"
            assert https_get(testbed, "/api/healthz")[0] == 200  # nginx reaches the new gitea
    finally:
        check_replay(stack_run, target, only={"provision-converge"})


def psql(testbed, sql: str) -> str:
    """SQL as the cluster's superuser, through the postgres container's local socket."""
    postgres = containers(testbed)["postgres"][0]
    return testbed.run(f"docker exec -i {postgres} psql --no-psqlrc --tuples-only --no-align --username=postgres "
                       "--dbname=gitea", input=sql).stdout.strip()


def gitea_logs_in(testbed, password: str) -> bool:
    """Whether the gitea role accepts `password` over TCP, as Gitea connects."""
    postgres = containers(testbed)["postgres"][0]
    return testbed.run(f"docker exec -i -e PGPASSWORD {postgres} psql --no-psqlrc --host=127.0.0.1 "
                       "--username=gitea --dbname=gitea --command='SELECT 1'",
                       check=False, env={"PGPASSWORD": password}).returncode == 0


def test_gitea_owns_its_database_without_being_a_superuser(testbed, stack_run, converged):
    assert psql(testbed, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'gitea';") == \
        "f|f|f"
    assert psql(testbed, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'gitea';") == "gitea"
    # The superuser has no password: it logs in through the container's socket only.
    assert psql(testbed, "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres';") == "t"
    password = stored_secrets(stack_run)[secret_name(stack_run, "postgres-password")]
    assert gitea_logs_in(testbed, password) and not gitea_logs_in(testbed, password + "x")


def test_a_rotated_database_password_is_applied_before_gitea_uses_it(testbed, stack_run, target, converged):
    new = "RotatedDatabasePassword0123456789abcdefXY"
    before = containers(testbed)
    try:
        with rotated(testbed, stack_run, "postgres-password", new) as old:
            check_replay(stack_run, target, only={"provision-converge"})
            after = containers(testbed)
            assert after["gitea"][0] != before["gitea"][0] and after["postgres"] == before["postgres"]
            assert gitea_logs_in(testbed, new) and not gitea_logs_in(testbed, old)
            assert https_get(testbed, "/api/healthz")[0] == 200
    finally:
        check_replay(stack_run, target, only={"provision-converge"})
    assert gitea_logs_in(testbed, old)


def admin_status(testbed, password: str) -> str:
    """HTTP status of Gitea's API for the administrator with `password` (curl config on stdin)."""
    gitea = containers(testbed)["gitea"][0]
    config = (f'user = "gitea-admin:{password}"\nurl = "http://localhost:3000/api/v1/user"\n'
              'silent\noutput = "/dev/null"\nwrite-out = "%{http_code}"\n')
    return testbed.run(f"docker exec -i {gitea} curl --config -", input=config).stdout.strip()


def test_a_rotated_admin_password_is_applied_to_the_administrator(testbed, stack_run, target, converged):
    new = "RotatedAdminPassword0123456789abcdefXYZ"
    try:
        with rotated(testbed, stack_run, "gitea-admin-password", new) as old:
            check_replay(stack_run, target, only={"provision-converge"})
            assert (admin_status(testbed, new), admin_status(testbed, old)) == ("200", "401")
            assert testbed.path("/opt/gitea-stack/secrets/host/gitea-admin-password").read_text() == new
    finally:
        check_replay(stack_run, target, only={"provision-converge"})
    assert admin_status(testbed, old) == "200"


def test_an_admin_password_changed_in_gitea_is_kept_and_a_rotation_over_it_refused(testbed, stack_run, target, converged):
    gitea = containers(testbed)["gitea"][0]
    original = stored_secrets(stack_run)[secret_name(stack_run, "gitea-admin-password")]
    by_hand = "ChangedInTheWebInterface0123456789"
    testbed.run(f"docker exec {gitea} gitea admin user change-password --username gitea-admin "
                f"--password {by_hand} --must-change-password=false")
    try:
        # Without a new value the account is left alone, even on a new instance (no secret files yet).
        testbed.path("/opt/gitea-stack/secrets/host/gitea-admin-password").unlink()
        check_replay(stack_run, target, only={"provision-converge"})
        assert admin_status(testbed, by_hand) == "200"
        before = containers(testbed)
        with rotated(testbed, stack_run, "gitea-admin-password", "RotatedAgainPassword0123456789abcdefXY"):
            results = replay(stack_run, target, only={"provision-converge"})
            assert_failed_cleanly(results, "Gitea accepts neither the new nor the previous value", before, testbed)
            assert testbed.path("/opt/gitea-stack/secrets/host/gitea-admin-password").read_text() == original
            assert admin_status(testbed, by_hand) == "200"
    finally:
        testbed.run(f"docker exec {gitea} gitea admin user change-password --username gitea-admin "
                    f"--password {original} --must-change-password=false")
        check_replay(stack_run, target, only={"provision-converge"})


def test_a_changed_gitea_secret_key_is_refused_and_changes_nothing(testbed, stack_run, target, converged):
    installed = testbed.path("/opt/gitea-stack/secrets/gitea/gitea-secret-key")
    key = installed.read_text()
    before = containers(testbed)
    with rotated(testbed, stack_run, "gitea-secret-key", "AnotherSecretKey" * 4):
        results = replay(stack_run, target, only={"provision-converge"})
        assert_failed_cleanly(results, "is not the key this forge's data was encrypted with", before, testbed)
        assert "AWSPREVIOUS" in results[-1][1].stderr.decode()
        assert installed.read_text() == key
    check_replay(stack_run, target, only={"provision-converge"})


def assert_failed_cleanly(results, message: str, before, testbed):
    step, result = results[-1]
    assert step.name == "provision-converge" and result.returncode != 0
    assert message in result.stderr.decode() + result.stdout.decode()
    assert containers(testbed) == before  # running services were left as they were
    assert not list(testbed.path("/opt/gitea-stack/secrets").glob(".staging.*"))  # no half-fetched secrets


def test_a_missing_secret_fails_clearly_and_changes_nothing(testbed, stack_run, target, converged):
    client = testbed.boto3_client("secretsmanager")
    name = next(n for n in stored_secrets(stack_run) if "/metrics-token-" in n)
    value = client.get_secret_value(SecretId=name)["SecretString"]
    client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    before = containers(testbed)
    try:
        results = replay(stack_run, target, only={"provision-converge"})
        assert_failed_cleanly(results, "metrics-token", before, testbed)
        assert_failed_cleanly(results, "nothing was changed", before, testbed)
    finally:
        client.create_secret(Name=name, SecretString=value)


def test_an_unreachable_aws_endpoint_fails_clearly_and_changes_nothing(testbed, images, target, converged):
    unreachable = run_program(stack_config(testbed, images, awsEndpointUrl=f"http://{testbed.address}:9"),
                              stack="e2e")
    before = containers(testbed)
    results = replay(unreachable, target, only={"provision-copy-bundle", "provision-converge"})
    assert_failed_cleanly(results, "could not fetch the stack's secrets; nothing was changed", before, testbed)
    check_replay(run_program(stack_config(testbed, images), stack="e2e"), target,
                 only={"provision-copy-bundle", "provision-converge"})


def test_a_full_data_volume_fails_clearly_and_changes_nothing(testbed, stack_run, target, converged):
    free_mib = int(testbed.run("df --output=avail -m /srv/gitea-stack | tail -n 1").stdout.strip())
    testbed.run(f"fallocate -l {max(free_mib - 200, 1)}M /srv/gitea-stack/filler")
    before = containers(testbed)
    try:
        results = replay(stack_run, target, only={"provision-converge"})
        assert_failed_cleanly(results, "MiB free on /srv/gitea-stack", before, testbed)
    finally:
        testbed.run("rm -f /srv/gitea-stack/filler")


def test_keys_stay_out_of_app_ini_and_app_ini_is_private(testbed, stack_run, converged):
    config_dir = testbed.path("/srv/gitea-stack/gitea/config")
    app_ini = config_dir / "app.ini"
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700 and config_dir.stat().st_uid == 1000
    assert stat.S_IMODE(app_ini.stat().st_mode) == 0o600
    text = app_ini.read_text()
    stored = stored_secrets(stack_run)
    for key in ("gitea-secret-key", "gitea-internal-token"):
        assert stored[secret_name(stack_run, key)] not in text, key
    assert "SECRET_KEY_URI = file:///run/gitea-stack/gitea-secret-key" in text


def test_gitea_sees_the_clients_address_not_nginxs(testbed, converged):
    assert https_get(testbed, "/api/v1/version?client-address-probe")[0] == 200
    gitea = containers(testbed)["gitea"][0]
    (line,) = [line for line in testbed.run(f"docker logs {gitea} 2>&1").stdout.splitlines()
               if "client-address-probe" in line]
    client, peer = re.search(r"client=(\S+) peer=(\S+)", line).groups()
    assert client == testbed.host_address  # this machine, where the request came from
    assert ipaddress.ip_address(peer.removeprefix("::ffff:")) in ipaddress.ip_network(PRODUCTION.frontend_subnet)


def frontend_address(testbed, container: str) -> str:
    return testbed.run(f"docker inspect --format "
                       f"'{{{{(index .NetworkSettings.Networks \"gitea-stack_frontend\").IPAddress}}}}' {container}"
                       ).stdout.strip()


def test_nginx_finds_a_recreated_gitea_at_its_new_address(testbed, stack_run, target, images, converged):
    before = containers(testbed)
    old_address = frontend_address(testbed, before["gitea"][0])
    # Recreated as an image update recreates it (not by deploy.sh, which also reloads nginx), with its
    # old address taken, so the new container must get another one.
    testbed.run(f"{COMPOSE} rm --stop --force gitea")
    testbed.run(f"docker run --detach --name address-taker --network gitea-stack_frontend --ip {old_address} "
                f"--entrypoint sleep {images['nginx']} infinity")
    try:
        testbed.run(f"{COMPOSE} up --detach --no-deps --wait gitea", timeout=180)
        new_address = frontend_address(testbed, containers(testbed)["gitea"][0])
        assert new_address != old_address
        deadline = time.monotonic() + 30  # nginx may use its cached answer for up to 10 s
        while (status := https_get(testbed, "/api/healthz")[0]) != 200 and time.monotonic() < deadline:
            time.sleep(1)
        assert status == 200
        assert containers(testbed)["nginx"] == before["nginx"]  # no restart, no reload was needed
    finally:
        testbed.run("docker rm --force address-taker")
        check_replay(stack_run, target, only={"provision-converge"})


def served_serial(testbed) -> int:
    context = ssl.create_default_context(cadata=testbed.pebble_root_pem())
    with socket.create_connection((testbed.address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_switching_acme_servers_reissues_the_certificate(testbed, images, target, converged):
    renewal = testbed.path(f"/srv/gitea-stack/letsencrypt/renewal/{DOMAIN}.conf")
    original = served_serial(testbed)
    # Another directory URL of the same test CA stands in for Let's Encrypt staging -> production.
    other_server = f"{testbed.directory_url}?production"
    switched = run_program(stack_config(testbed, images, acmeServer=other_server), stack="e2e")
    try:
        check_replay(switched, target, only={"provision-copy-bundle", "provision-converge"})
        assert f"server = {other_server}\n" in renewal.read_text()
        assert served_serial(testbed) != original
        reissued = served_serial(testbed)
        check_replay(switched, target, only={"provision-converge"})
        assert served_serial(testbed) == reissued  # the same server again: nothing is requested
    finally:
        check_replay(run_program(stack_config(testbed, images), stack="e2e"), target,
                     only={"provision-copy-bundle", "provision-converge"})
    assert f"server = {testbed.directory_url}\n" in renewal.read_text()


def test_the_database_is_on_the_data_volume_where_the_image_keeps_it(testbed, converged):
    postgres_dir = testbed.path("/srv/gitea-stack/postgres")
    assert stat.S_IMODE(postgres_dir.stat().st_mode) == 0o755
    # A 17 image: its PGDATA (and VOLUME) /var/lib/postgresql/data is the data volume's postgres/data,
    # so no anonymous volume holds the database.
    pgdata = testbed.path("/srv/gitea-stack/postgres/data")
    assert (pgdata / "PG_VERSION").read_text().strip() == "17"
    assert (stat.S_IMODE(pgdata.stat().st_mode), pgdata.stat().st_uid) == (0o700, 999)
    postgres_id = containers(testbed)["postgres"][0]
    mounts = json.loads(testbed.run(f"docker inspect --format '{{{{json .Mounts}}}}' {postgres_id}").stdout)
    assert [(mount["Type"], mount["Destination"]) for mount in mounts
            if mount["Destination"].startswith("/var/lib/postgresql")] == [("bind", "/var/lib/postgresql/data")]


def test_the_converge_installs_docker_s_mount_requirement_where_systemd_reads_it(testbed, stack_run, converged):
    # What the drop-in means is checked by systemd-analyze in the host tier; here, that deploy.sh puts
    # the bundle's file in docker.service's drop-in directory and has systemd read it again.
    drop_in = testbed.path("/etc/systemd/system/docker.service.d/10-gitea-stack.conf")
    bundled = testbed.path("/opt/gitea-stack/systemd/docker.service.d/10-gitea-stack.conf")
    assert drop_in.read_text() == bundled.read_text() and "RequiresMountsFor=/srv/gitea-stack\n" in bundled.read_text()
    calls = testbed.systemctl_calls()
    assert ["daemon-reload"] in calls


def proxy_status(testbed, method: str, path: str) -> str:
    diun = containers(testbed)["diun"][0]
    return testbed.run(f"docker exec {diun} curl --silent --output /dev/null --write-out '%{{http_code}}' "
                       f"--request {method} 'http://docker-socket-proxy:2375{path}'").stdout


def test_diun_watches_through_the_socket_proxy_and_certbot_through_its_file(testbed, images, converged):
    # The real Diun lists the running containers at every scheduled check, the stand-in once when it
    # starts: restarted now, it sees them all, whatever order compose started them in.
    diun = containers(testbed)["diun"][0]
    since = testbed.run("date -u +%Y-%m-%dT%H:%M:%SZ").stdout.strip()
    testbed.run(f"docker restart {diun}")
    deadline = time.monotonic() + 30
    while "Cron initialized" not in (logs := testbed.run(f"docker logs --since {since} {diun} 2>&1").stdout) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    running = containers(testbed)
    assert "containers through tcp://docker-socket-proxy:2375" in logs
    assert f"Watching {images['gitea']} " in logs and f"Watching {images['docker-socket-proxy']} " in logs
    assert f"Watching {images['certbot']} (file provider, update_policy=auto)" in logs
    mounts = testbed.run(f"docker inspect --format '{{{{json .Mounts}}}}' {running['diun'][0]}").stdout
    assert "docker.sock" not in mounts
    assert proxy_status(testbed, "GET", "/containers/json") == "200"
    assert proxy_status(testbed, "GET", "/info") == "200"  # cAdvisor's, when it registers
    for method, path in (("POST", "/containers/create"), ("POST", f"/containers/{running['gitea'][0]}/stop"),
                         ("GET", f"/containers/{running['gitea'][0]}/archive?path=/run/gitea-stack"),
                         ("GET", "/events")):
        assert proxy_status(testbed, method, path) == "403", (method, path)
    assert containers(testbed) == running  # nothing was created, stopped or started through the proxy


def test_the_backup_timer_s_service_backs_the_running_forge_up_into_the_bucket(testbed, stack_run, converged):
    # The bucket the program made, then the service's own command, as systemd runs it: the real
    # postgres container dumps, restic writes to S3.
    facts = create_backup_bucket(testbed)
    unit = testbed.path("/etc/systemd/system/gitea-stack-backup.service").read_text()
    [exec_start] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert ["enable", "--now", "gitea-stack-backup.timer"] in testbed.systemctl_calls()
    result = testbed.run(exec_start, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(testbed.boto3_client("s3").get_object(
        Bucket=facts["BACKUP_BUCKET"], Key="status/backup.json")["Body"].read())
    assert status["state"] == "ok" and status["bytes_added"] > 0
    assert json.loads(testbed.path("/srv/gitea-stack/state/backup-status.json").read_text()) == status
    # The database snapshot holds a dump the forge's own PostgreSQL reads, with Gitea's tables in it.
    postgres = containers(testbed)["postgres"][0]
    restic = (f"RESTIC_REPOSITORY={status['repository']} RESTIC_PASSWORD_FILE=/opt/gitea-stack/secrets/host/restic-password "
              f"restic -o s3.region={facts['AWS_REGION']} --no-cache")
    listing = testbed.run(f"{restic} dump {status['snapshots']['database']} /postgres/gitea.dump "
                          f"| docker exec -i {postgres} pg_restore --list")
    assert "TABLE public " in listing.stdout
    files = testbed.run(f"{restic} ls {status['snapshots']['files']}").stdout
    assert "/srv/gitea-stack/gitea/config/app.ini" in files and "/opt/gitea-stack/secrets/gitea/gitea-secret-key" in files


# --- the observability plane ----------------------------------------------------------------------

def prometheus_api(testbed, path: str) -> dict:
    """Prometheus' HTTP API, asked from inside its container (it publishes no port)."""
    answer = testbed.run(f"docker exec gitea-stack-prometheus-1 wget --quiet --output-document=- "
                         f"'http://127.0.0.1:9090/api/v1/{path}'").stdout
    return json.loads(answer)["data"]


def scraped_targets(testbed, timeout: float = 180) -> dict[str, dict]:
    """job -> target, once every target has been scraped (the first scrape comes within its interval)."""
    deadline = time.monotonic() + timeout
    while True:
        targets = prometheus_api(testbed, "targets")["activeTargets"]
        if (targets and all(t["health"] != "unknown" for t in targets)) or time.monotonic() > deadline:
            return {target["labels"]["job"]: target for target in targets}
        time.sleep(3)


def test_the_plane_comes_up_and_every_target_is_up(testbed, converged):
    targets = scraped_targets(testbed)
    assert set(targets) == {"prometheus", "alertmanager", "node", "postgres", "cadvisor", "gitea", "alloy", "loki",
                            "probe-https", "probe-git-ssh"}
    down = {job: target["lastError"] for job, target in targets.items() if target["health"] != "up"}
    assert not down, down
    # Through the real exporters: PostgreSQL as the monitoring role, git SSH through the published port.
    found = {result["metric"]["job"]: result["value"][1]
             for result in prometheus_api(testbed, "query?query=pg_up%20or%20probe_success")["result"]}
    assert found["postgres"] == "1" and found["probe-git-ssh"] == "1", found
    # The testbed has no public DNS for the domain: probe-https is proven against real nginx in
    # tests/host/test_monitoring.py. Every rule file loaded without error.
    groups = prometheus_api(testbed, "rules")["groups"]
    assert groups and all(rule["health"] != "err" for group in groups for rule in group["rules"])


def test_grafana_is_behind_nginx_and_signs_in_through_gitea(testbed, converged):
    status, body, _ = https_get(testbed, "/grafana/api/health")
    assert status == 200 and b'"database"' in body
    state = testbed.path("/srv/gitea-stack/state/grafana-oauth")
    client_id = (state / "client-id").read_text()
    assert client_id and (state / "client-secret").read_text()
    # Grafana reads the same client, owned by its user, private.
    secret_dir = testbed.path("/opt/gitea-stack/secrets/grafana")
    assert (secret_dir / "grafana-oauth-client-id").read_text() == client_id
    assert stat.S_IMODE((secret_dir / "grafana-oauth-client-secret").stat().st_mode) == 0o600
    assert (secret_dir / "grafana-oauth-client-secret").stat().st_uid == 472
    # The application Gitea knows redirects back to Grafana, and the admin password was applied.
    gitea_state = json.loads(testbed.path("/srv/gitea-stack/gitea/data/standin-state.json").read_text())
    (application,) = gitea_state["oauth2_applications"]
    assert application["client_id"] == client_id
    assert application["redirect_uris"] == [f"https://{DOMAIN}/grafana/login/generic_oauth"]
    assert testbed.path("/srv/gitea-stack/grafana/standin-admin-password.sha256").exists()


def test_a_stopped_gitea_is_mailed_as_an_alert_with_what_to_do(testbed, stack_run, target, smtp, converged):
    scraped_targets(testbed)
    assert not smtp.mailbox.about("GiteaDown")
    testbed.run("docker stop gitea-stack-gitea-1")
    settings = dict(line.split("=", 1) for line in testbed.path("/opt/gitea-stack/settings.env").read_text()
                    .splitlines() if "=" in line and not line.startswith("#"))
    alert_emails = settings["ALERT_EMAILS"].split(",")
    try:
        mails = smtp.mailbox.wait_for("FIRING: GiteaDown", count=len(alert_emails), timeout=360)
        assert mails, f"no GiteaDown mail; mails so far: {[m['Subject'] for _, m in smtp.mailbox.messages]}"
        # One mail for each address, through STARTTLS with the stack's SMTP user.
        assert sorted(address for recipients, _ in mails for address in recipients) == sorted(alert_emails)
        assert smtp.mailbox.logins and all(login == (smtp.mailbox.user, smtp.mailbox.password)
                                           for login in smtp.mailbox.logins)
        for _, message in mails:
            assert message["Subject"].startswith("[gitea-stack e2e] FIRING: GiteaDown (critical)")
            body = message.get_body(preferencelist=("plain",)).get_content()
            assert "What to do first:" in body and "docs/monitoring.md#giteadown" in body
    finally:
        testbed.run("docker start gitea-stack-gitea-1")
        check_replay(stack_run, target, only={"provision-converge"})
