#!/usr/bin/python3
"""A stand-in for docker.io/grafana/loki:3.7.8 in the gitea-stack testbed; Python stdlib and PyYAML.

`loki -config.file=PATH` (Go flag syntax: one or two dashes, `=VALUE` or a separate value; other
flags such as -config.expand-env or -target are accepted and logged) checks what the stack gives
the real Loki at start, and fails (exit 1, naming the file or directory) otherwise:
  - the config file is readable YAML (a mapping);
  - common.path_prefix and every storage directory the config names (the filesystem chunks and rules
    directories, the TSDB shipper's index and cache, the ingester WAL, the compactor's working
    directory) exist or can be created, and are writable, as the running uid.
It then serves on server.http_listen_address:http_listen_port (default 3100): GET /ready (200
"ready"), GET /metrics, POST /loki/api/v1/push (204; JSON bodies are parsed and their streams and
labels counted, protobuf/snappy bodies only counted by bytes), GET /loki/api/v1/labels and
GET /loki/api/v1/label/NAME/values (JSON, from the JSON pushes). Nothing is stored. Logs go to
stdout; SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

VERSION = "3.7.8"


class Fatal(Exception):
    pass


def log(level: str, message: str, **fields: object) -> None:
    extra = "".join(f" {key}={json.dumps(value) if isinstance(value, str) and ' ' in value else value}"
                    for key, value in fields.items())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"level={level} ts={stamp} caller=standin msg={json.dumps(message)}{extra}", flush=True)


def parse_flags(argv: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise Fatal(f"unexpected argument {arg!r} (Loki takes flags only)")
        name = arg.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
        elif name in ("config.file", "target", "log.level", "server.http-listen-port") and index + 1 < len(argv):
            index += 1
            value = argv[index]
        else:
            value = "true"
        flags[name] = value
        index += 1
    return flags


def _get(config: dict, *keys: str):
    for key in keys:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def storage_dirs(config: dict) -> list[str]:
    candidates = [
        _get(config, "common", "path_prefix"),
        _get(config, "common", "storage", "filesystem", "chunks_directory"),
        _get(config, "common", "storage", "filesystem", "rules_directory"),
        _get(config, "storage_config", "filesystem", "directory"),
        _get(config, "storage_config", "tsdb_shipper", "active_index_directory"),
        _get(config, "storage_config", "tsdb_shipper", "cache_location"),
        _get(config, "ingester", "wal", "dir"),
        _get(config, "compactor", "working_directory"),
    ]
    return [path for path in dict.fromkeys(candidates) if isinstance(path, str) and path]


def check_writable(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = Path(path) / f".standin-write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as problem:
        raise Fatal(f"{path} is not writable as uid {os.getuid()}: {problem.strerror}") from None


def load(flags: dict[str, str]) -> dict:
    path = flags.get("config.file")
    if not path:
        raise Fatal("-config.file is required")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as problem:
        raise Fatal(f"failed to read config file {path}: {problem.strerror}") from None
    except yaml.YAMLError as problem:
        raise Fatal(f"failed parsing config {path}: {problem}") from None
    if not isinstance(config, dict):
        raise Fatal(f"failed parsing config {path}: not a mapping")
    return config


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pushes = 0
        self.push_bytes = 0
        self.streams = 0
        self.labels: dict[str, set[str]] = {}


def make_handler(state: State, started: float):
    class Handler(BaseHTTPRequestHandler):
        server_version = f"loki-standin/{VERSION}"

        def log_message(self, format: str, *args) -> None:
            log("debug", "request", detail=format % args)

        def _send(self, status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/ready":
                self._send(200, b"ready\n")
            elif path == "/metrics":
                with state.lock:
                    lines = ["# TYPE loki_build_info gauge", f'loki_build_info{{version="{VERSION}"}} 1',
                             "# TYPE loki_distributor_bytes_received_total counter",
                             f"loki_distributor_bytes_received_total {state.push_bytes}",
                             "# TYPE loki_distributor_streams_received_total counter",
                             f"loki_distributor_streams_received_total {state.streams}",
                             "# TYPE loki_request_push_total counter", f"loki_request_push_total {state.pushes}",
                             "# TYPE process_start_time_seconds gauge", f"process_start_time_seconds {started:.3f}"]
                self._send(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")
            elif path == "/loki/api/v1/labels":
                with state.lock:
                    data = sorted(state.labels)
                self._send(200, json.dumps({"status": "success", "data": data}).encode(), "application/json")
            elif path.startswith("/loki/api/v1/label/") and path.endswith("/values"):
                name = urllib.parse.unquote(path[len("/loki/api/v1/label/"):-len("/values")])
                with state.lock:
                    data = sorted(state.labels.get(name, ()))
                self._send(200, json.dumps({"status": "success", "data": data}).encode(), "application/json")
            else:
                self._send(404, b"404 page not found\n")

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if path != "/loki/api/v1/push":
                self._send(404, b"404 page not found\n")
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            streams: list[dict] = []
            if content_type == "application/json":
                try:
                    streams = json.loads(body or b"{}").get("streams") or []
                    if not all(isinstance(s, dict) and isinstance(s.get("stream"), dict) for s in streams):
                        raise ValueError("every stream needs a `stream` label set")
                except (ValueError, AttributeError) as problem:
                    self._send(400, f"error parsing push request: {problem}\n".encode())
                    return
            elif not body:
                self._send(400, b"empty push request\n")
                return
            with state.lock:
                state.pushes += 1
                state.push_bytes += len(body)
                state.streams += len(streams) if streams else 1
                for stream in streams:
                    for name, value in stream["stream"].items():
                        state.labels.setdefault(str(name), set()).add(str(value))
            self._send(204)

    return Handler


def main(argv: list[str]) -> int:
    if argv in (["-version"], ["--version"]):
        print(f"loki, version {VERSION} (gitea-stack testbed stand-in)")
        return 0
    log("info", "Starting Loki", version=VERSION, standin="gitea-stack testbed")
    try:
        flags = parse_flags(argv)
        config = load(flags)
        directories = storage_dirs(config)
        for directory in directories:
            check_writable(directory)
    except Fatal as problem:
        log("error", f"error initialising Loki: {problem}")
        return 1
    others = {k: v for k, v in flags.items() if k != "config.file"}
    log("info", "config loaded", file=flags["config.file"], target=config.get("target", "all"),
        writable_dirs=",".join(directories) or "-", other_flags=",".join(f"{k}={v}" for k, v in others.items()) or "-")
    server = config.get("server") or {}
    port = int(server.get("http_listen_port") or 3100)
    address = server.get("http_listen_address") or ""
    httpd = ThreadingHTTPServer((address, port), make_handler(State(), time.time()))
    httpd.daemon_threads = True

    def on_signal(signum, _frame) -> None:
        log("info", "received shutdown signal", signal=signal.Signals(signum).name)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("info", "Loki started", http=f"{address or '[::]'}:{httpd.server_address[1]}")
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    log("info", "Loki stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
