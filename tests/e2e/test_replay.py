"""`pulumi up`'s own remote steps, replayed over real SSH against a testbed host.

The program runs under mocks with a test stack; its remote steps (wait, install, copy, converge)
run unchanged on a loopback testbed: sshd and dockerd in their own network and mount namespaces,
moto for Secrets Manager, pebble for ACME, images built locally. Then: does the host converge,
does a second run change nothing, does an nginx change touch nginx only, does it heal, and does
bad input fail clearly while leaving what runs alone?
"""

from __future__ import annotations

import json
import socket
import ssl
import stat
import time
from pathlib import Path

import pytest

import gitea_stack.bundle
from tests.harness.pulumi_mocks import run_program, stack_file_config
from tests.harness.replay import SshTarget, remote_steps, replay, stored_secrets
from tests.harness.testbed import Testbed
from tests.harness.testbed_images import build_images

DOMAIN = "git.example.com"
CACHE_DIR = Path("/var/cache/gitea-stack-testbed")
SERVICES = ("postgres", "gitea", "nginx", "diun")


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


@pytest.fixture(scope="module")
def stack_run(testbed, images):
    run = run_program(stack_config(testbed, images), stack="e2e")
    secrets_manager = testbed.boto3_client("secretsmanager")
    for name, value in stored_secrets(run).items():
        secrets_manager.create_secret(Name=name, SecretString=value)
    return run


def check_replay(run, target, only=None):
    results = replay(run, target, only=only)
    for step, result in results:
        assert result.returncode == 0, (
            f"{step.name} failed ({result.returncode}):\n{result.stdout.decode()[-3000:]}\n{result.stderr.decode()[-3000:]}")
    return results


@pytest.fixture(scope="module")
def converged(stack_run, target):
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


def test_a_rotated_secret_recreates_only_the_services_that_use_it(testbed, stack_run, target, converged):
    client = testbed.boto3_client("secretsmanager")
    name = next(n for n in stored_secrets(stack_run) if "/metrics-token-" in n)
    original = client.get_secret_value(SecretId=name)["SecretString"]
    before = containers(testbed)
    client.put_secret_value(SecretId=name, SecretString="RotatedMetricsToken0123456789abcdefABCD")
    try:
        check_replay(stack_run, target, only={"provision-converge"})
        after = containers(testbed)
        assert after["gitea"][0] != before["gitea"][0]  # the metrics token is Gitea's alone
        assert {s: after[s] for s in ("postgres", "nginx", "diun")} == {s: before[s] for s in ("postgres", "nginx", "diun")}
        assert testbed.path("/opt/gitea-stack/secrets/gitea/metrics-token").read_text() == \
            "RotatedMetricsToken0123456789abcdefABCD"
    finally:
        client.put_secret_value(SecretId=name, SecretString=original)
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
