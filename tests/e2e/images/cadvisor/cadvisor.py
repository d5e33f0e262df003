#!/usr/bin/python3
"""A stand-in for ghcr.io/google/cadvisor:v0.60.5 in the gitea-stack testbed; Python stdlib only.

It parses cAdvisor's flags (Go flag syntax, one or two dashes, `=value` or a separate value):
--docker (unix:///path or tcp://HOST:PORT; default unix:///var/run/docker.sock), --docker_only,
--housekeeping_interval (Go durations such as 30s, 1m, 500ms), --store_container_labels,
--whitelisted_container_labels, --disable_metrics (checked against cAdvisor's metric names),
--port (default 8080), --listen_ip, -logtostderr and a few logging flags; any other flag exits 2.
At start and every housekeeping interval it makes the Docker API calls the real cAdvisor's Docker
factory makes, over plain HTTP: GET /_ping and GET /version (API version negotiation), then, under
/v<ApiVersion>, GET /info, GET /containers/json and GET /containers/<id>/json for each container.
Through the stack's docker-socket-proxy every one of them must be allowed: a refusal (e.g. 403)
or any failure is logged with the call and makes /healthz answer 500, so a wrong allowlist shows.
It serves on --listen_ip:--port: GET /healthz (200 "ok" while the last round of calls succeeded),
GET /metrics (container_last_seen per listed container, labelled name and, when whitelisted or
--store_container_labels, container_label_<label>; machine_memory_bytes from /info's MemTotal).
No cgroup is read: no CPU or memory figures. Logs go to stdout; SIGTERM or SIGINT exits 0.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "v0.60.5"
KNOWN_METRICS = {"advtcp", "app", "cpu", "cpuLoad", "cpu_topology", "cpuset", "disk", "diskIO", "hugetlb",
                 "memory", "memory_numa", "network", "oom_event", "percpu", "perf_event", "pressure", "process",
                 "referenced_memory", "resctrl", "sched", "tcp", "udp"}
VALUE_FLAGS = {"docker": "unix:///var/run/docker.sock", "housekeeping_interval": "1s",
               "whitelisted_container_labels": "", "disable_metrics": "", "port": "8080", "listen_ip": "",
               "v": "0", "docker_only": "false", "store_container_labels": "true", "logtostderr": "true",
               "max_housekeeping_interval": "60s", "allow_dynamic_housekeeping": "true"}
BOOLEAN_FLAGS = {"docker_only", "store_container_labels", "logtostderr", "allow_dynamic_housekeeping"}
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class UsageError(Exception):
    pass


def log(message: str) -> None:
    stamp = time.strftime("%m%d %H:%M:%S", time.gmtime())
    print(f"I{stamp}.000000       1 standin.go:1] {message}", flush=True)


def parse_flags(argv: list[str]) -> dict[str, str]:
    flags = dict(VALUE_FLAGS)
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"unexpected argument {arg!r}")
        name = arg.lstrip("-")
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name not in VALUE_FLAGS:
            raise UsageError(f"flag provided but not defined: -{name}")
        if value is None:
            if name in BOOLEAN_FLAGS:
                value = "true"
            elif index + 1 < len(argv):
                index += 1
                value = argv[index]
            else:
                raise UsageError(f"flag needs an argument: -{name}")
        if name in BOOLEAN_FLAGS and value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid boolean value {value!r} for -{name}")
        flags[name] = value
        index += 1
    unknown = {m for m in flags["disable_metrics"].split(",") if m} - KNOWN_METRICS
    if unknown:
        raise UsageError(f"invalid value for -disable_metrics: unsupported metric {sorted(unknown)}")
    seconds(flags["housekeeping_interval"])
    if not flags["docker"].startswith(("unix://", "tcp://")):
        raise UsageError(f"-docker={flags['docker']}: the stand-in speaks unix:// and tcp://")
    return flags


def seconds(duration: str) -> float:
    parts = DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise UsageError(f"invalid duration {duration!r}")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * factor[u] for n, u in parts)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class DockerError(Exception):
    pass


def docker_get(endpoint: str, path: str) -> bytes:
    if endpoint.startswith("unix://"):
        connection: http.client.HTTPConnection = UnixConnection(endpoint.removeprefix("unix://"), 10)
    else:
        host, _, port = endpoint.removeprefix("tcp://").rstrip("/").rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers={"User-Agent": f"cadvisor-standin/{VERSION}"})
        response = connection.getresponse()
        body = response.read()
    except OSError as problem:
        raise DockerError(f"GET {path} through {endpoint}: {problem}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise DockerError(f"GET {path} through {endpoint}: HTTP {response.status} "
                          f"{body.decode(errors='replace').strip()[:200]}")
    return body


def docker_json(endpoint: str, path: str):
    body = docker_get(endpoint, path)
    try:
        return json.loads(body)
    except ValueError:
        raise DockerError(f"GET {path} through {endpoint}: not JSON") from None


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.healthy = False
        self.problem = "no housekeeping yet"
        self.containers: list[dict] = []
        self.memory = 0
        self.last_seen = 0.0


def housekeeping(flags: dict[str, str], state: State) -> None:
    endpoint = flags["docker"]
    try:
        if docker_get(endpoint, "/_ping").strip() != b"OK":
            raise DockerError(f"GET /_ping through {endpoint}: not OK")
        version = docker_json(endpoint, "/version")
        prefix = f"/v{version['ApiVersion']}" if isinstance(version, dict) and version.get("ApiVersion") else ""
        info = docker_json(endpoint, f"{prefix}/info")
        listed = docker_json(endpoint, f"{prefix}/containers/json")
        containers = []
        for container in listed:
            inspected = docker_json(endpoint, f"{prefix}/containers/{container['Id']}/json")
            name = (inspected.get("Name") or (container.get("Names") or ["/?"])[0]).lstrip("/")
            labels = (inspected.get("Config") or {}).get("Labels") or container.get("Labels") or {}
            containers.append({"id": container["Id"], "name": name, "labels": labels})
    except (DockerError, KeyError, TypeError, AttributeError) as problem:
        with state.lock:
            state.healthy, state.problem = False, str(problem)
        log(f"Docker API failed (unhealthy until it answers): {problem}")
        return
    with state.lock:
        first = not state.healthy
        state.healthy, state.problem = True, ""
        state.containers, state.memory, state.last_seen = containers, int(info.get("MemTotal") or 0), time.time()
    if first:
        log(f"Registered Docker factory through {endpoint}: Docker {version.get('Version', '?')}, "
            f"API {version.get('ApiVersion', '?')}, {len(containers)} containers")


def metrics_text(flags: dict[str, str], state: State) -> str:
    whitelisted = [label for label in flags["whitelisted_container_labels"].split(",") if label]
    store_all = flags["store_container_labels"].lower() in ("true", "1")
    lines = ["# HELP cadvisor_version_info cAdvisor version (stand-in).", "# TYPE cadvisor_version_info gauge",
             f'cadvisor_version_info{{cadvisorVersion="{VERSION}"}} 1',
             "# HELP container_last_seen Last time a container was seen by the exporter",
             "# TYPE container_last_seen gauge"]
    with state.lock:
        containers, memory, seen = list(state.containers), state.memory, state.last_seen
    for container in containers:
        labels = {"id": f"/docker/{container['id']}", "name": container["name"]}
        for key, value in sorted(container["labels"].items()):
            if store_all or key in whitelisted:
                labels["container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
        rendered = ",".join(f'{k}="{json.dumps(str(v))[1:-1]}"' for k, v in labels.items())
        lines.append(f"container_last_seen{{{rendered}}} {seen:.0f}")
    lines += ["# HELP machine_memory_bytes Amount of memory installed on the machine.",
              "# TYPE machine_memory_bytes gauge", f'machine_memory_bytes{{boot_id="standin"}} {memory}']
    return "\n".join(lines) + "\n"


def make_handler(flags: dict[str, str], state: State):
    class Handler(BaseHTTPRequestHandler):
        server_version = f"cadvisor-standin/{VERSION}"

        def log_message(self, format: str, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/healthz":
                with state.lock:
                    healthy, problem = state.healthy, state.problem
                self._send(200, b"ok") if healthy else self._send(500, f"unhealthy: {problem}\n".encode())
            elif path == "/metrics":
                self._send(200, metrics_text(flags, state).encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b"404 page not found\n")

    return Handler


def main(argv: list[str]) -> int:
    if argv in (["--version"], ["-version"]):
        print(f"cAdvisor version {VERSION} (gitea-stack testbed stand-in)")
        return 0
    try:
        flags = parse_flags(argv)
    except UsageError as problem:
        print(f"cadvisor: {problem}", file=sys.stderr, flush=True)
        return 2
    log(f"cAdvisor {VERSION} stand-in: docker={flags['docker']} docker_only={flags['docker_only']} "
        f"housekeeping_interval={flags['housekeeping_interval']} "
        f"whitelisted_container_labels={flags['whitelisted_container_labels'] or '-'} "
        f"disable_metrics={flags['disable_metrics'] or '-'}")
    state = State()
    stop = threading.Event()
    interval = seconds(flags["housekeeping_interval"])
    httpd = ThreadingHTTPServer((flags["listen_ip"], int(flags["port"])), make_handler(flags, state))
    httpd.daemon_threads = True

    def keep_house() -> None:
        while not stop.is_set():
            housekeeping(flags, state)
            stop.wait(interval)

    def on_signal(signum, _frame) -> None:
        log(f"Exiting given signal: {signal.Signals(signum).name}")
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=keep_house, daemon=True).start()
    log(f"Starting cAdvisor version: {VERSION} on port {httpd.server_address[1]}")
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
