#!/usr/bin/python3
"""A stand-in for docker.io/grafana/grafana:13.2.0 in the gitea-stack testbed; Python stdlib and PyYAML.

`grafana server [--homepath DIR] [--config PATH]` (what the image's /run.sh starts) checks what the
stack gives the real Grafana at start, and fails (exit 1, naming the file or setting) otherwise:
  - the ini file (--config, else GF_PATHS_CONFIG, else /etc/grafana/grafana.ini) parses, with
    GF_<SECTION>_<KEY> and GF_<SECTION>_<KEY>__FILE environment overrides applied;
  - every `$__file{PATH}` in it names a readable file (read and trimmed, as Grafana does) and every
    `$__env{NAME}` a set variable;
  - the data directory ([paths] data / GF_PATHS_DATA) is writable;
  - every YAML file under the provisioning directory parses, and every dashboard JSON under the
    `options.path` of each dashboard provider parses.
It then serves HTTP on [server] http_addr:http_port, below root_url's path when serve_from_sub_path
is on: GET <sub>/api/health (200, {"database": "ok", "version": "13.2.0"}), GET <sub>/metrics (a
few Prometheus lines, when [metrics] enabled) and GET <sub>/login (a page naming the OAuth provider,
[auth.generic_oauth] name). Logs go to stdout; SIGTERM or SIGINT stops it (exit 0).

`grafana cli [--homepath DIR] [--config PATH] admin reset-admin-password --password-from-stdin`
(or with the password as an argument) reads the password (non-empty, else exit 1) and records its
SHA-256 in <data>/standin-admin-password.sha256, so that a test can see it was applied.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

VERSION = "13.2.0"
DEFAULT_CONFIG = "/etc/grafana/grafana.ini"
PASSWORD_RECORD = "standin-admin-password.sha256"
EXPANSION = re.compile(r"\$__(file|env)\{([^}]*)\}")


class Fatal(Exception):
    pass


def log(level: str, message: str, **fields: object) -> None:
    record = {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
              "logger": "standin", "msg": message, **fields}
    print(json.dumps(record), flush=True)


def _env_name(section: str, key: str) -> str:
    return "GF_" + re.sub(r"[.\-]", "_", section).upper() + "_" + key.upper()


def _expand(section: str, key: str, value: str) -> str:
    def replace(match: re.Match) -> str:
        kind, argument = match.group(1), match.group(2)
        if kind == "env":
            if argument not in os.environ:
                raise Fatal(f"[{section}] {key}: $__env{{{argument}}}: the variable is not set")
            return os.environ[argument]
        try:
            return Path(argument).read_text().strip()
        except OSError as problem:
            raise Fatal(f"[{section}] {key}: failed to read file {argument} for $__file "
                        f"(as uid {os.getuid()}): {problem.strerror}") from None
    return EXPANSION.sub(replace, value)


def load_config(path: str) -> dict[str, dict[str, str]]:
    """The ini file with the environment's overrides and every $__file/$__env expanded."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except OSError as problem:
        raise Fatal(f"failed to read the configuration {path}: {problem.strerror}") from None
    except configparser.Error as problem:
        raise Fatal(f"failed to parse the configuration {path}: {problem}") from None
    config = {section: dict(parser.items(section)) for section in parser.sections()}
    for section in ("paths", "server", "security", "log", "metrics"):
        config.setdefault(section, {})
    # GF_<SECTION>_<KEY>[__FILE] for keys the file does not set (Grafana knows every key from its
    # defaults.ini; the stand-in only from the sections the file or the list above has).
    for variable in os.environ:
        name = variable.removesuffix("__FILE")
        for section in sorted(config, key=len, reverse=True):
            prefix = _env_name(section, "")
            if name.startswith(prefix) and len(name) > len(prefix):
                config[section].setdefault(name[len(prefix):].lower(), "")
                break
    for section, values in config.items():
        for key in list(values):
            name = _env_name(section, key)
            if name + "__FILE" in os.environ:
                file = os.environ[name + "__FILE"]
                try:
                    values[key] = Path(file).read_text().strip()
                except OSError as problem:
                    raise Fatal(f"{name}__FILE: failed to read file {file}: {problem.strerror}") from None
            elif name in os.environ:
                values[key] = os.environ[name]
            values[key] = _expand(section, key, values[key])
    for variable in ("DATA", "PROVISIONING", "PLUGINS", "LOGS"):
        if f"GF_PATHS_{variable}" in os.environ:
            config.setdefault("paths", {})[variable.lower()] = os.environ[f"GF_PATHS_{variable}"]
    return config


def data_dir(config: dict[str, dict[str, str]]) -> Path:
    return Path(config.get("paths", {}).get("data") or "/var/lib/grafana")


def check_data_dir(path: Path) -> None:
    probe = path / f".standin-write-check-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as problem:
        raise Fatal(f"the data directory {path} is not writable as uid {os.getuid()}: {problem.strerror}") from None


def check_provisioning(config: dict[str, dict[str, str]]) -> tuple[int, int]:
    """(YAML files, dashboards) parsed under the provisioning directory and the providers' paths."""
    root = Path(config.get("paths", {}).get("provisioning") or "/etc/grafana/provisioning")
    if not root.is_dir():
        log("warn", "no provisioning directory", path=str(root))
        return 0, 0
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    dashboards = 0
    for file in files:
        try:
            document = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as problem:
            raise Fatal(f"provisioning: cannot parse {file}: {problem}") from None
        if not isinstance(document, dict):
            raise Fatal(f"provisioning: {file} is not a mapping")
        for provider in document.get("providers") or []:
            path = ((provider or {}).get("options") or {}).get("path")
            if not path:
                continue
            if not Path(path).is_dir():
                raise Fatal(f"provisioning: {file}: provider {provider.get('name')!r}: "
                            f"the dashboards path {path} is not a directory")
            for dashboard in sorted(Path(path).rglob("*.json")):
                try:
                    json.loads(dashboard.read_text())
                except (OSError, ValueError) as problem:
                    raise Fatal(f"provisioning: dashboard {dashboard}: {problem}") from None
                dashboards += 1
    return len(files), dashboards


def _prefix(server: dict[str, str]) -> str:
    if server.get("serve_from_sub_path", "false").lower() != "true":
        return ""
    root_url = server.get("root_url", "")
    for name in ("protocol", "domain", "http_port"):
        root_url = root_url.replace(f"%({name})s", server.get(name, ""))
    return urllib.parse.urlsplit(root_url).path.rstrip("/")


def make_handler(config: dict[str, dict[str, str]], started: float):
    prefix = _prefix(config.get("server", {}))
    metrics_enabled = config.get("metrics", {}).get("enabled", "true").lower() == "true"
    oauth = config.get("auth.generic_oauth", {})
    provider = oauth.get("name", "OAuth") if oauth.get("enabled", "false").lower() == "true" else None
    counts: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        server_version = f"grafana-standin/{VERSION}"

        def log_message(self, format: str, *args) -> None:
            log("info", "Request", method=self.command, path=self.path, detail=format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                self._send(404, b"not found below the sub-path " + prefix.encode() + b"\n", "text/plain")
                return
            route = path[len(prefix):] or "/"
            counts[route] = counts.get(route, 0) + 1
            if route == "/api/health":
                body = json.dumps({"database": "ok", "version": VERSION}).encode()
                self._send(200, body, "application/json")
            elif route == "/metrics" and metrics_enabled:
                lines = ["# TYPE grafana_build_info gauge",
                         f'grafana_build_info{{edition="oss",version="{VERSION}"}} 1',
                         "# TYPE process_start_time_seconds gauge",
                         f"process_start_time_seconds {started:.3f}",
                         "# TYPE grafana_http_request_total counter"]
                lines += [f'grafana_http_request_total{{handler="{r}"}} {n}' for r, n in sorted(counts.items())]
                self._send(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")
            elif route == "/login":
                sign_in = f"Sign in with {provider}" if provider else "Sign in"
                page = f"<!doctype html><title>Grafana</title><a href=\"{prefix}/login/generic_oauth\">{sign_in}</a>\n"
                self._send(200, page.encode(), "text/html; charset=utf-8")
            else:
                self._send(404, b'{"message":"Not found"}', "application/json")

    return Handler


def _take(argv: list[str], name: str) -> str | None:
    """Removes --name VALUE / --name=VALUE (one or two dashes) from argv; its value or None."""
    for index, arg in enumerate(argv):
        for dashes in ("--", "-"):
            if arg == dashes + name and index + 1 < len(argv):
                value = argv[index + 1]
                del argv[index:index + 2]
                return value
            if arg.startswith(f"{dashes}{name}="):
                del argv[index]
                return arg.split("=", 1)[1]
    return None


def serve(argv: list[str]) -> int:
    _take(argv, "homepath")
    _take(argv, "packaging")
    _take(argv, "pidfile")
    config_path = _take(argv, "config") or os.environ.get("GF_PATHS_CONFIG", DEFAULT_CONFIG)
    unknown = [arg for arg in argv if not arg.startswith("cfg:")]
    if unknown:
        log("error", "unknown arguments", arguments=unknown)
        return 1
    log("info", "Starting Grafana (gitea-stack testbed stand-in)", version=VERSION, config=config_path)
    try:
        config = load_config(config_path)
        check_data_dir(data_dir(config))
        files, dashboards = check_provisioning(config)
    except Fatal as problem:
        log("error", f"Grafana-server init failed: {problem}")
        print(f"Grafana-server init failed: {problem}", file=sys.stderr, flush=True)
        return 1
    log("info", "provisioning checked", yaml_files=files, dashboards=dashboards)
    server_section = config.get("server", {})
    port = int(server_section.get("http_port") or 3000)
    address = server_section.get("http_addr") or ""
    httpd = ThreadingHTTPServer((address, port), make_handler(config, time.time()))
    httpd.daemon_threads = True

    def on_signal(signum, _frame) -> None:
        log("info", "Shutdown started", reason=signal.Signals(signum).name)
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("info", "HTTP Server Listen", address=f"{address or '[::]'}:{httpd.server_address[1]}",
        subUrl=_prefix(server_section), protocol="http")
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    log("info", "Stopped")
    return 0


def cli(argv: list[str]) -> int:
    _take(argv, "homepath")
    config_path = _take(argv, "config") or os.environ.get("GF_PATHS_CONFIG", DEFAULT_CONFIG)
    from_stdin = "--password-from-stdin" in argv
    argv = [arg for arg in argv if arg != "--password-from-stdin"]
    if argv[:2] != ["admin", "reset-admin-password"] or len(argv) > 3 or (from_stdin and len(argv) == 3):
        print(f"grafana cli: the stand-in knows `admin reset-admin-password [--password-from-stdin | PASSWORD]`, "
              f"not {argv!r}", file=sys.stderr)
        return 1
    password = sys.stdin.read().rstrip("\r\n") if from_stdin else (argv[2] if len(argv) == 3 else "")
    if not password:
        print("Error: ✗ new password is empty" + (" (nothing on standard input)" if from_stdin else ""),
              file=sys.stderr)
        return 1
    try:
        config = load_config(config_path)
        directory = data_dir(config)
        (directory / PASSWORD_RECORD).write_text(hashlib.sha256(password.encode()).hexdigest() + "\n")
    except Fatal as problem:
        print(f"Error: ✗ {problem}", file=sys.stderr)
        return 1
    except OSError as problem:
        print(f"Error: ✗ cannot write {directory / PASSWORD_RECORD}: {problem.strerror}", file=sys.stderr)
        return 1
    print("\nAdmin password changed successfully ✔\n")
    return 0


def main(argv: list[str]) -> int:
    if argv in (["--version"], ["-v"]):
        print(f"grafana version {VERSION}")
        return 0
    if argv[:1] == ["server"]:
        return serve(argv[1:])
    if argv[:1] == ["cli"]:
        return cli(argv[1:])
    print(f"grafana: the stand-in knows `server` and `cli`, not {argv!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
