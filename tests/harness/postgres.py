"""A PostgreSQL cluster of the test's own: Debian's server binaries, initdb in a directory of the
test, the postgres user, a unix socket only (no TCP), stopped by its PID.

`postgres_tools()` finds the binaries (a missing server fails the test and names the package);
`start_postgres(root, tools)` returns (process, socket directory, port) and `psql_argv(...)` the
psql command line for it; `stop_postgres(process)` is PostgreSQL's fast shutdown.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.tools import require_tool, stop_process

PORT = 5432  # listen_addresses is empty: the port only names the socket file


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs argv, failing the test with its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=kwargs.pop("timeout", 120), **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def postgres_tools() -> dict[str, str]:
    require_tool("pg_ctl", "postgresql")
    major = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not major:
        pytest.fail("this test needs PostgreSQL's server (Debian package postgresql); tests/run.sh installs it as root")
    server_bin = major[-1].parent
    return {name: str(server_bin / name) for name in ("initdb", "postgres", "pg_dump", "pg_restore", "psql",
                                                      "pg_isready", "createdb")}


def start_postgres(root: Path, tools: dict[str, str]) -> tuple[subprocess.Popen, Path, int]:
    data, sockets = root / "pgdata", root / "pgsocket"
    for directory in (data, sockets):
        directory.mkdir(mode=0o700)
        shutil.chown(directory, "postgres", "postgres")
    run(tools["initdb"], "--pgdata", str(data), "--auth", "trust", "--username", "postgres", "--no-sync",
        user="postgres", group="postgres", cwd=root)
    with (root / "postgres.log").open("wb") as log:
        process = subprocess.Popen([tools["postgres"], "-D", str(data), "-k", str(sockets), "-p", str(PORT),
                                    "-c", "listen_addresses=", "-c", "fsync=off"],
                                   user="postgres", group="postgres", cwd=root,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = [tools["pg_isready"], "--host", str(sockets), "--port", str(PORT), "--quiet"]
        deadline = time.monotonic() + 30
        while process.poll() is None and subprocess.run(ready, check=False).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not accept connections within 30s: {(root / 'postgres.log').read_text()}")
            time.sleep(0.1)
        if process.poll() is not None:
            pytest.fail(f"PostgreSQL did not start: {(root / 'postgres.log').read_text()}")
    except BaseException:
        stop_process(process)
        raise
    return process, sockets, PORT


def psql_argv(tools: dict[str, str], sockets: Path, port: int = PORT) -> list[str]:
    return [tools["psql"], "--host", str(sockets), "--port", str(port), "--username", "postgres", "-q"]


def stop_postgres(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            stop_process(process)


def give_database_to_gitea(psql: list[str]) -> None:
    """The `gitea` role and its ownership of the gitea database, as deploy.sh's sync_database_role
    leaves them (restore.sh restores into a database Gitea's role owns)."""
    run(*psql, "--dbname", "postgres", "-c", "CREATE ROLE gitea LOGIN")
    run(*psql, "--dbname", "postgres", "-c", "ALTER DATABASE gitea OWNER TO gitea")
