"""`docker` for the host scripts in the host tier: real nginx and certbot, the rest a healthy host's answers.

The host scripts call `docker compose --project-name … --project-directory DIR --file FILE …` (lib.sh)
and a few plain `docker` commands. This stand-in turns the calls that matter into the real programs:

  compose exec -T nginx nginx ARGS       -> the test's nginx (`nginx -p PREFIX -c CONFIG ARGS`): its
                                            `-t` checks and `-s reload` signals the running master
  compose run --rm --no-deps certbot ARGS -> certbot --config DIR/certbot/cli.ini ARGS (the certbot
                                            service's entrypoint, with its cli.ini mount)

and answers the others as the containers of a healthy host would (images present, services healthy,
psql and Gitea's API accepting what they are sent, Gitea's admin list kept in a state file). A call it
has no answer for fails loudly (exit 125), naming it. Every call is logged (argv only: stdin may hold
secrets and is read, never written anywhere) as one JSON line.

Configured by the JSON file named in GITEA_STACK_STANDIN_CONFIG: {"log", "state", "nginx": [argv
prefix], "certbot": [argv prefix], "env": {extra environment for certbot}}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADMIN_LIST_HEADER = "ID   Username      Email                 IsActive IsAdmin 2FA"


class NoAnswer(Exception):
    pass


def load_config() -> dict:
    return json.loads(Path(os.environ["GITEA_STACK_STANDIN_CONFIG"]).read_text())


def log_call(config: dict, argv: list[str]) -> None:
    with open(config["log"], "a") as log:
        log.write(json.dumps({"argv": argv, "pid": os.getpid()}) + "\n")


def split_compose_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(global options, the rest) of `compose --project-name X --project-directory D --file F --profile P …`."""
    options, index = {}, 0
    while index < len(argv) and argv[index].startswith("--"):
        options[argv[index].removeprefix("--")] = argv[index + 1]
        index += 2
    return options, argv[index:]


def admins(config: dict) -> list[str]:
    state = Path(config["state"])
    return json.loads(state.read_text())["admins"] if state.exists() else []


def save_admins(config: dict, names: list[str]) -> None:
    Path(config["state"]).write_text(json.dumps({"admins": names}))


def option_value(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def gitea(config: dict, command: list[str]) -> int:
    if command[:2] == ["curl", "--config"]:
        sys.stdin.read()  # credentials and body: accepted, never kept
        return 0
    if command[:4] == ["gitea", "admin", "user", "list"]:
        print(ADMIN_LIST_HEADER)
        for number, name in enumerate(admins(config), start=1):
            print(f"{number}    {name}   {name}@example.com   true     true    false")
        return 0
    if command[:4] == ["gitea", "admin", "user", "create"]:
        save_admins(config, [*admins(config), option_value(command, "--username")])
        print("generated random password is 'stand-in-temporary-password'")
        return 0
    if command[:4] == ["gitea", "admin", "user", "delete"]:
        save_admins(config, [name for name in admins(config) if name != option_value(command, "--username")])
        return 0
    raise NoAnswer


def compose(config: dict, argv: list[str]) -> int:
    options, rest = split_compose_options(argv)
    if rest[:2] == ["config", "--images"]:
        import yaml  # only here: every call is a new process, and most need no YAML
        services = yaml.safe_load(Path(options["file"]).read_text())["services"]
        print("\n".join(sorted({service["image"] for service in services.values()})))
        return 0
    if rest[:1] == ["up"]:
        return 0
    if rest[:2] == ["ps", "--quiet"]:
        print(f"gitea-stack-{rest[2]}-1")
        return 0
    if rest[:2] == ["exec", "-T"]:
        service, command = rest[2], rest[3:]
        if service == "nginx" and command[:1] == ["nginx"]:
            return subprocess.run([*config["nginx"], *command[1:]], check=False).returncode
        if service == "postgres" and command[:1] == ["psql"]:
            sys.stdin.read()
            return 0
        if service == "gitea":
            return gitea(config, command)
    if rest[:4] == ["run", "--rm", "--no-deps", "certbot"]:
        cli_ini = Path(options["project-directory"]) / "certbot" / "cli.ini"
        return subprocess.run([*config["certbot"], "--config", str(cli_ini), *rest[4:]],
                              env={**os.environ, **config.get("env", {})}, check=False).returncode
    raise NoAnswer


def main(argv: list[str]) -> int:
    config = load_config()
    log_call(config, argv)
    try:
        if argv[:1] == ["compose"]:
            return compose(config, argv[1:])
        if argv[:2] == ["image", "inspect"]:
            return 0
        if argv[:2] == ["inspect", "--format"]:
            print("healthy")
            return 0
        raise NoAnswer
    except NoAnswer:
        print(f"docker stand-in (tests/harness/docker_standin.py): no answer for `docker {' '.join(argv)}`",
              file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
