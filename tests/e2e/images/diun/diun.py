#!/usr/bin/python3
"""A stand-in for Diun 4.33.0 in the gitea-stack testbed; Python stdlib and curl only.

`diun serve` checks what the stack's compose file gives the real Diun, then idles until SIGTERM
or SIGINT (exit 0):
  - DIUN_NOTIF_MAIL_USERNAMEFILE / DIUN_NOTIF_MAIL_PASSWORDFILE (when set) name readable files;
  - DIUN_DB_PATH (default /data/diun.db) can be opened for writing;
  - with DIUN_PROVIDERS_DOCKER=true, the Docker API at DIUN_PROVIDERS_DOCKER_ENDPOINT (default
    unix:///var/run/docker.sock; tcp://host:port too) answers the calls the real Diun's Docker
    provider makes: GET /version, GET /containers/json?filters=..., and GET /images/<image>/json
    for each running container it watches (label diun.enable, or DIUN_PROVIDERS_DOCKER_WATCHBYDEFAULT);
  - with DIUN_PROVIDERS_FILE_FILENAME, that YAML file is a list of images, each with a `name`.
Any failure exits 1 with a message naming the setting. It logs the schedule and the counts.
`diun --version` prints the version; other commands and flags are rejected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import yaml

VERSION = "4.33.0"


def log(level: str, message: str) -> None:
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    print(f"{stamp} {level} {message}", file=sys.stderr, flush=True)


class Fatal(Exception):
    pass


def check_secret_files() -> None:
    for variable in ("DIUN_NOTIF_MAIL_USERNAMEFILE", "DIUN_NOTIF_MAIL_PASSWORDFILE"):
        path = os.environ.get(variable)
        if not path:
            continue
        try:
            with open(path, "rb") as handle:
                content = handle.read()
        except OSError as problem:
            raise Fatal(f"{variable}: cannot read {path} as uid {os.getuid()}: {problem.strerror}") from None
        if not content.strip():
            raise Fatal(f"{variable}: {path} is empty")
        log("INF", f"{variable}: read {path}")


def check_database() -> None:
    path = os.environ.get("DIUN_DB_PATH", "/data/diun.db")
    try:
        with open(path, "a"):
            pass
    except OSError as problem:
        raise Fatal(f"DIUN_DB_PATH: cannot open {path} for writing: {problem.strerror}") from None


def docker_get(endpoint: str, path: str) -> object:
    """GET a Docker API path through the endpoint Diun is given; JSON, or Fatal naming the call."""
    if endpoint.startswith("unix://"):
        target = ["--unix-socket", endpoint.removeprefix("unix://"), f"http://localhost{path}"]
    elif endpoint.startswith("tcp://"):
        target = [f"http://{endpoint.removeprefix('tcp://')}{path}"]
    else:
        raise Fatal(f"DIUN_PROVIDERS_DOCKER_ENDPOINT: the stand-in speaks unix:// and tcp://, not {endpoint}")
    result = subprocess.run(["curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "10",
                             "--globoff", *target], capture_output=True, text=True)
    if result.returncode != 0:
        raise Fatal(f"Docker API GET {path} through {endpoint} failed: "
                    f"{(result.stderr.strip() + ' ' + result.stdout.strip()).strip() or 'curl failed'}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise Fatal(f"Docker API GET {path} through {endpoint} answered with something else than JSON") from None


def list_containers() -> None:
    if os.environ.get("DIUN_PROVIDERS_DOCKER", "false").lower() != "true":
        log("INF", "Docker provider disabled")
        return
    endpoint = os.environ.get("DIUN_PROVIDERS_DOCKER_ENDPOINT", "unix:///var/run/docker.sock")
    version = docker_get(endpoint, "/version")
    filters = urllib.parse.quote(json.dumps({"status": ["running"]}))
    containers = docker_get(endpoint, f"/containers/json?filters={filters}")
    watch_by_default = os.environ.get("DIUN_PROVIDERS_DOCKER_WATCHBYDEFAULT", "false").lower() == "true"
    watched = [c for c in containers
               if (c.get("Labels") or {}).get("diun.enable", str(watch_by_default)).lower() == "true"]
    log("INF", f"Found {len(containers)} containers through {endpoint} (Docker {version.get('Version')}), "
               f"{len(watched)} to watch")
    for container in watched:
        image = docker_get(endpoint, f"/images/{container.get('Image')}/json")
        log("INF", f"Watching {container.get('Image')} ({', '.join(container.get('Names') or [])}, "
                   f"image {image.get('Id', '?')[:19]})")


def list_file_images() -> None:
    path = os.environ.get("DIUN_PROVIDERS_FILE_FILENAME")
    if not path:
        return
    try:
        with open(path) as handle:
            items = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as problem:
        raise Fatal(f"DIUN_PROVIDERS_FILE_FILENAME: cannot read {path}: {problem}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("name") for i in items):
        raise Fatal(f"DIUN_PROVIDERS_FILE_FILENAME: {path} is not a list of images with a name")
    for item in items:
        log("INF", f"Watching {item['name']} (file provider, update_policy="
                   f"{(item.get('metadata') or {}).get('update_policy', '-')})")


def serve() -> int:
    log("INF", f"Starting Diun version={VERSION} (gitea-stack testbed stand-in)")
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log("WRN", f"Caught signal {signal.Signals(signum).name}")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        check_secret_files()
        check_database()
        list_containers()
        list_file_images()
    except Fatal as problem:
        log("FTL", str(problem))
        return 1
    schedule = os.environ.get("DIUN_WATCH_SCHEDULE", "")
    if schedule:
        log("INF", f"Cron initialized with schedule {schedule}")
    else:
        log("INF", "No schedule defined; watching once at start only")
    mail = os.environ.get("DIUN_NOTIF_MAIL_HOST")
    if mail:
        log("INF", f"Mail notifications through {mail}:{os.environ.get('DIUN_NOTIF_MAIL_PORT', '25')} "
                   f"to {os.environ.get('DIUN_NOTIF_MAIL_TO', '(nobody)')}")
    while not stop.wait(1):
        pass
    log("INF", "Stopped")
    return 0


def main(argv: list[str]) -> int:
    if argv in (["--version"], ["-v"], ["version"]):
        print(VERSION)
        return 0
    if argv == ["serve"]:
        return serve()
    print(f"diun: error: unexpected arguments {argv!r}; the stand-in knows `serve` and `--version`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
