#!/usr/bin/env python3
"""backup.sh's helpers that need Python: the bucket (boto3) and JSON.

Usage: backup-support.py has-repository BUCKET PREFIX
         exit 0: PREFIX/config exists (a restic repository); 4: it does not; 1: the bucket cannot be read
       backup-support.py follow-restic SUMMARY_FILE
         reads `restic backup --json` on stdin, logs progress on stderr at most every
         PROGRESS_INTERVAL_SECONDS (default 30) and writes restic's summary line to SUMMARY_FILE
       backup-support.py write-status STATUS_FILE KEY=VALUE...
         writes the status JSON to STATUS_FILE (mode 0644, atomically) and prints it; a failed run
         keeps the previous file's last_success and snapshots. Integer keys: duration_s, bytes_added.
         snapshot.<name>=<id> keys become the `snapshots` object.
       backup-support.py upload-status BUCKET KEY STATUS_FILE
         puts the status file in the bucket as KEY (application/json)
Credentials come from boto3's chain (the instance role on the host); AWS_ENDPOINT_URL, when set,
points boto3 elsewhere; the region is AWS_REGION. Exit codes: 0 done; 1 failed; 2 bad usage; 4 see above.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

NOT_A_REPOSITORY = 4
INTEGER_KEYS = ("duration_s", "bytes_added")


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
        elif key in INTEGER_KEYS:
            status[key] = int(value or 0)
        else:
            status[key] = value
    path = Path(status_file)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    if status.get("state") == "ok":
        status["last_success"] = status.get("finished")
        status["last_success_run_id"] = status.get("run_id")
        status["snapshots"] = snapshots
    else:
        # A failed run leaves no snapshot: the last good run's are still the ones to restore.
        for key in ("last_success", "last_success_run_id"):
            status[key] = previous.get(key)
        status["snapshots"] = previous.get("snapshots", {})
    text = json.dumps(status, indent=2, sort_keys=True) + "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)
    sys.stdout.write(text)
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
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
