#!/usr/bin/python3
"""A stand-in for docker.io/grafana/alloy:v1.19.2 in the gitea-stack testbed; Python stdlib only.

`alloy run CONFIG [--storage.path=DIR] [--server.http.listen-addr=HOST:PORT] [--disable-reporting]`
(flags and the positional config path in any order, `--flag=value` or `--flag value`; other
--flags are accepted and logged) checks what the stack gives the real Alloy at start, and fails
(exit 1, naming the file, directory or flag) otherwise:
  - CONFIG exists, is readable and non-empty, and has a `loki.write` component (the stack's config
    ships every log to Loki); the components it declares are logged;
  - the storage path (default data-alloy/) exists or can be created, and is writable.
The pipeline itself does not run: no log is read or shipped. It serves on the listen address
(default 127.0.0.1:12345): GET /-/ready and GET /-/healthy (200), and GET /metrics with the
families the stack's log-derived metrics have (nginx_http_requests_total,
nginx_http_request_duration_seconds, admin_ssh_failed_logins_total): shapes only, every value
zero, so that scrape configs and recording/alert rules find the names. Logs go to stdout;
SIGTERM or SIGINT stops it (exit 0). `alloy --version` prints the version.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "v1.19.2"
VALUE_FLAGS = ("storage.path", "server.http.listen-addr", "stability.level", "config.format", "server.http.ui-path-prefix")
COMPONENT = re.compile(r"^\s*([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\s+\"([^\"]*)\"\s*\{", re.MULTILINE)
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")


class Fatal(Exception):
    pass


def log(level: str, message: str, **fields: object) -> None:
    extra = "".join(f' {key}="{value}"' for key, value in fields.items())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    print(f'ts={stamp} level={level} msg="{message}"{extra}', flush=True)


def parse_run(argv: list[str]) -> tuple[str, dict[str, str]]:
    flags: dict[str, str] = {}
    positional: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("-") and arg not in ("-", "--"):
            name = arg.lstrip("-")
            if "=" in name:
                name, value = name.split("=", 1)
            elif name in VALUE_FLAGS:
                if index + 1 >= len(argv):
                    raise Fatal(f"flag --{name} needs a value")
                index += 1
                value = argv[index]
            else:
                value = "true"
            flags[name] = value
        else:
            positional.append(arg)
        index += 1
    if len(positional) != 1:
        raise Fatal(f"`alloy run` takes exactly one config path, got {positional!r}")
    return positional[0], flags


def check_config(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as problem:
        raise Fatal(f"cannot read the config file {path}: {problem.strerror}") from None
    if not text.strip():
        raise Fatal(f"the config file {path} is empty")
    components = [f'{kind} "{label}"' for kind, label in COMPONENT.findall(text)]
    if not any(component.startswith("loki.write ") for component in components):
        raise Fatal(f"the config file {path} has no loki.write component: its logs would go nowhere")
    return components


def check_storage(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        probe = Path(path) / f".standin-write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as problem:
        raise Fatal(f"--storage.path={path} is not writable as uid {os.getuid()}: {problem.strerror}") from None


def metrics_text(started: float) -> str:
    lines = ["# HELP alloy_build_info Alloy build information (stand-in).", "# TYPE alloy_build_info gauge",
             f'alloy_build_info{{version="{VERSION}"}} 1',
             "# TYPE process_start_time_seconds gauge", f"process_start_time_seconds {started:.3f}",
             "# HELP nginx_http_requests_total nginx requests by status (stand-in: shape only).",
             "# TYPE nginx_http_requests_total counter",
             'nginx_http_requests_total{job="nginx",status="200"} 0',
             "# HELP nginx_http_request_duration_seconds nginx request time (stand-in: shape only).",
             "# TYPE nginx_http_request_duration_seconds histogram"]
    lines += [f'nginx_http_request_duration_seconds_bucket{{job="nginx",le="{le}"}} 0' for le in BUCKETS]
    lines += ['nginx_http_request_duration_seconds_sum{job="nginx"} 0',
              'nginx_http_request_duration_seconds_count{job="nginx"} 0',
              "# HELP admin_ssh_failed_logins_total failed admin SSH logins (stand-in: shape only).",
              "# TYPE admin_ssh_failed_logins_total counter",
              'admin_ssh_failed_logins_total{job="journal"} 0']
    return "\n".join(lines) + "\n"


def make_handler(started: float):
    class Handler(BaseHTTPRequestHandler):
        server_version = f"alloy-standin/{VERSION}"

        def log_message(self, format: str, *args) -> None:
            log("debug", "request", detail=format % args)

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/-/ready":
                self._send(200, b"Alloy is ready.\n")
            elif path == "/-/healthy":
                self._send(200, b"All Alloy components are healthy.\n")
            elif path == "/metrics":
                self._send(200, metrics_text(started).encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b"404 page not found\n")

    return Handler


def run(argv: list[str]) -> int:
    log("info", "starting Alloy (gitea-stack testbed stand-in)", version=VERSION)
    try:
        config, flags = parse_run(argv)
        components = check_config(config)
        storage = flags.get("storage.path", "data-alloy/")
        check_storage(storage)
        listen = flags.get("server.http.listen-addr", "127.0.0.1:12345")
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            raise Fatal(f"--server.http.listen-addr={listen} is not HOST:PORT")
    except Fatal as problem:
        log("error", f"error during the initial load: {problem}")
        return 1
    log("info", "config loaded", file=config, components=len(components), storage=storage,
        flags=",".join(f"{k}={v}" for k, v in flags.items()))
    for component in components:
        log("info", "component declared (not run by the stand-in)", component=component)
    httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), make_handler(time.time()))
    httpd.daemon_threads = True

    def on_signal(signum, _frame) -> None:
        log("info", "interrupt received", signal=signal.Signals(signum).name)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("info", "now listening for http traffic", addr=f"{host}:{httpd.server_address[1]}")
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    log("info", "Alloy stopped")
    return 0


def main(argv: list[str]) -> int:
    if argv in (["--version"], ["-v"]):
        print(f"alloy, version {VERSION} (gitea-stack testbed stand-in)")
        return 0
    if argv[:1] == ["run"]:
        return run(argv[1:])
    print(f"alloy: the stand-in knows `run` and `--version`, not {argv!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
