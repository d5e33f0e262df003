"""Replays the program's own remote steps against a testbed host, over real SSH.

The Pulumi engine cannot run here, so the program runs under mocks and the harness collects what it
declared: every `command:remote:Command` (its command and stdin; the bundle copy is one of them)
in dependency order. Each step then runs as pulumi-command runs it: the command through an SSH
session with its stdin. Only the connection changes: the harness points it at the testbed (host,
port, user, key) instead of the Elastic IP.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.pulumi_mocks import Registered, StackRun

COMMAND = "command:remote:Command"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"


@dataclass(frozen=True)
class RemoteStep:
    name: str
    command: str
    stdin: str | None
    triggers: tuple


def remote_steps(run: StackRun) -> list[RemoteStep]:
    """The program's remote steps in an order that respects their dependencies."""
    unsupported = sorted({r.type for r in run.resources if r.type.startswith("command:remote:")} - {COMMAND})
    if unsupported:
        raise ValueError(f"the replay runs commands only; the program declares {unsupported}")
    declared = {r.urn: r for r in run.resources if r.type == COMMAND}
    ordered: list[Registered] = []
    visiting: set[str] = set()

    def visit(resource: Registered) -> None:
        if resource in ordered:
            return
        if resource.urn in visiting:
            raise ValueError(f"dependency cycle at {resource.name}")
        visiting.add(resource.urn)
        for dependency in sorted(resource.dependencies):
            if dependency in declared:
                visit(declared[dependency])
        ordered.append(resource)

    for resource in sorted(declared.values(), key=lambda r: r.name):
        visit(resource)
    return [_step(resource) for resource in ordered]


def _step(resource: Registered) -> RemoteStep:
    return RemoteStep(resource.name, resource.inputs["create"], resource.inputs.get("stdin"),
                      tuple(str(t) for t in resource.inputs.get("triggers", [])))


def stored_secrets(run: StackRun) -> dict[str, str]:
    """Secret name -> the value the program stores in it (what Secrets Manager would hold)."""
    names = {r.urn: r for r in run.of_type(SECRET)}
    values = {}
    for version in run.of_type(SECRET_VERSION):
        (secret_urn,) = version.property_dependencies["secretId"]
        secret = names[secret_urn]
        name = secret.inputs.get("name") or f"{secret.inputs['namePrefix']}MOCK"
        values[name] = version.inputs["secretString"]
    return values


@dataclass
class SshTarget:
    host: str
    port: int
    user: str
    private_key_path: Path
    known_hosts_path: Path

    def command(self, remote_command: str) -> list[str]:
        # -F /dev/null: nothing from the operator's own ssh config; the host key is checked.
        return ["ssh", "-F", "/dev/null", "-i", str(self.private_key_path), "-o", "IdentitiesOnly=yes",
                "-p", str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "LogLevel=ERROR",
                f"{self.user}@{self.host}", remote_command]


def run_step(step: RemoteStep, target: SshTarget, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(target.command(step.command), input=(step.stdin or "").encode(),
                          capture_output=True, timeout=timeout)


def replay(run: StackRun, target: SshTarget, only: set[str] | None = None) -> list[tuple[RemoteStep, subprocess.CompletedProcess]]:
    """Runs every remote step (or those named in `only`) in order; stops at the first failure."""
    results = []
    for step in remote_steps(run):
        if only is not None and step.name not in only:
            continue
        result = run_step(step, target)
        results.append((step, result))
        if result.returncode != 0:
            break
    return results
