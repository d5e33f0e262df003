"""What the check commands (`preflight`, `status`) share: a check's result, the verdict on AWS
errors, the AWS session of a stack, and the table and JSON summary they print."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from gitea_stack.cli import stack_file_values

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# Error codes with which AWS rejects the credentials themselves: every other call would fail the same way.
CREDENTIAL_ERROR_CODES = frozenset({
    "AuthFailure", "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "UnrecognizedClientException",
})
# Where AWS says how to leave the SES sandbox: both commands point operators there.
SES_PRODUCTION_ACCESS_URL = "https://docs.aws.amazon.com/ses/latest/dg/request-production-access.html"
AWS_CLIENT_CONFIG = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str  # OK, WARN (could not check, or works with a caveat) or FAIL (needs fixing)
    detail: str


def error_code(error: Exception) -> str:
    return error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""


def aws_error_result(check: str, action: str, error: Exception) -> CheckResult:
    """An AWS call that failed: rejected credentials are a failure; anything else is unknown."""
    if isinstance(error, NoCredentialsError) or error_code(error) in CREDENTIAL_ERROR_CODES:
        return CheckResult(check, FAIL, f"AWS refused the credentials ({action}): {error}")
    return CheckResult(check, WARN, f"could not check: {action} failed: {error}")


def stack_session(stack_file: Path, region: str) -> boto3.Session:
    """A session for the stack's account: its `aws:profile`, like the AWS provider (BotoCoreError if unknown)."""
    profile = stack_file_values(stack_file).get("aws:profile") or None
    return boto3.Session(profile_name=profile, region_name=region)


def summarise(results: Sequence[CheckResult]) -> dict[str, Any]:
    counts = {status: sum(result.status == status for result in results) for status in (OK, WARN, FAIL)}
    return {"ok": counts[OK], "warn": counts[WARN], "fail": counts[FAIL], "passed": counts[FAIL] == 0}


def format_table_with_verdicts(results: Sequence[CheckResult], verdict_passed: str, verdict_failed: str) -> str:
    """CHECK STATUS DETAIL rows; a result's `action`, when it has one, on an indented line below it."""
    header = CheckResult("CHECK", "STATUS", "DETAIL")
    width = max(len(result.check) for result in [header, *results])
    lines = []
    for result in [header, *results]:
        lines.append(f"{result.check:<{width}}  {result.status:<6}  {result.detail}")
        action = getattr(result, "action", "")
        if action:
            lines.append(f"{'':<{width}}  {'':<6}  -> {action}")
    summary = summarise(results)
    verdict = verdict_passed if summary["passed"] else verdict_failed
    lines += ["", f"{summary['ok']} OK, {summary['warn']} WARN, {summary['fail']} FAIL: {verdict}"]
    return "\n".join(lines)
