#!/usr/bin/python3
"""A stand-in for Diun 4.33.0 in the gitea-stack testbed; Python stdlib and curl only.

`diun serve` checks what the stack's compose file gives the real Diun, then idles until SIGTERM
or SIGINT (exit 0):
  - DIUN_NOTIF_MAIL_USERNAMEFILE / DIUN_NOTIF_MAIL_PASSWORDFILE (when set) name readable files;
  - DIUN_DB_PATH (default /data/diun.db) can be opened for writing;
  - with DIUN_PROVIDERS_DOCKER=true, the Docker socket (DIUN_PROVIDERS_DOCKER_ENDPOINT, default
    unix:///var/run/docker.sock) lists the containers: `curl --unix-socket ... /containers/json`.
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


def list_containers() -> None:
    if os.environ.get("DIUN_PROVIDERS_DOCKER", "false").lower() != "true":
        log("INF", "Docker provider disabled")
        return
    endpoint = os.environ.get("DIUN_PROVIDERS_DOCKER_ENDPOINT", "unix:///var/run/docker.sock")
    if not endpoint.startswith("unix://"):
        raise Fatal(f"DIUN_PROVIDERS_DOCKER_ENDPOINT: the stand-in speaks to unix sockets only, not {endpoint}")
    socket_path = endpoint.removeprefix("unix://")
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "10", "--unix-socket", socket_path,
         "http://localhost/containers/json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise Fatal(f"cannot list containers through {socket_path}: {result.stderr.strip() or 'curl failed'}")
    try:
        containers = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise Fatal(f"{socket_path} answered /containers/json with something else than JSON") from None
    watch_by_default = os.environ.get("DIUN_PROVIDERS_DOCKER_WATCHBYDEFAULT", "false").lower() == "true"
    watched = [c for c in containers
               if (c.get("Labels") or {}).get("diun.enable", str(watch_by_default)).lower() == "true"]
    log("INF", f"Found {len(containers)} containers through {socket_path}, {len(watched)} to watch")
    for container in watched:
        log("INF", f"Watching {container.get('Image')} ({', '.join(container.get('Names') or [])})")


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
