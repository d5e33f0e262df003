"""Command line: `python -m gitea_stack render --stack prod --out DIR` writes the exact bundle
`pulumi up` would copy to the host, from Pulumi.<stack>.yaml, without Pulumi. The bundle's memory
limits follow the instance type's memory, which it asks AWS for (read-only) unless given
`--instance-memory-mib`. `preflight` checks a stack before its first deploy, `status` a deployed one."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from gitea_stack.bundle import render_bundle, write_bundle
from gitea_stack.settings import NAMESPACE, Settings, SettingsError, parse_settings


def engine_value(value: object) -> str:
    """A stack-file value as the engine hands it to a program: a string, JSON for lists and objects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def stack_file_values(stack_file: Path) -> dict[str, str]:
    """Every config value of a stack file, keys with their namespace."""
    config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
    return {key: engine_value(value) for key, value in config.items()}


def stack_config(stack_file: Path) -> dict[str, str]:
    """The `gitea-stack:*` values of a stack file, keys without the namespace."""
    prefix = f"{NAMESPACE}:"
    return {key[len(prefix):]: value for key, value in stack_file_values(stack_file).items()
            if key.startswith(prefix)}


class StackFileProblem(Exception):
    """A stack file that is missing, not YAML or holds bad config; `missing` tells the first apart."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def read_stack(project_dir: str, stack: str) -> tuple[Path, Settings]:
    """Pulumi.<stack>.yaml and its validated settings, or StackFileProblem saying what is wrong."""
    stack_file = Path(project_dir) / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        raise StackFileProblem(f"no stack file {stack_file}; expected Pulumi.<stack>.yaml in {project_dir}",
                               missing=True)
    try:
        return stack_file, parse_settings(stack_config(stack_file), stack)
    except SettingsError as error:
        raise StackFileProblem(str(error)) from None
    except yaml.YAMLError as error:
        raise StackFileProblem(f"{stack_file} is not valid YAML: {error}") from None


def stack_region(stack_file: Path) -> str | None:
    """The stack's `aws:region`, else the environment's region, else None."""
    return stack_file_values(stack_file).get("aws:region") or os.environ.get("AWS_REGION") \
        or os.environ.get("AWS_DEFAULT_REGION")


def instance_memory_from_aws(instance_type: str, region: str | None) -> int:
    """The instance type's memory as EC2 describes it (needs read-only AWS credentials)."""
    import boto3
    described = boto3.client("ec2", region_name=region).describe_instance_types(InstanceTypes=[instance_type])
    return int(described["InstanceTypes"][0]["MemoryInfo"]["SizeInMiB"])


def render(args: argparse.Namespace) -> int:
    try:
        stack_file, settings = read_stack(args.project_dir, args.stack)
    except StackFileProblem as problem:
        print(f"render: {problem}", file=sys.stderr)
        return 2 if problem.missing else 1
    memory_mib = args.instance_memory_mib
    if memory_mib is None:
        try:
            memory_mib = instance_memory_from_aws(settings.instance_type, stack_region(stack_file))
        except Exception as error:  # noqa: BLE001 - any failure to ask AWS ends the same way
            print(f"render: could not ask AWS for the memory of {settings.instance_type} ({error}); pass "
                  "--instance-memory-mib with the type's memory (e.g. 4096 for t3.medium) to render offline",
                  file=sys.stderr)
            return 1
    written = write_bundle(render_bundle(settings, memory_mib), args.out)
    print(f"wrote {len(written)} files to {args.out} for a {settings.instance_type} with {memory_mib} MiB "
          "(stack-facts.env is added by `pulumi up` from the stack's resources)")
    return 0


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {text!r}")
    return int(text)


def preflight(args: argparse.Namespace) -> int:
    # Imported on use: preflight reads stack files with this module's helpers, and render needs none of it.
    from gitea_stack.preflight import preflight_command
    return preflight_command(args)


PREFLIGHT_EPILOG = """\
checks: the instance type (memory, architecture, zones), the hosted zone (exists, public), SES
(available, sandbox), the Elastic IP quota, every image (exists for the instance's architecture)
and Docker's apt packages (exist at the pinned versions for Ubuntu 24.04).

exit codes: 0 nothing blocks a first `pulumi up` (warnings allowed), 1 a check failed,
2 bad usage or stack config.

environment: AWS credentials and AWS_ENDPOINT_URL as boto3 reads them; AWS_REGION or
AWS_DEFAULT_REGION when the stack file has no aws:region; GITEA_STACK_DOCKER_APT_URL to read
Docker's apt repository from a mirror (default https://download.docker.com/linux/ubuntu)."""


def status(args: argparse.Namespace) -> int:
    # Imported on use, like preflight: status reads stack files with this module's helpers.
    from gitea_stack.status import status_command
    return status_command(args)


STATUS_EPILOG = """\
checks: SES (the domain verified for sending, DKIM and custom MAIL FROM status SUCCESS, the account
out of the sandbox, each alertEmails address verified while it is in the sandbox); the latest backup
(s3://<backupBucket>/status/backup.json: the last run succeeded, and the last success is younger than
twice the longest gap of backupSchedule; a schedule it cannot read counts as daily); the latest EBS
snapshot of the data volume younger than 2 days; the instance's status checks; the auto-recovery
alarm OK (INSUFFICIENT_DATA is a warning: it cannot recover the host while it lasts, and is normal
for minutes after a start); the site's certificate (verified, FAIL under 14 days left, WARN with less
than a third of its lifetime left); every secret in secretNames present with a current version
(described, never read). Each line that is not OK says what to do first.

outputs: --outputs FILE (the JSON of `pulumi stack output --json`), else the command runs
`pulumi stack output --json --stack NAME` in --project-dir when the Pulumi CLI is on PATH.

exit codes: 0 nothing failed (WARN lines allowed: unchecked, or fine but worth a look), 1 something
needs attention (a FAIL line), 2 bad usage, a bad stack file or outputs that are unreadable or lack
a key the checks need.

environment: AWS credentials and AWS_ENDPOINT_URL as boto3 reads them (the stack's aws:profile);
AWS_REGION or AWS_DEFAULT_REGION when neither the outputs nor the stack file name a region;
GITEA_STACK_STATUS_HTTPS_ADDRESS=HOST:PORT to read the certificate there instead of the domain's
port 443 (still verified for the domain); SSL_CERT_FILE to trust other CAs than the system's."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gitea_stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render_parser = commands.add_parser("render", help="write the host bundle of a stack to a directory")
    render_parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    render_parser.add_argument("--out", required=True, help="directory to write the bundle into")
    render_parser.add_argument("--project-dir", default=".", help="where the Pulumi.<stack>.yaml files are")
    render_parser.add_argument("--instance-memory-mib", type=positive_int,
                               help="the instance type's memory; without it, render asks AWS (EC2 DescribeInstanceTypes)")
    render_parser.set_defaults(run=render)
    preflight_parser = commands.add_parser(
        "preflight", help="check that a first `pulumi up` of a stack can work",
        description="Checks a stack against AWS and the image and package registries before its first\n"
                    "`pulumi up`: progress on stderr, a table (or --json) on stdout.",
        epilog=PREFLIGHT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    preflight_parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    preflight_parser.add_argument("--json", action="store_true",
                                  help="print one JSON document (checks and summary) instead of the table")
    preflight_parser.add_argument("--project-dir", default=".", help="where the Pulumi.<stack>.yaml files are")
    preflight_parser.set_defaults(run=preflight)
    status_parser = commands.add_parser(
        "status", help="check that a deployed forge is all right",
        description="Checks a deployed stack from this machine, read-only: SES, backups, snapshots, the\n"
                    "instance and its recovery alarm, the certificate and the secrets. Progress on\n"
                    "stderr, a table (or --json) on stdout.",
        epilog=STATUS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    status_parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    status_parser.add_argument("--outputs", metavar="FILE",
                               help="the JSON of `pulumi stack output --json`; without it, the command runs that")
    status_parser.add_argument("--json", action="store_true",
                               help="print one JSON document (checks and summary) instead of the table")
    status_parser.add_argument("--project-dir", default=".", help="where the Pulumi.<stack>.yaml files are")
    status_parser.set_defaults(run=status)
    args = parser.parse_args(argv)
    return args.run(args)
