#!/usr/bin/env python3
"""The backup scripts' helpers that need Python (backup.sh, check-backups.sh, restore-drill.sh):
the bucket (boto3), JSON and restic's listings.

Usage: backup-support.py has-repository BUCKET PREFIX
         exit 0: PREFIX/config exists (a restic repository); 4: it does not; 1: the bucket cannot be read
       backup-support.py follow-restic SUMMARY_FILE
         reads `restic backup --json` on stdin, logs progress on stderr at most every
         PROGRESS_INTERVAL_SECONDS (default 30) and writes restic's summary line to SUMMARY_FILE
       backup-support.py write-status STATUS_FILE KEY=VALUE...
         writes the status JSON to STATUS_FILE (mode 0644, atomically) and prints it; a failed run
         keeps the previous file's last_success (and, with a run_id, last_success_run_id and
         snapshots). Integer keys: see INTEGER_KEYS. snapshot.<name>=<id> keys become the
         `snapshots` object, table.<name>=<rows> the `table_rows` object (integers), and
         list.<name>=<value> keys (repeated) the list <name>.
       backup-support.py describe-damage CHECK_LOG PAIRS_FILE -- RESTIC_COMMAND...
         names the pack files `restic check` reported in CHECK_LOG and the snapshots that use them
         (from the repository's index and `restic find`, run as RESTIC_COMMAND); prints the text for
         the failure mail and writes list.damaged_packs=/list.affected_snapshots= pairs to PAIRS_FILE
       backup-support.py upload-status BUCKET KEY STATUS_FILE
         puts the status file in the bucket as KEY (application/json)
Credentials come from boto3's chain (the instance role on the host); AWS_ENDPOINT_URL, when set,
points boto3 elsewhere; the region is AWS_REGION. Exit codes: 0 done; 1 failed; 2 bad usage; 4 see above.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

NOT_A_REPOSITORY = 4
INTEGER_KEYS = ("duration_s", "bytes_added", "snapshot_age_s", "repositories_checked", "tables", "rows",
                "restore_bytes")


def s3_client():
    import boto3
    return boto3.client("s3", region_name=os.environ.get("AWS_REGION") or None,
                        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def has_repository(bucket: str, prefix: str) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        s3_client().head_object(Bucket=bucket, Key=f"{prefix}/config")
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return NOT_A_REPOSITORY
        print(f"backup-support: cannot read s3://{bucket}/{prefix}/config: {code or error}", file=sys.stderr)
        return 1
    except BotoCoreError as error:
        print(f"backup-support: cannot reach the bucket {bucket}: {error}", file=sys.stderr)
        return 1
    return 0


def follow_restic(summary_file: str) -> int:
    interval = float(os.environ.get("PROGRESS_INTERVAL_SECONDS", "30"))
    last = time.monotonic()
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            print(line.rstrip("\n"), file=sys.stderr)  # not restic's JSON: pass it on as it is
            continue
        kind = message.get("message_type")
        if kind == "summary":
            Path(summary_file).write_text(json.dumps(message))
        elif kind == "error":
            print(f"restic: {message.get('error', message)}", file=sys.stderr)
        elif kind == "status" and time.monotonic() - last >= interval:
            last = time.monotonic()
            done = message.get("bytes_done", 0)
            total = message.get("total_bytes")
            share = f" of {total // 2**20} MiB ({message.get('percent_done', 0):.0%})" if total else ""
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} backup.sh: "
                  f"{done // 2**20} MiB read{share}", file=sys.stderr, flush=True)
    return 0


def write_status(status_file: str, pairs: list[str]) -> int:
    status: dict[str, object] = {}
    snapshots: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.startswith("snapshot."):
            snapshots[key.removeprefix("snapshot.")] = value
        elif key.startswith("table."):
            table_rows = status.setdefault("table_rows", {})
            assert isinstance(table_rows, dict)
            table_rows[key.removeprefix("table.")] = int(value or 0)
        elif key.startswith("list."):
            values = status.setdefault(key.removeprefix("list."), [])  # list.<name>= alone: an empty list
            assert isinstance(values, list)
            if value:
                values.append(value)
        elif key in INTEGER_KEYS:
            status[key] = int(value or 0)
        else:
            status[key] = value
    path = Path(status_file)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    has_run = "run_id" in status  # a backup run: it made snapshots
    if status.get("state") == "ok":
        status["last_success"] = status.get("finished")
        if has_run:
            status["last_success_run_id"] = status.get("run_id")
            status["snapshots"] = snapshots
    else:
        # A failed run leaves no snapshot: the last good run's are still the ones to restore.
        status["last_success"] = previous.get("last_success")
        if has_run:
            status["last_success_run_id"] = previous.get("last_success_run_id")
            status["snapshots"] = previous.get("snapshots", {})
    text = json.dumps(status, indent=2, sort_keys=True) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)
    sys.stdout.write(text)
    return 0


def damaged_packs(check_log: str) -> list[str]:
    """The pack ids in `restic check`'s error lines ("pack <id>: ...", "Pack ID does not match, want <id>")."""
    packs: list[str] = []
    for line in Path(check_log).read_text(errors="replace").splitlines():
        if "pack" not in line.lower():
            continue
        wanted = re.search(r"want ([0-9a-f]{64})", line)
        found = wanted or re.search(r"\b([0-9a-f]{64})\b", line)
        if found and found.group(1) not in packs:
            packs.append(found.group(1))
    return packs


def describe_damage(check_log: str, pairs_file: str, restic: list[str]) -> int:
    import subprocess

    def restic_json(*arguments: str) -> object:
        result = subprocess.run([*restic, *arguments, "--json"], capture_output=True, text=True, check=True)
        return json.loads(result.stdout or "null")

    packs = damaged_packs(check_log)
    pairs = [f"list.damaged_packs={pack}" for pack in packs]
    lines: list[str] = []
    if not packs:
        lines.append("restic named no pack file; its messages are above and in the journal.")
    else:
        blobs: dict[str, dict[str, list[str]]] = {pack: {"data": [], "tree": []} for pack in packs}
        affected: dict[str, set[str]] = {pack: set() for pack in packs}
        unknown: list[str] = []
        try:
            snapshots = {s["id"]: s for s in restic_json("snapshots") or []}
            for index in subprocess.run([*restic, "list", "index"], capture_output=True, text=True,
                                        check=True).stdout.split():
                for pack in json.loads(subprocess.run([*restic, "cat", "index", index], capture_output=True,
                                                      text=True, check=True).stdout).get("packs", []):
                    if pack["id"] in blobs:
                        for blob in pack.get("blobs", []):
                            blobs[pack["id"]].setdefault(blob["type"], []).append(blob["id"])
            for pack, kinds in blobs.items():
                trees = set(kinds.get("tree", []))
                affected[pack] |= {sid for sid, s in snapshots.items() if s.get("tree") in trees}
                for option, ids in (("--blob", kinds.get("data", [])), ("--tree", sorted(trees))):
                    if ids:
                        affected[pack] |= {found["snapshot"] for found in restic_json("find", option, *ids) or []}
                if not any(kinds.values()):
                    unknown.append(pack)
        except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as error:
            lines.append(f"(could not work out which snapshots use the damaged packs: {error})")
            snapshots, unknown = {}, list(packs)
        every = set().union(*affected.values())
        for pack in packs:
            users = sorted(affected[pack], key=lambda sid: snapshots.get(sid, {}).get("time", ""))
            described = [f"{sid[:8]} ({snapshots[sid].get('time', '?')[:19]}, "
                         f"{' '.join(t for t in snapshots[sid].get('tags', []) if t != 'gitea-stack')})"
                         for sid in users if sid in snapshots]
            if pack in unknown:
                lines.append(f"pack {pack}: not in the repository's index; which snapshots use it is unknown")
            else:
                lines.append(f"pack {pack}: used by {len(users)} snapshot(s)" + (": " if users else "")
                             + ", ".join(described))
        pairs += [f"list.affected_snapshots={sid}" for sid in sorted(every)]
    Path(pairs_file).write_text("".join(f"{pair}\n" for pair in pairs))
    print("\n".join(lines))
    return 0


def upload_status(bucket: str, key: str, status_file: str) -> int:
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=Path(status_file).read_bytes(),
                               ContentType="application/json")
    except (BotoCoreError, ClientError) as error:
        print(f"backup-support: could not upload the status to s3://{bucket}/{key}: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    command, arguments = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if command in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if command == "has-repository" and len(arguments) == 2:
        return has_repository(*arguments)
    if command == "follow-restic" and len(arguments) == 1:
        return follow_restic(*arguments)
    if command == "write-status" and arguments:
        return write_status(arguments[0], arguments[1:])
    if command == "upload-status" and len(arguments) == 3:
        return upload_status(*arguments)
    if command == "describe-damage" and len(arguments) > 3 and arguments[2] == "--":
        return describe_damage(arguments[0], arguments[1], arguments[3:])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
