"""`docker` for the host scripts in the host tier: real nginx and certbot, the rest a healthy host's answers.

The host scripts call `docker compose --project-name … --project-directory DIR --file FILE …` (lib.sh)
and a few plain `docker` commands. This stand-in turns the calls that matter into the real programs:

  compose exec -T nginx nginx ARGS       -> the test's nginx (`nginx -p PREFIX -c CONFIG ARGS`): its
                                            `-t` checks and `-s reload` signals the running master
  compose run --rm --no-deps certbot ARGS -> certbot --config DIR/certbot/cli.ini ARGS (the certbot
                                            service's entrypoint, with its cli.ini mount)

and answers the others as the containers of a healthy host would (images present, services healthy,
psql, Grafana's CLI and Gitea's API accepting what they are sent, Gitea's admin list and OAuth2
applications kept in a state file). A call it
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
    """(global options, the rest) of `compose --project-name X --project-directory D --file F --profile P …`;
    repeated --file options (an override file) are joined with newlines."""
    options, index = {}, 0
    while index < len(argv) and argv[index].startswith("--"):
        name, value = argv[index].removeprefix("--"), argv[index + 1]
        options[name] = f"{options[name]}\n{value}" if name == "file" and name in options else value
        index += 2
    return options, argv[index:]


def compose_images(options: dict[str, str]) -> dict[str, str]:
    """{service: image} of the compose files, later files (overrides) winning."""
    import yaml  # only here: every call is a new process, and most need no YAML
    images: dict[str, str] = {}
    for file in options["file"].split("\n"):
        for service, definition in (yaml.safe_load(Path(file).read_text()) or {}).get("services", {}).items():
            if "image" in (definition or {}):
                images[service] = definition["image"]
    return images


def load_state(config: dict) -> dict:
    state = Path(config["state"])
    return json.loads(state.read_text()) if state.exists() else {}


def save_state(config: dict, **changes: object) -> None:
    Path(config["state"]).write_text(json.dumps({**load_state(config), **changes}))


def admins(config: dict) -> list[str]:
    return load_state(config).get("admins", [])


def save_admins(config: dict, names: list[str]) -> None:
    save_state(config, admins=names)


def option_value(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def gitea_api(config: dict, curl_config: str) -> int:
    """Gitea's API as curl's config on stdin asks it: the OAuth2 applications of the caller (none,
    until one is created), anything else accepted without an answer body."""
    if "/user/applications/oauth2" not in curl_config:
        return 0
    if 'request = "GET"' in curl_config:
        print(json.dumps(load_state(config).get("oauth2_applications", [])))
        return 0
    application = {"id": 1, "name": "Grafana (gitea-stack)", "client_id": "stand-in-client-id",
                   "client_secret": "stand-in-client-secret"}
    save_state(config, oauth2_applications=[{**application, "client_secret": ""}])
    print(json.dumps(application))
    return 0


def gitea(config: dict, command: list[str]) -> int:
    if command[:2] == ["curl", "--config"]:
        return gitea_api(config, sys.stdin.read())  # credentials and body: read, never kept
    if command[:4] == ["gitea", "admin", "user", "generate-access-token"]:
        print("stand-in-access-token")
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
        print("\n".join(sorted(set(compose_images(options).values()))))
        return 0
    if rest[:1] == ["up"]:
        # The images the started services run, for `docker inspect --format {{.Config.Image}}`.
        images = compose_images(options)
        named = [word for word in rest[1:] if not word.startswith("-")] or list(images)
        save_state(config, running={**load_state(config).get("running", {}),
                                    **{service: images[service] for service in named if service in images}})
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
        if service == "grafana" and command[:2] == ["grafana", "cli"]:
            sys.stdin.read()  # the admin password: accepted, never kept
            return 0
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
            service = argv[3].removeprefix("gitea-stack-").removesuffix("-1")
            if ".Config.Image" in argv[2]:  # what the container was started with: nothing before `up`
                print(load_state(config).get("running", {}).get(service, ""))
            else:
                print("healthy")
            return 0
        raise NoAnswer
    except NoAnswer:
        print(f"docker stand-in (tests/harness/docker_standin.py): no answer for `docker {' '.join(argv)}`",
              file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
