#!/usr/bin/env python3
"""restore.sh's helpers that need Python: backup runs from `restic snapshots --json`, and JSON.

A run of backup.sh is two snapshots tagged gitea-stack and run:<RUN_ID>, one also tagged database
and one files; a run is complete when both are there.

Usage: restore-support.py runs [--json]
         reads `restic snapshots --json` on stdin; prints the runs newest first, one line each
         (RUN_ID TIME DATABASE_ID FILES_ID COMPLETE; times in UTC), or a JSON list with --json
       restore-support.py pick RUN
         reads the same on stdin; prints "RUN_ID TIME DATABASE_ID FILES_ID AGE_SECONDS" of the run named RUN:
         `latest` (the newest complete run), a run id, or the id (or its prefix) of one of its snapshots
       restore-support.py meter WHAT
         copies stdin to stdout, logging "WHAT: N MiB so far" on stderr every PROGRESS_INTERVAL_SECONDS
         (default 30)
       restore-support.py json KEY=VALUE...
         prints a JSON object of the pairs; values that are whole numbers become numbers
Exit codes: 0 done; 2 bad usage; 4 no such run (or, for latest, no complete run); 6 the run is incomplete.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timezone

NO_SUCH_RUN = 4
INCOMPLETE = 6


def restic_time(text: str) -> float:
    """Seconds since the epoch of restic's RFC 3339 time (nanoseconds and any offset)."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        raise ValueError(f"not a restic time: {text!r}")
    stamp, fraction, offset = match.groups()
    moment = datetime.fromisoformat(stamp + ("+00:00" if offset == "Z" else offset))
    return moment.timestamp() + float(f"0.{fraction or 0}")


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_runs(snapshots: list[dict]) -> list[dict]:
    runs: dict[str, dict] = {}
    for snapshot in snapshots or []:
        tags = snapshot.get("tags") or []
        run_id = next((tag.removeprefix("run:") for tag in tags if tag.startswith("run:")), None)
        kind = next((tag for tag in tags if tag in ("database", "files")), None)
        if "gitea-stack" not in tags or run_id is None or kind is None:
            continue
        run = runs.setdefault(run_id, {"run_id": run_id, "started": restic_time(snapshot["time"]),
                                       "host": snapshot.get("hostname"), "database": None, "files": None})
        run[kind] = snapshot["id"]
        run["started"] = min(run["started"], restic_time(snapshot["time"]))
    for run in runs.values():
        run["complete"] = bool(run["database"] and run["files"])
        run["time"] = utc(run["started"])
        run["age_s"] = max(int(time.time() - run.pop("started")), 0)
    return sorted(runs.values(), key=lambda run: (run["time"], run["run_id"]), reverse=True)


def print_runs(runs: list[dict], as_json: bool) -> int:
    if as_json:
        print(json.dumps(runs, indent=2))
        return 0
    for run in runs:
        print(run["run_id"], run["time"], run["database"] or "-", run["files"] or "-",
              "complete" if run["complete"] else "incomplete")
    return 0


def pick(runs: list[dict], wanted: str) -> int:
    if wanted == "latest":
        found = next((run for run in runs if run["complete"]), None)
        if found is None:
            print("restore-support: the repository holds no complete backup run", file=sys.stderr)
            return NO_SUCH_RUN
    else:
        found = next((run for run in runs if wanted in (run["run_id"], f"run:{run['run_id']}")
                      or any(run[kind] and run[kind].startswith(wanted) for kind in ("database", "files"))), None)
        if found is None:
            print(f"restore-support: no backup run or snapshot {wanted!r} in the repository", file=sys.stderr)
            return NO_SUCH_RUN
        if not found["complete"]:
            print(f"restore-support: run {found['run_id']} lacks its {'files' if found['database'] else 'database'}"
                  " snapshot (it did not finish); pick another run from --list", file=sys.stderr)
            return INCOMPLETE
    print(found["run_id"], found["time"], found["database"], found["files"], found["age_s"])
    return 0


def meter(what: str) -> int:
    interval = float(os.environ.get("PROGRESS_INTERVAL_SECONDS", "30"))
    done, last = 0, time.monotonic()
    while chunk := sys.stdin.buffer.read1(1 << 20):
        sys.stdout.buffer.write(chunk)
        done += len(chunk)
        if time.monotonic() - last >= interval:
            last = time.monotonic()
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} restore.sh: {what}: "
                  f"{done >> 20} MiB so far", file=sys.stderr, flush=True)
    sys.stdout.buffer.flush()
    return 0


def pairs_to_json(pairs: list[str]) -> int:
    result: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        result[key] = int(value) if value.isdigit() else value
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str]) -> int:
    command, arguments = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if command in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if command == "runs" and arguments in ([], ["--json"]):
        return print_runs(read_runs(json.load(sys.stdin)), arguments == ["--json"])
    if command == "pick" and len(arguments) == 1:
        return pick(read_runs(json.load(sys.stdin)), arguments[0])
    if command == "meter" and len(arguments) == 1:
        return meter(arguments[0])
    if command == "json":
        return pairs_to_json(arguments)
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
