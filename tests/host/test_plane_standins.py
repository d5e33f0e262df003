"""The observability plane's stand-in scripts (tests/e2e/images/{grafana,loki,alloy,cadvisor}),
run directly with this machine's python3: no docker, temporary directories, free loopback ports.

Grafana starts from the bundle's own grafana.ini, provisioning and dashboards (paths moved into a
temporary directory): it names a missing `$__file` secret and refuses to start, and serves its
health below /grafana/ once they exist; its CLI records the password it is given. Loki takes the
bundle's config (its /loki paths moved) and accepts a push; Alloy refuses a config without
loki.write and starts with the bundle's; cAdvisor is unhealthy while the Docker API answers 403
and healthy, with per-container metrics, against a small fake Docker API. Every process is stopped
by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness.bundles import render, variant

IMAGES = Path(__file__).resolve().parents[1] / "e2e" / "images"
GRAFANA = IMAGES / "grafana" / "grafana.py"
LOKI = IMAGES / "loki" / "loki.py"
ALLOY = IMAGES / "alloy" / "alloy.py"
CADVISOR = IMAGES / "cadvisor" / "cadvisor.py"
GRAFANA_SECRETS = ("grafana-admin-password", "grafana-oauth-client-id", "grafana-oauth-client-secret")


@pytest.fixture(scope="module")
def bundle() -> dict[str, str]:
    return {path: content[0] for path, content in render(variant("example")).items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GF_")}
    env.update(extra or {})
    return env


@contextmanager
def started(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, env=_environment(env))
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM by PID; (exit code, output). The stand-ins exit 0 promptly."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=5)
    return process.returncode, output


def get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(url: str, process: subprocess.Popen, timeout: float = 8) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before {url} answered:\n{process.stdout.read()}")
        try:
            return get(url)
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{url} did not answer within {timeout}s")


# --- grafana ---

def grafana_setup(tmp_path: Path, bundle: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The bundle's Grafana files below tmp_path, with the container paths moved there."""
    secrets, data, dashboards = tmp_path / "secrets", tmp_path / "data", tmp_path / "dashboards"
    for directory in (secrets, data, dashboards):
        directory.mkdir()
    for path, content in bundle.items():
        if path.startswith("grafana/dashboards/"):
            (dashboards / Path(path).name).write_text(content)
        elif path.startswith("grafana/provisioning/"):
            target = tmp_path / "provisioning" / path.removeprefix("grafana/provisioning/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content.replace("/etc/grafana/dashboards", str(dashboards)))
    ini = tmp_path / "grafana.ini"
    ini.write_text(bundle["grafana/grafana.ini"].replace("/run/gitea-stack/", f"{secrets}/"))
    assert "$__file{" + f"{secrets}/grafana-admin-password" + "}" in ini.read_text()
    port = free_port()
    env = {"GF_PATHS_CONFIG": str(ini), "GF_PATHS_DATA": str(data),
           "GF_PATHS_PROVISIONING": str(tmp_path / "provisioning"), "GF_SERVER_HTTP_PORT": str(port),
           "GF_SERVER_HTTP_ADDR": "127.0.0.1"}
    return secrets, env


def test_grafana_names_a_missing_secret_file_and_serves_its_health_once_all_exist(tmp_path, bundle):
    secrets, env = grafana_setup(tmp_path, bundle)
    for name in GRAFANA_SECRETS[:-1]:
        (secrets / name).write_text(f"{name}-value\n")
    refused = subprocess.run([sys.executable, str(GRAFANA), "server", "--homepath=/usr/share/grafana"],
                             capture_output=True, text=True, env=_environment(env), timeout=10)
    assert refused.returncode == 1
    assert f"{secrets}/grafana-oauth-client-secret" in refused.stdout + refused.stderr

    (secrets / GRAFANA_SECRETS[-1]).write_text("client-secret\n")
    with started([str(GRAFANA), "server", "--homepath=/usr/share/grafana"], env) as grafana:
        base = f"http://127.0.0.1:{env['GF_SERVER_HTTP_PORT']}"
        status, body = wait_for(f"{base}/grafana/api/health", grafana)
        assert (status, json.loads(body)) == (200, {"database": "ok", "version": "13.2.0"})
        status, body = get(f"{base}/grafana/login")
        assert status == 200 and b"Gitea" in body
        status, body = get(f"{base}/grafana/metrics")
        assert status == 200 and b"grafana_build_info" in body
        assert get(f"{base}/api/health")[0] == 404  # only below root_url's sub-path
        code, output = stop(grafana)
    assert code == 0
    assert '"dashboards": 6' in output


def test_grafana_refuses_a_dashboard_that_does_not_parse(tmp_path, bundle):
    secrets, env = grafana_setup(tmp_path, bundle)
    for name in GRAFANA_SECRETS:
        (secrets / name).write_text("value\n")
    (tmp_path / "dashboards" / "broken.json").write_text("{not json")
    refused = subprocess.run([sys.executable, str(GRAFANA), "server"], capture_output=True, text=True,
                             env=_environment(env), timeout=10)
    assert refused.returncode == 1 and "broken.json" in refused.stdout


def test_grafana_cli_records_the_password_from_stdin(tmp_path, bundle):
    secrets, env = grafana_setup(tmp_path, bundle)
    for name in GRAFANA_SECRETS:
        (secrets / name).write_text("value\n")
    command = [sys.executable, str(GRAFANA), "cli", "--homepath", "/usr/share/grafana", "admin",
               "reset-admin-password", "--password-from-stdin"]
    empty = subprocess.run(command, input="", capture_output=True, text=True, env=_environment(env), timeout=10)
    assert empty.returncode == 1 and "empty" in empty.stderr
    done = subprocess.run(command, input="new-admin-pass\n", capture_output=True, text=True,
                          env=_environment(env), timeout=10)
    assert done.returncode == 0, done.stderr
    record = Path(env["GF_PATHS_DATA"]) / "standin-admin-password.sha256"
    assert record.read_text().strip() == hashlib.sha256(b"new-admin-pass").hexdigest()


# --- loki ---

def test_loki_serves_ready_and_accepts_a_push(tmp_path, bundle):
    config = tmp_path / "config.yml"
    port = free_port()
    config.write_text(bundle["loki/config.yml"].replace("/loki", str(tmp_path / "loki"))
                      .replace("http_listen_port: 3100", f"http_listen_port: {port}")
                      .replace("grpc_listen_port: 9095", f"grpc_listen_port: {free_port()}"))
    with started([str(LOKI), f"-config.file={config}"]) as loki:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(f"{base}/ready", loki) == (200, b"ready\n")
        push = {"streams": [{"stream": {"service": "gitea", "stack": "example"},
                             "values": [[str(time.time_ns()), "hello"]]}]}
        assert get(f"{base}/loki/api/v1/push", json.dumps(push).encode(),
                   {"Content-Type": "application/json"})[0] == 204
        assert get(f"{base}/loki/api/v1/push", b"\x00snappy-protobuf",
                   {"Content-Type": "application/x-protobuf"})[0] == 204
        status, body = get(f"{base}/loki/api/v1/labels")
        assert status == 200 and set(json.loads(body)["data"]) == {"service", "stack"}
        status, body = get(f"{base}/metrics")
        assert b"loki_request_push_total 2" in body
        code, _ = stop(loki)
    assert code == 0
    assert (tmp_path / "loki" / "wal").is_dir() and (tmp_path / "loki" / "compactor").is_dir()


def test_loki_refuses_an_unwritable_storage_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "config.yml"
    config.write_text(f"common:\n  path_prefix: {blocker}/loki\nserver:\n  http_listen_port: {free_port()}\n")
    refused = subprocess.run([sys.executable, str(LOKI), "--config.file", str(config)],
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and f"{blocker}/loki" in refused.stdout


# --- alloy ---

def test_alloy_refuses_a_config_without_loki_write_and_runs_the_bundles(tmp_path, bundle):
    storage = tmp_path / "data"
    bad = tmp_path / "bad.alloy"
    bad.write_text('logging {\n  level = "info"\n}\n')
    port = free_port()
    flags = [f"--storage.path={storage}", f"--server.http.listen-addr=127.0.0.1:{port}", "--disable-reporting"]
    refused = subprocess.run([sys.executable, str(ALLOY), "run", *flags, str(bad)],
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "loki.write" in refused.stdout

    good = tmp_path / "config.alloy"
    good.write_text(bundle["alloy/config.alloy"])
    with started([str(ALLOY), "run", str(good), *flags]) as alloy:
        assert wait_for(f"http://127.0.0.1:{port}/-/ready", alloy)[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        for family in ("nginx_http_requests_total", "nginx_http_request_duration_seconds_bucket",
                       "admin_ssh_failed_logins_total"):
            assert family.encode() in body
        code, output = stop(alloy)
    assert code == 0 and 'component="loki.write' in output


# --- cadvisor ---

class FakeDocker(BaseHTTPRequestHandler):
    forbidden = False
    calls: list[str] = []

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).calls.append(self.path)
        if self.forbidden:
            body, status = b'{"message":"forbidden by the docker socket proxy"}', 403
        elif self.path == "/_ping":
            body, status = b"OK", 200
        elif self.path == "/version":
            body, status = json.dumps({"Version": "29.0.0", "ApiVersion": "1.52"}).encode(), 200
        elif self.path == "/v1.52/info":
            body, status = json.dumps({"MemTotal": 4 * 2**30}).encode(), 200
        elif self.path == "/v1.52/containers/json":
            body, status = json.dumps([{"Id": "abc123", "Names": ["/stack-gitea-1"],
                                        "Labels": {"com.docker.compose.service": "gitea"}}]).encode(), 200
        elif self.path == "/v1.52/containers/abc123/json":
            body, status = json.dumps({"Name": "/stack-gitea-1", "Config": {"Labels": {
                "com.docker.compose.service": "gitea", "other": "x"}}}).encode(), 200
        else:
            body, status = b'{"message":"page not found"}', 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def fake_docker(forbidden: bool) -> Iterator[int]:
    handler = type("Handler", (FakeDocker,), {"forbidden": forbidden, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def cadvisor_command(docker_port: int, port: int) -> list[str]:
    return [str(CADVISOR), "-logtostderr", f"--docker=tcp://127.0.0.1:{docker_port}", "--docker_only=true",
            "--housekeeping_interval=200ms", "--store_container_labels=false",
            "--whitelisted_container_labels=com.docker.compose.service",
            "--disable_metrics=advtcp,cpu_topology,cpuset,hugetlb,memory_numa,percpu,perf_event,process,"
            "referenced_memory,resctrl,sched,tcp,udp", f"--port={port}"]


def test_cadvisor_is_unhealthy_while_the_docker_api_refuses(tmp_path):
    port = free_port()
    with fake_docker(forbidden=True) as docker_port, started(cadvisor_command(docker_port, port)) as cadvisor:
        wait_for(f"http://127.0.0.1:{port}/healthz", cadvisor)
        time.sleep(0.3)
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 500 and b"403" in body and b"/_ping" in body
        code, output = stop(cadvisor)
    assert code == 0 and "HTTP 403" in output


def test_cadvisor_is_healthy_and_lists_containers_through_the_docker_api(tmp_path):
    port = free_port()
    with fake_docker(forbidden=False) as docker_port, started(cadvisor_command(docker_port, port)) as cadvisor:
        deadline = time.monotonic() + 8
        while wait_for(f"http://127.0.0.1:{port}/healthz", cadvisor) != (200, b"ok"):
            assert time.monotonic() < deadline, "cadvisor never became healthy"
            time.sleep(0.05)
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        text = body.decode()
        assert status == 200
        assert ('container_last_seen{id="/docker/abc123",name="stack-gitea-1",'
                'container_label_com_docker_compose_service="gitea"}') in text
        assert "container_label_other" not in text
        assert f'machine_memory_bytes{{boot_id="standin"}} {4 * 2**30}' in text
        code, _ = stop(cadvisor)
    assert code == 0


def test_cadvisor_rejects_an_unknown_flag():
    refused = subprocess.run([sys.executable, str(CADVISOR), "--no_such_flag=1"], capture_output=True, text=True,
                             timeout=10)
    assert refused.returncode == 2 and "no_such_flag" in refused.stderr
