"""`docker` for restore-drill.sh: a scratch PostgreSQL "container" is a real cluster of the test's own.

Run as `python3 postgres_container_standin.py CONFIG_JSON ARGS...` from a `docker` wrapper on PATH
(see write_docker_wrapper). CONFIG_JSON names:
  log        a file: one JSON line per call (the argv)
  state_dir  a directory: one <name>.json per running "container" (pid, socket, data, volume)
  compose    the stand-in that `docker compose ...` calls are handed to (backup.sh's pg_dump)
  image      the only image `docker run` accepts (the stack's POSTGRES_IMAGE)
  tools      absolute paths of initdb, postgres, pg_isready, psql, createdb, pg_restore
What it knows:
  run -d --rm --network none --name N ... IMAGE   initdb (as the postgres user, trust) and postgres on a
                                                  unix socket only, in a directory of its own; detached
  exec [-i] N pg_isready|psql|createdb|pg_restore ARGS  the real tool, with the cluster's --host/--port
                                                  in place of the caller's; stdin passed through
  rm -f N, stop N                                 stops the cluster by its PID, removes its directory
  logs [--tail K] N                               the cluster's log
Anything else exits 99. The product scripts never know: they call `docker` as on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT_TOOLS = ("pg_isready", "psql", "createdb", "pg_restore")


def write_docker_wrapper(path: Path, config: dict) -> None:
    """Writes `docker` at `path` and its CONFIG_JSON beside it."""
    config_file = path.with_name("docker-standin.json")
    config_file.write_text(json.dumps(config))
    path.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{Path(__file__).resolve()}' '{config_file}' \"$@\"\n")
    path.chmod(0o755)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    pid = state["pid"]
    if alive(pid):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        deadline = time.monotonic() + 20
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(state["directory"], ignore_errors=True)
    state_file.unlink(missing_ok=True)


def stop_all(state_dir: Path) -> None:
    """For a test's teardown: whatever a script left running."""
    for state_file in state_dir.glob("*.json"):
        stop(state_file)


def run_container(config: dict, args: list[str]) -> int:
    options: dict[str, list[str]] = {}
    flags = {"-d", "--detach", "--rm"}
    index = 0
    while index < len(args) and args[index].startswith("-"):
        option = args[index]
        if option in flags:
            options.setdefault(option, []).append("")
            index += 1
        elif "=" in option:
            name, _, value = option.partition("=")
            options.setdefault(name, []).append(value)
            index += 1
        else:
            options.setdefault(option, []).append(args[index + 1])
            index += 2
    image, command = args[index], args[index + 1:]
    name = (options.get("--name") or [""])[0]
    problems = []
    if image != config["image"]:
        problems.append(f"image {image}, not the stack's {config['image']}")
    if (options.get("--network") or [""])[0] != "none":
        problems.append("a network (the drill's container must have none)")
    if not name or command or not ({"-d", "--detach"} & set(options)) or "--rm" not in options:
        problems.append("not a detached, named, --rm container of the image's own command")
    state_dir = Path(config["state_dir"])
    if (state_dir / f"{name}.json").exists():
        problems.append(f"the name {name} is in use")
    if problems:
        print(f"docker stand-in: refused: {'; '.join(problems)}", file=sys.stderr)
        return 125
    directory = Path(tempfile.mkdtemp(prefix="pg-", dir=state_dir))
    directory.chmod(0o755)
    data, sockets = directory / "data", directory / "socket"
    for path in (data, sockets):
        path.mkdir(mode=0o700)
        shutil.chown(path, "postgres", "postgres")
    tools = config["tools"]
    subprocess.run([tools["initdb"], "--pgdata", str(data), "--auth", "trust", "--username", "postgres",
                    "--no-sync"], user="postgres", group="postgres", cwd=directory, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = (directory / "postgres.log").open("wb")
    process = subprocess.Popen([tools["postgres"], "-D", str(data), "-k", str(sockets), "-p", "5432",
                                "-c", "listen_addresses=", "-c", "fsync=off"],
                               user="postgres", group="postgres", cwd=directory, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    (state_dir / f"{name}.json").write_text(json.dumps({
        "pid": process.pid, "directory": str(directory), "socket": str(sockets), "image": image,
        "volumes": options.get("--volume", []) + options.get("-v", []), "env": options.get("--env", []) + options.get("-e", [])}))
    print(f"{process.pid:064x}")
    return 0


def exec_in_container(config: dict, args: list[str]) -> int:
    if args and args[0] in ("-i", "--interactive"):
        args = args[1:]
    name, tool, tool_args = args[0], args[1], args[2:]
    state_file = Path(config["state_dir"]) / f"{name}.json"
    if not state_file.exists():
        print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
        return 1
    if tool not in CLIENT_TOOLS:
        print(f"docker stand-in: exec of {tool} is not known", file=sys.stderr)
        return 99
    state = json.loads(state_file.read_text())
    kept, skip = [], False
    for argument in tool_args:
        if skip:
            skip = False
        elif argument in ("-h", "--host", "-p", "--port"):
            skip = True
        elif not argument.startswith(("--host=", "--port=")):
            kept.append(argument)
    os.execv(config["tools"][tool], [tool, *kept, f"--host={state['socket']}", "--port=5432"])
    return 99  # not reached


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    args = argv[2:]
    with open(config["log"], "a") as log:
        log.write(json.dumps(args) + "\n")
    if not args:
        return 99
    command, rest = args[0], args[1:]
    if command == "compose":
        os.execv("/bin/bash", ["bash", config["compose"], *args])
    if command == "run":
        return run_container(config, rest)
    if command == "exec":
        return exec_in_container(config, rest)
    if command in ("rm", "stop"):
        names = [argument for argument in rest if not argument.startswith("-")]
        missing = 0
        for name in names:
            state_file = Path(config["state_dir"]) / f"{name}.json"
            if state_file.exists():
                stop(state_file)
                print(name)
            else:
                missing += 1
                print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
        return 1 if missing and "-f" not in rest and "--force" not in rest else 0
    if command == "logs":
        state_file = Path(config["state_dir"]) / f"{rest[-1]}.json"
        if state_file.exists():
            sys.stdout.write((Path(json.loads(state_file.read_text())["directory"]) / "postgres.log").read_text())
            return 0
        return 1
    print(f"docker stand-in: unexpected call: {args}", file=sys.stderr)
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv))
