#!/usr/bin/env python3
"""update.sh's JSON: the status file the health check and monitoring read, and --json output.

Usage: update-support.py record STATUS_FILE SERVICE OUTCOME DETAIL FROM TO EXIT_CODE [ROLLBACK_SECONDS [SETTLED_SECONDS]]
         merges this run into STATUS_FILE (mode 0644, atomically): `services.<SERVICE>` and `last`
       update-support.py outcome SERVICE OUTCOME DETAIL FROM TO EXIT_CODE [ROLLBACK_SECONDS [SETTLED_SECONDS]]
         prints this run as one JSON line
ROLLBACK_SECONDS: from the failed health check until the previous image answered its healthcheck
again (served); SETTLED_SECONDS: until Docker marked it healthy.
Exit codes: 0 done; 1 the status file could not be written; 2 bad usage.
"""

from __future__ import annotations

import datetime
import json
import os
import sys


def run_entry(arguments: list[str]) -> dict:
    service, outcome, detail, previous, target, code, *rest = arguments
    entry = {"service": service, "outcome": outcome, "detail": detail, "from": previous, "to": target,
             "exit_code": int(code),
             "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for key, value in zip(("rollback_seconds", "settled_seconds"), rest):
        if value:
            entry[key] = float(value)
    return entry


def record(path: str, entry: dict) -> None:
    try:
        with open(path) as existing:
            status = json.load(existing)
    except (OSError, ValueError):
        status = {}
    status.setdefault("services", {})[entry["service"]] = entry
    status["last"] = entry
    with open(path + ".new", "w") as new:
        json.dump(status, new, indent=2, sort_keys=True)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) >= 8 and argv[0] == "record":
        try:
            record(argv[1], run_entry(argv[2:]))
        except OSError as error:
            print(f"update-support: cannot write {argv[1]}: {error}", file=sys.stderr)
            return 1
        return 0
    if len(argv) >= 7 and argv[0] == "outcome":
        print(json.dumps(run_entry(argv[1:])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
