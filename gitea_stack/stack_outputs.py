"""A deployed stack's outputs as the operator's machine sees them: the JSON of `pulumi stack output
--json`, read from a file or from the Pulumi CLI itself, checked for the keys a command needs.

Secret outputs come back as the string "[secret]" (no --show-secrets: nothing here needs a secret).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRET_PLACEHOLDER = "[secret]"
PULUMI_TIMEOUT_SECONDS = 120


class OutputsProblem(Exception):
    """Outputs that cannot be read, or lack what the command needs; the message says what to do."""


def parse_outputs(text: str, source: str) -> dict[str, Any]:
    try:
        outputs = json.loads(text)
    except ValueError as error:
        raise OutputsProblem(f"{source} is not JSON ({error}); expected the output of "
                             "`pulumi stack output --json`") from None
    if not isinstance(outputs, dict):
        raise OutputsProblem(f"{source} holds a JSON {type(outputs).__name__}; expected an object of stack "
                             "outputs, as `pulumi stack output --json` prints it")
    return outputs


def read_outputs_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise OutputsProblem(f"cannot read --outputs {path}: {error.strerror or error}") from None
    return parse_outputs(text, f"--outputs {path}")


def outputs_from_pulumi(stack: str, project_dir: str) -> dict[str, Any]:
    """`pulumi stack output --json --stack STACK`, run in the project directory."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise OutputsProblem("the Pulumi CLI is not on PATH; pass --outputs FILE with the output of "
                             f"`pulumi stack output --json --stack {stack}`")
    command = [pulumi, "stack", "output", "--json", "--stack", stack]
    try:
        result = subprocess.run(command, cwd=project_dir, capture_output=True, text=True,
                                timeout=PULUMI_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OutputsProblem(f"`{' '.join(command[1:])}` did not run: {error}; pass --outputs FILE instead") from None
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise OutputsProblem(f"`pulumi stack output --json --stack {stack}` failed: {said}; log in to the stack's "
                             "backend (pulumi login) or pass --outputs FILE")
    return parse_outputs(result.stdout, f"`pulumi stack output --json --stack {stack}`")


def require_outputs(outputs: Mapping[str, Any], expected: Mapping[str, type], source: str) -> None:
    """Raises OutputsProblem naming every key that is missing, secret or of the wrong type."""
    problems = []
    for key, kind in expected.items():
        value = outputs.get(key)
        if value == SECRET_PLACEHOLDER:
            problems.append(f"{key} is secret")
        elif not isinstance(value, kind) or not value:
            found = "missing" if key not in outputs else f"a {type(value).__name__}: {value!r}"
            problems.append(f"{key} ({kind.__name__}) is {found}")
    if problems:
        raise OutputsProblem(f"{source} lacks what this command needs: {'; '.join(problems)}. Expected the "
                             "outputs of this version of gitea-stack; run `pulumi up` once to export them")
