"""Command line: `python -m gitea_stack render --stack prod --out DIR` writes the exact bundle
`pulumi up` would copy to the host, from Pulumi.<stack>.yaml, without Pulumi or AWS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from gitea_stack.bundle import render_bundle, write_bundle
from gitea_stack.settings import NAMESPACE, SettingsError, parse_settings


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


def render(args: argparse.Namespace) -> int:
    stack_file = Path(args.project_dir) / f"Pulumi.{args.stack}.yaml"
    if not stack_file.is_file():
        print(f"render: no stack file {stack_file}; expected Pulumi.<stack>.yaml in {args.project_dir}",
              file=sys.stderr)
        return 2
    try:
        settings = parse_settings(stack_config(stack_file), args.stack)
    except SettingsError as error:
        print(f"render: {error}", file=sys.stderr)
        return 1
    written = write_bundle(render_bundle(settings), args.out)
    print(f"wrote {len(written)} files to {args.out} (stack-facts.env is added by `pulumi up` from the "
          f"stack's resources)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gitea_stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render_parser = commands.add_parser("render", help="write the host bundle of a stack to a directory")
    render_parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    render_parser.add_argument("--out", required=True, help="directory to write the bundle into")
    render_parser.add_argument("--project-dir", default=".", help="where the Pulumi.<stack>.yaml files are")
    render_parser.set_defaults(run=render)
    args = parser.parse_args(argv)
    return args.run(args)
