"""The Docker socket proxy in front of Diun: real HAProxy on loopback, a stand-in dockerd behind it.

templates/docker-socket-proxy/haproxy.cfg.j2 is rendered through `render_template` with a layout
that has only the two attributes the template may use (StrictUndefined fails on any other) and
run by Debian's haproxy (`haproxy -c`, then `haproxy -db`) on 127.0.0.1. Behind it, a stand-in
Docker API on a unix socket in the test's temporary directory records every request and answers
200 with JSON. Every call Diun's Docker provider makes must pass unchanged; everything else must
get HAProxy's 403 and never reach the socket.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from gitea_stack.rendering import render_template
from tests.harness.nginx import free_port, wait_for_port
from tests.harness.servers import ServedInThread
from tests.harness.tools import require_tool

TEMPLATE = "docker-socket-proxy/haproxy.cfg.j2"
TIMEOUT = 10
API = "/v1.47"
CONTAINER_ID = "4f1c2b7e9a0d" + "5e3c" * 13
IMAGE_ID = "sha256:" + "9b2d4e6f" * 8
DIGEST = "sha256:" + "0a1b2c3d" * 8
# ContainerList's filters as the moby client encodes them: {"status":{"running":true}}.
RUNNING_FILTER = "filters=%7B%22status%22%3A%7B%22running%22%3Atrue%7D%7D"


@dataclass(frozen=True)
class ProxyLayout:
    """All the template may read of HostLayout; production's values are the defaults."""
    docker_socket_proxy_port: str | int = 2375
    docker_socket: str = "/var/run/docker.sock"


def render_config(layout: ProxyLayout, stack: str = "prod") -> str:
    return render_template(TEMPLATE, stack=stack, layout=layout)


# --- the stand-in dockerd --------------------------------------------------------------------------

class RecordingHandler(BaseHTTPRequestHandler):
    """Answers every method on every path with 200 and JSON, after recording (method, target)."""
    protocol_version = "HTTP/1.1"
    dockerd: StubDockerd

    def log_message(self, *_):
        pass

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: any method at all reaches answer(), so
        # a request the proxy let through shows up as a 200 and in the record, never as a 501.
        if name.startswith("do_"):
            return self.answer
        raise AttributeError(name)

    def answer(self):
        self.dockerd.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = json.dumps({"method": self.command, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", "1.47")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class QuietUnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # HAProxy closes idle server-side keep-alive connections; that is no error of the test.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class StubDockerd(ServedInThread):
    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.requests: list[tuple[str, str]] = []
        handler = type("BoundRecordingHandler", (RecordingHandler,), {"dockerd": self})
        self.server = QuietUnixServer(str(socket_path), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="stub-dockerd", daemon=True)

    def __exit__(self, *_):
        super().__exit__()
        self.socket_path.unlink(missing_ok=True)


# --- HAProxy ---------------------------------------------------------------------------------------

def haproxy_check(haproxy: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=TIMEOUT)


class HAProxy:
    """`haproxy -db` in the foreground, a child of the test, stopped by its Popen object."""

    def __init__(self, haproxy: str, config: Path, port: int, log: Path):
        self.command = [haproxy, "-db", "-f", str(config)]
        self.port = port
        self.log = log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> HAProxy:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.__exit__()
            raise RuntimeError(f"haproxy did not start:\n{self.log.read_text()}") from None
        return self

    def __exit__(self, *_) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Proxy:
    port: int
    dockerd: StubDockerd
    log: Path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Proxy:
    haproxy = require_tool("haproxy", "haproxy")
    workdir = tmp_path_factory.mktemp("docker-socket-proxy")
    socket_path = workdir / "docker.sock"
    assert len(str(socket_path)) < 100, f"unix socket path too long for sun_path: {socket_path}"
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(render_config(ProxyLayout(docker_socket_proxy_port=f"127.0.0.1:{port}",
                                                docker_socket=str(socket_path))))
    check = haproxy_check(haproxy, config)
    assert check.returncode == 0, check.stdout + check.stderr
    with StubDockerd(socket_path) as dockerd, HAProxy(haproxy, config, port, workdir / "haproxy.log"):
        yield Proxy(port, dockerd, workdir / "haproxy.log")


# --- clients ---------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


def send(proxy: Proxy, method: str, target: str, headers: dict[str, str] | None = None) -> Answer:
    """One request on a new connection; http.client sends the target byte for byte, unnormalised."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.getheader("Content-Type", ""), response.read())
    finally:
        connection.close()


def read_response(stream) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length, from a binary stream."""
    status_line = stream.readline().decode("latin-1")
    assert status_line, "connection closed without a response"
    length = 0
    while (line := stream.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return int(status_line.split()[1]), stream.read(length)


# --- what passes and what does not -----------------------------------------------------------------

ALLOWED = [
    # API version negotiation: the moby client tries HEAD first, then GET.
    ("HEAD", "/_ping"),
    ("GET", "/_ping"),
    ("HEAD", f"{API}/_ping"),
    ("GET", f"{API}/_ping"),
    # ServerVersion when Diun creates its client.
    ("GET", "/version"),
    ("GET", f"{API}/version"),
    # ContainerList, with the filters Diun sets.
    ("GET", "/containers/json"),
    ("GET", f"/containers/json?{RUNNING_FILTER}"),
    ("GET", f"{API}/containers/json?{RUNNING_FILTER}"),
    ("GET", f"{API}/containers/json?all=1&{RUNNING_FILTER}"),
    # ContainerInspect by id and by name.
    ("GET", f"/containers/{CONTAINER_ID}/json"),
    ("GET", f"{API}/containers/{CONTAINER_ID}/json"),
    ("GET", f"{API}/containers/{CONTAINER_ID}/json?size=1"),
    ("GET", f"{API}/containers/gitea-stack-gitea-1/json"),
    ("GET", f"{API}/containers/gitea_stack.diun.1/json"),
    # ImageInspect with the container's image reference: slashes, colons, digests, ids.
    ("GET", "/images/docker.io/library/nginx:1.30.1-alpine/json"),
    ("GET", f"{API}/images/docker.io/library/nginx:1.30.1-alpine/json"),
    ("GET", f"{API}/images/docker.gitea.com/gitea:1.27.3-rootless/json"),
    ("GET", f"{API}/images/crazymax/diun:4.33.0/json"),
    ("GET", f"{API}/images/nginx/json"),
    ("GET", f"/images/{IMAGE_ID}/json"),
    ("GET", f"{API}/images/{IMAGE_ID}/json"),
    ("GET", f"{API}/images/docker.io/library/postgres@{DIGEST}/json"),
    ("GET", f"{API}/images/docker.io/library/postgres:18.1-alpine@{DIGEST}/json"),
    ("GET", f"{API}/images/localhost:5000/team/app:1.0/json"),
    ("GET", "/v1.48/images/docker.io/crazymax/diun:4.33.0/json?manifests=1"),
    # Info: cAdvisor asks it when it registers its Docker factory.
    ("GET", "/info"),
    ("GET", f"{API}/info"),
]

FORBIDDEN = [
    # Writes of any kind, whatever the path.
    ("POST", "/containers/create"),
    ("POST", f"{API}/containers/create?name=x"),
    ("POST", f"{API}/containers/x/start"),
    ("POST", "/containers/x/kill"),
    ("DELETE", "/containers/x"),
    ("DELETE", f"{API}/images/docker.io/library/nginx:1.30.1-alpine"),
    ("PUT", "/containers/x/archive?path=/tmp"),
    ("POST", "/containers/x/exec"),
    ("POST", "/exec/abc/start"),
    ("POST", "/images/create?fromImage=alpine"),
    ("POST", "/build"),
    ("POST", "/_ping"),
    ("POST", "/containers/json"),
    ("POST", f"{API}/images/nginx/json"),
    ("OPTIONS", "/_ping"),
    ("HEAD", "/version"),
    ("HEAD", "/containers/json"),
    ("CONNECT", "dockerd:2375"),
    # Reads that leak files, secrets or logs of other containers.
    ("GET", "/containers/x/archive?path=/run/secrets"),
    ("HEAD", "/containers/x/archive?path=/run/secrets"),
    ("GET", f"{API}/containers/x/export"),
    ("GET", "/containers/x/logs?stdout=1&stderr=1"),
    ("GET", "/containers/x/attach/ws?stream=1"),
    ("GET", "/containers/x/top"),
    ("GET", "/containers/x/changes"),
    ("GET", "/containers/x/stats?stream=false"),
    ("GET", "/containers/x/archive/json"),
    ("GET", "/images/x/get"),
    ("GET", "/images/get?names=x"),
    ("GET", "/images/json"),
    ("GET", "/images/x/history"),
    ("GET", "/secrets"),
    ("GET", f"{API}/secrets/x"),
    ("GET", "/configs"),
    # Reads neither Diun nor cAdvisor makes.
    ("GET", "/events?"),
    ("GET", "/events?since=0"),
    ("GET", "/info/x"),
    ("GET", "/volumes"),
    ("GET", "/networks"),
    ("GET", "/system/df"),
    ("GET", "/distribution/nginx/json"),
    ("GET", "/plugins"),
    ("GET", "/swarm"),
    # Path tricks: what dockerd would decode or clean into another endpoint.
    ("GET", "/images/../containers/x/archive/json"),
    ("GET", "/images/x%2F..%2Fcontainers/json"),
    ("GET", "/images/%2e%2e/%2e%2e/containers/x/archive/json"),
    ("GET", "/containers/%2e%2e/json"),
    ("GET", "/containers/x%2Farchive/json"),
    ("GET", f"{API}/containers/x/json/../archive"),
    ("GET", "/_ping/../containers/x/export"),
    ("GET", "//containers/json"),
    ("GET", f"{API}//containers/json"),
    ("GET", "/images/./json"),
    ("GET", "/images/x/./get/json"),
    ("GET", "/containers/json/"),
    ("GET", "/V1.47/containers/json"),
    ("GET", "/v1.47a/containers/json"),
    ("get", "/containers/json"),
    # Absolute-form targets: the path comes after a scheme and a host.
    ("GET", "http://dockerd/containers/json"),
    ("GET", "http://dockerd/containers/x/export"),
]


# HAProxy answers CONNECT with 400 unless Host names the same authority; with it, the rules decide.
HEADERS = {("CONNECT", "dockerd:2375"): {"Host": "dockerd:2375"}}


def request_id(case: tuple[str, str]) -> str:
    return " ".join(case)


# --- configuration ---------------------------------------------------------------------------------

def test_production_rendering_listens_on_2375_and_forwards_to_the_docker_socket():
    config = render_config(ProxyLayout())
    assert "\n    bind :2375\n" in config
    assert "\n    server dockerd unix@/var/run/docker.sock\n" in config
    assert config.startswith("# gitea-stack prod:")


def test_layout_values_reach_the_configuration():
    config = render_config(ProxyLayout(docker_socket_proxy_port="127.0.0.1:40123",
                                       docker_socket="/run/test/docker.sock"), stack="staging")
    assert "\n    bind 127.0.0.1:40123\n" in config
    assert "\n    server dockerd unix@/run/test/docker.sock\n" in config
    assert config.startswith("# gitea-stack staging:")


@pytest.mark.parametrize("layout", [ProxyLayout(), ProxyLayout("127.0.0.1:2375", "/run/docker.sock")],
                         ids=["production", "loopback"])
def test_haproxy_accepts_the_configuration_without_warnings(tmp_path, layout):
    haproxy = require_tool("haproxy", "haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_config(layout))
    result = haproxy_check(haproxy, config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # HAProxy 2.6 says "Configuration file is valid"; 3.x says nothing when all is well.
    assert "[WARNING]" not in output and "[ALERT]" not in output, output


# --- requests --------------------------------------------------------------------------------------

def test_the_stand_in_answers_whatever_reaches_it(proxy):
    """So a 403 below is HAProxy's refusal: the stand-in itself would have said 200 to anything."""
    connection = http.client.HTTPConnection("localhost", timeout=TIMEOUT)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.settimeout(TIMEOUT)
    connection.sock.connect(str(proxy.dockerd.socket_path))
    try:
        connection.request("POST", "/containers/create?name=straight-to-the-socket")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert proxy.dockerd.requests[-1] == ("POST", "/containers/create?name=straight-to-the-socket")


@pytest.mark.parametrize("case", ALLOWED, ids=request_id)
def test_diun_calls_reach_dockerd_unchanged(proxy, case):
    method, target = case
    before = len(proxy.dockerd.requests)
    answer = send(proxy, method, target)
    assert answer.status == 200, answer.body
    assert proxy.dockerd.requests[before:] == [(method, target)], "exactly this request, unchanged"
    if method == "GET":
        assert json.loads(answer.body) == {"method": method, "path": target}
    else:
        assert answer.body == b""


@pytest.mark.parametrize("case", FORBIDDEN, ids=request_id)
def test_everything_else_is_refused_before_dockerd(proxy, case):
    method, target = case
    before = len(proxy.dockerd.requests)
    answer = send(proxy, method, target, HEADERS.get(case))
    assert answer.status == 403, answer.body
    assert proxy.dockerd.requests[before:] == [], "a refused request must never reach the socket"
    assert (method, target) not in proxy.dockerd.requests
    assert answer.content_type == "application/json"
    if method == "HEAD":
        assert answer.body == b""  # the answer to HEAD is the head alone
    else:
        assert "forbidden by the docker socket proxy" in json.loads(answer.body)["message"]


def test_upgrade_to_a_hijacked_stream_is_refused(proxy):
    before = len(proxy.dockerd.requests)
    answer = send(proxy, "GET", f"{API}/containers/json", {"Connection": "Upgrade", "Upgrade": "tcp"})
    assert answer.status == 403
    assert proxy.dockerd.requests[before:] == []


@pytest.mark.parametrize("target", ["/images/x/json#/../get", "/containers/x/archive#/json"])
def test_fragments_are_refused_by_the_parser(proxy, target):
    before = len(proxy.dockerd.requests)
    assert send(proxy, "GET", target).status == 400
    assert proxy.dockerd.requests[before:] == []


def test_every_request_of_a_kept_alive_connection_is_checked(proxy):
    """Pipelined on one connection: the allowed first request must not open the way for the next."""
    before = len(proxy.dockerd.requests)
    requests = [("GET", f"{API}/_ping"), ("GET", "/containers/x/archive?path=/run/secrets"),
                ("POST", f"{API}/containers/x/start"), ("GET", f"{API}/version")]
    raw = "".join(f"{method} {target} HTTP/1.1\r\nHost: dockerd\r\n\r\n" for method, target in requests)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(raw.encode())
        stream = sock.makefile("rb")
        statuses = []
        for _ in requests:
            status, _body = read_response(stream)
            statuses.append(status)
            if status != 200:
                break  # HAProxy may close the connection after a refusal; what matters is that it refused
    assert statuses[:2] == [200, 403]
    assert proxy.dockerd.requests[before:] in ([requests[0]], [requests[0], requests[3]])
    assert statuses in ([200, 403], [200, 403, 403, 200])


def test_haproxy_logs_requests_to_stdout(proxy):
    send(proxy, "GET", f"{API}/events")
    send(proxy, "GET", f"{API}/version")
    log = proxy.log.read_text()
    assert f"GET {API}/events HTTP/1.1" in log and f"GET {API}/version HTTP/1.1" in log
    assert " 403 " in log and " 200 " in log
