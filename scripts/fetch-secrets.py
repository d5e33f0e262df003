#!/usr/bin/env python3
"""Fetches the stack's secrets from Secrets Manager into files of mode 0600, one value per file.

Usage: fetch-secrets.py FACTS_ENV OUT_DIR
  FACTS_ENV  stack-facts.env: SECRET_<KEY>=<secret name or ARN> lines written by `pulumi up`
  OUT_DIR    an existing private directory; <key> files are created there
The SMTP credentials secret (JSON) becomes smtp-host, smtp-port, smtp-username, smtp-password.
A secret given by ARN is read in the ARN's region (restoreFrom's password may live in the old
stack's region); by name, in AWS_REGION.
Credentials come from the instance role; AWS_ENDPOINT_URL, when set, points boto3 elsewhere.
No value is ever printed. Exit codes: 0 all written; 1 a secret is missing or unreadable; 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def read_facts(path: Path) -> dict[str, str]:
    facts = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            facts[key] = value
    return facts


def write_private(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    os.chmod(path, 0o600)


# Secrets that come from the stack config: a failure names the setting to fix. restoreFrom's
# password is the operator's secret (an ARN, passwordSecret) or one the stack made (password).
def configured_by(key: str, secret_id: str) -> str:
    if key != "restore-from-password":
        return ""
    field = "passwordSecret" if secret_id.startswith("arn:") else "password"
    return f", set by gitea-stack:restoreFrom.{field}"


def region_of(secret_id: str, default: str | None) -> str | None:
    """The region in a secret ARN (arn:<partition>:secretsmanager:<region>:...), else `default`."""
    parts = secret_id.split(":")
    return parts[3] if secret_id.startswith("arn:") and len(parts) > 3 and parts[3] else default


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    facts = read_facts(Path(argv[1]))
    out_dir = Path(argv[2])
    region = facts.get("AWS_REGION") or None
    clients = {}  # region -> client
    secrets = {key.removeprefix("SECRET_").lower().replace("_", "-"): name
               for key, name in facts.items() if key.startswith("SECRET_")}
    failed = []
    for key, name in sorted(secrets.items()):
        secret_region = region_of(name, region)
        if secret_region not in clients:
            clients[secret_region] = boto3.client("secretsmanager", region_name=secret_region)
        try:
            value = clients[secret_region].get_secret_value(SecretId=name)["SecretString"]
        except (ClientError, BotoCoreError) as error:
            failed.append(f"{key} ({name}{configured_by(key, name)}): {error.__class__.__name__}: "
                          f"{getattr(error, 'response', {}).get('Error', {}).get('Code', error)}")
            continue
        if key == "smtp-credentials":
            credentials = json.loads(value)
            for field in ("host", "port", "username", "password"):
                write_private(out_dir / f"smtp-{field}", str(credentials[field]))
        else:
            write_private(out_dir / key, value)
    if failed:
        print("fetch-secrets: could not read from Secrets Manager:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
