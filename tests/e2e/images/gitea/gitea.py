#!/usr/bin/python3
"""A stand-in for Gitea 1.27.3 (the rootless image) in the gitea-stack testbed; Python stdlib only.

It implements what the stack's compose file and deploy.sh rely on, with the real image's contract:

  gitea web          the server (the image's CMD). Configuration comes from GITEA__section__KEY and
                     GITEA__section__KEY__FILE (the value is read from that file, less one trailing
                     newline); a file that cannot be read stops the start with a clear message.
                     [security] SECRET_KEY and INTERNAL_TOKEN may instead come from SECRET_KEY_URI /
                     INTERNAL_TOKEN_URI = file:///path, read at start and never written to app.ini;
                     giving both a value and a URI, or an empty file, stops the start (as Gitea's
                     loadSecret does). app.ini is rewritten at every start with mode 0644, as the
                     real image's environment-to-ini leaves it under umask 022. The
                     database settings are verified by really connecting with psql (retried for
                     STANDIN_DB_WAIT_SECONDS, default 60). Each request is logged with the client
                     address Gitea would see: the last X-Forwarded-For entry when the peer is in
                     [security] REVERSE_PROXY_TRUSTED_PROXIES (default loopback), else the peer.
                     HTTP on [server] HTTP_PORT (3000):
                       GET   /api/healthz                 200 {"status": "pass"}
                       GET   /api/v1/version              {"version": "1.27.3"}
                       GET   /api/v1/user                 the user of the basic auth credentials
                       PATCH /api/v1/admin/users/<name>   an admin sets login_name/source_id/password/
                                                          must_change_password (basic auth; 401, 403)
                       POST  /api/v1/user/repos           the signed-in user creates a repository:
                                                          {"name", "description", "private"} (201;
                                                          401, 403, 409 when it exists, 422)
                       GET   /api/v1/repos/<owner>/<repo> a repository (a private one for its owner
                                                          and admins only, else 404)
                       GET   /metrics                     with "Authorization: Bearer <[metrics] TOKEN>"
                       GET   /api/v1/user/applications/oauth2        the signed-in user's OAuth2
                       POST  /api/v1/user/applications/oauth2        applications: list (no secrets),
                       PATCH /api/v1/user/applications/oauth2/<id>   create (201) and update (a new
                                                          client secret), as Gitea's API; basic auth
                                                          or "Authorization: token T" with the
                                                          scope read:user (GET) / write:user
                       git's smart HTTP at /<owner>/<repo>.git/(info/refs|git-upload-pack|git-receive-pack)
                                                          through `git http-backend`, as Gitea serves it:
                                                          clones and fetches of public repositories
                                                          for anyone, pushes for the owner and admins
                                                          (basic auth; 401 asks for credentials)
                       GET   /                            a small page naming ROOT_URL
                     With START_SSH_SERVER, SSH_LISTEN_PORT answers with an SSH banner and closes.
  gitea admin user create --username U --email E (--password P | --random-password)
                     [--admin] [--must-change-password[=BOOL]] [--random-password-length N]
                     [--access-token]
  gitea admin user list [--admin]
  gitea admin user change-password --username U --password P [--must-change-password[=BOOL]]
  gitea admin user delete (--username U | --id N | --email E) [--purge]
  gitea admin user generate-access-token --username U [--token-name N] [--scopes S] [--raw]
  gitea actions generate-runner-token [--scope S]       (alias: grt)
  gitea --version

Unknown flags are rejected, as by the real CLI. Users (with salted PBKDF2 password hashes) and
tokens live in $GITEA_WORK_DIR/standin-state.json (/var/lib/gitea, the data volume), shared by
the server and the CLI under an flock. Repositories live where Gitea keeps them: a row in the
`repository` table of its PostgreSQL database (created at start, as Gitea's migrations create
theirs) and a bare repository directory under $GITEA_WORK_DIR/git/repositories/<owner>/<name>.git
(the rootless image's [repository] ROOT).

Schema versions, as Gitea's migrations keep them: the `version` table holds one row, the migration
version of the database. A patch release keeps its minor's schema (1.27.x: 327, 1.28.x: 328). At
start, `gitea web` migrates an older database to its own version, and refuses a newer one with
Gitea's message ("... is for a newer Gitea, you can not use the newer database for this old Gitea
release"): so only a database restore lets an older release run after an upgrade. Test images may
set STANDIN_MIGRATION_FAILS=true (the migration changes the schema half-way, then the start fails,
as a failed Gitea migration does, and every later start fails on the half-migrated schema) and
STANDIN_HEALTHZ_STATUS (the status /api/healthz answers).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import html
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The release this image stands for. Images derived from it for the update tests set
# STANDIN_VERSION (and STANDIN_MIGRATION_FAILS, STANDIN_HEALTHZ_STATUS) with ENV.
VERSION = os.environ.get("STANDIN_VERSION", "1.27.3")
MIN_PASSWORD_LENGTH = 8
PBKDF2_ITERATIONS = 50_000
# Names Gitea reserves for itself (models/user); creating one fails as with the real Gitea.
RESERVED_USERNAMES = frozenset({
    "admin", "api", "assets", "attachments", "avatar", "avatars", "captcha", "commit", "debug",
    "error", "explore", "favicon.ico", "ghost", "gitea-actions", "issues", "login", "manifest.json",
    "metrics", "milestones", "new", "notifications", "org", "pulls", "raw", "repo", "repo-avatars",
    "robots.txt", "search", "serviceworker.js", "ssh_info", "swagger.v1.json", "user", "v2",
})
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def log(message: str) -> None:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime())
    print(f"{stamp} gitea(stand-in) {message}", file=sys.stderr, flush=True)


class CommandError(Exception):
    """A failure the CLI reports as `Command error: ...` with exit code 1."""


class UsageError(Exception):
    """Bad command line: reported as `Incorrect Usage: ...` with exit code 1."""


# --- configuration: the environment, as the rootless image's environment-to-ini reads it ---

def _decode(part: str) -> str:
    return re.sub(r"_0[Xx]([0-9A-Fa-f]{2})_", lambda m: chr(int(m.group(1), 16)), part)


def load_config(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {}
    for name in sorted(environ):
        if not name.startswith("GITEA__"):
            continue
        parts = name[len("GITEA__"):].split("__")
        from_file = len(parts) == 3 and parts[2] == "FILE"
        if from_file:
            parts = parts[:2]
        if len(parts) != 2 or not all(parts):
            raise CommandError(f"{name}: expected GITEA__section__KEY or GITEA__section__KEY__FILE")
        section, key = _decode(parts[0]), _decode(parts[1])
        value = environ[name]
        if from_file:
            try:
                with open(value, "rb") as handle:
                    content = handle.read()
            except OSError as problem:
                raise CommandError(
                    f"{name} names {value}, which uid {os.getuid()} cannot read: {problem.strerror}") from None
            value = content.removesuffix(b"\n").removesuffix(b"\r").decode()
        config.setdefault(section, {})[key] = value
    return config


def setting(config: dict[str, dict[str, str]], section: str, key: str, default: str = "") -> str:
    return config.get(section, {}).get(key, default)


def load_secret(config: dict[str, dict[str, str]], section: str, key: str) -> str:
    """KEY, or the content of the file KEY_URI names (file:// only), as Gitea's setting.loadSecret."""
    uri, verbatim = setting(config, section, f"{key}_URI"), setting(config, section, key)
    if uri and verbatim:
        raise CommandError(f"Cannot specify both {key}_URI and {key}")
    if not uri:
        return verbatim
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "file":
        raise CommandError(f'Unsupported URI-Scheme "{parsed.scheme}" ("{key}_URI" = "{uri}")')
    try:
        with open(parsed.path) as handle:
            value = handle.read().strip()
    except OSError as problem:
        raise CommandError(f"Failed to read {key}_URI ({parsed.path}): {problem.strerror}") from None
    if not value:
        raise CommandError(f"Failed to read {key}_URI ({parsed.path}): the file is empty")
    return value


def client_address(config: dict[str, dict[str, str]], peer: str, forwarded_for: str) -> str:
    """The address Gitea logs and rate-limits: X-Forwarded-For's last entry from a trusted proxy."""
    trusted = [entry.strip() for entry in
               setting(config, "security", "REVERSE_PROXY_TRUSTED_PROXIES", "127.0.0.0/8,::1/128").split(",")]
    peer_address = ipaddress.ip_address(peer.removeprefix("::ffff:"))
    from_trusted = any(entry == "*" or peer_address in ipaddress.ip_network(entry, strict=False)
                       for entry in trusted if entry)
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    limit = int(setting(config, "security", "REVERSE_PROXY_LIMIT", "1") or 0)
    return hops[-1] if from_trusted and hops and limit > 0 else str(peer_address)


def write_app_ini(config: dict[str, dict[str, str]], path: str) -> None:
    """The merged configuration, as the real image writes it to GITEA_APP_INI."""
    lines = [f"APP_NAME = Gitea: Git with a cup of tea (testbed stand-in {VERSION})", "RUN_MODE = prod"]
    for key, value in sorted(config.get("DEFAULT", {}).items()):
        lines.append(f"{key} = {value}")
    for section in sorted(s for s in config if s != "DEFAULT"):
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {value}" for key, value in sorted(config[section].items()))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(path + ".tmp", 0o644)  # whatever this process's umask
        os.replace(path + ".tmp", path)
    except OSError as problem:
        raise CommandError(f"cannot write {path}: {problem}") from None


# --- state: users and tokens in one JSON file on the data volume ---

def work_dir() -> str:
    return os.environ.get("GITEA_WORK_DIR", "/var/lib/gitea")


class State:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, "standin-state.json")
        self.lock_path = self.path + ".lock"

    @contextlib.contextmanager
    def open(self, write: bool = False):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            lock = open(self.lock_path, "a")
        except OSError as problem:
            raise CommandError(f"cannot open the state in {os.path.dirname(self.path)}: {problem}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                with open(self.path) as handle:
                    data = json.load(handle)
            except FileNotFoundError:
                data = {"next_id": 1, "users": [], "runner_tokens": [], "access_tokens": []}
            data.setdefault("oauth2_applications", [])
            yield data
            if write:
                temporary = f"{self.path}.{os.getpid()}.tmp"
                with open(temporary, "w") as handle:
                    json.dump(data, handle, indent=2, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)


def hash_password(password: str) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), PBKDF2_ITERATIONS).hex()
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt}${digest}"


def check_password(user: dict, password: str) -> bool:
    try:
        _, iterations, salt, digest = user["password_hash"].split("$")
    except (KeyError, ValueError):
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations)).hex()
    return hmac.compare_digest(candidate, digest)


def find_user(data: dict, name: str) -> dict | None:
    return next((u for u in data["users"] if u["username"].lower() == name.lower()), None)


OAUTH2_APPLICATIONS = "/api/v1/user/applications/oauth2"


def oauth2_application_json(application: dict) -> dict:
    """As Gitea's API shows an application: the client secret only when it is made."""
    return {key: application[key] for key in ("id", "name", "client_id", "redirect_uris", "confidential_client",
                                              "skip_secondary_authorization", "created")} | {"client_secret": ""}


def public_user(user: dict) -> dict:
    return {"id": user["id"], "login": user["username"], "login_name": user.get("login_name", ""),
            "source_id": user.get("source_id", 0), "email": user["email"], "is_admin": user["is_admin"],
            "active": user["is_active"], "must_change_password": user["must_change_password"],
            "restricted": False, "prohibit_login": False}


# --- repositories: a row in PostgreSQL and a bare directory on the data volume, as Gitea keeps them ---

REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
# git's smart HTTP: /<owner>/<repo>.git/info/refs, /git-upload-pack, /git-receive-pack.
GIT_PATH = re.compile(r"/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+?)\.git(/info/refs|/git-upload-pack|/git-receive-pack)")
# Gitea's migrations create its tables at the first start; this is the stand-in's one table.
REPOSITORY_TABLE = """CREATE TABLE IF NOT EXISTS repository (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    owner_name TEXT NOT NULL,
    lower_name TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_private BOOLEAN NOT NULL DEFAULT FALSE,
    created_unix BIGINT NOT NULL,
    UNIQUE (owner_id, lower_name));
"""
REPOSITORY_ROW = ("json_build_object('id', id, 'owner_id', owner_id, 'owner_name', owner_name, 'name', name, "
                  "'description', description, 'private', is_private, 'created_unix', created_unix)")


class DatabaseError(Exception):
    """psql failed; the message is its ERROR line (e.g. a unique-constraint violation) or its last line."""


class Database:
    """Gitea's database, through psql as Gitea's user: one statement script per call."""

    def __init__(self, config: dict[str, dict[str, str]]):
        self.command, self.environment, self.description = database_client(config)

    def run(self, script: str, **variables: str) -> str:
        """Runs `script` (psql variables such as :'name' come from `variables`); its output, stripped."""
        command = [*self.command, "--set=ON_ERROR_STOP=1",
                   *(f"--set={key}={value}" for key, value in variables.items())]
        result = subprocess.run(command, input=script, env=self.environment, capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["psql failed"]
            raise DatabaseError(next((line for line in lines if "ERROR:" in line), lines[-1]))
        return result.stdout.strip()


def repository_path(owner: str, name: str) -> str:
    return os.path.join(work_dir(), "git", "repositories", owner.lower(), f"{name.lower()}.git")


def init_bare_repository(path: str) -> None:
    """What `git init --bare` leaves: HEAD, config, description, empty objects and refs."""
    for directory in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "hooks", "info"):
        os.makedirs(os.path.join(path, directory), exist_ok=True)
    for name, text in (("HEAD", "ref: refs/heads/main\n"),
                       ("config", "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"),
                       ("description", "Unnamed repository; edit this file 'description' to name the repository.\n")):
        with open(os.path.join(path, name), "w") as handle:
            handle.write(text)


# --- the command line, parsed like urfave/cli: -flag, --flag, --flag=value, --flag value ---

GLOBAL_FLAGS = {"config": "string", "c": "config", "custom-path": "string", "C": "custom-path",
                "work-path": "string", "w": "work-path", "quiet": "bool", "verbose": "bool"}


def parse_flags(args: list[str], flags: dict[str, str]) -> tuple[dict[str, object], list[str]]:
    """flags: name -> "bool" | "string" | "int", or alias -> name. Returns (values set, positionals)."""
    flags = {**GLOBAL_FLAGS, **flags}
    values: dict[str, object] = {}
    positional: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positional.extend(args[index:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        kind = flags.get(name)
        if kind is not None and kind not in ("bool", "string", "int"):
            name, kind = kind, flags[kind]
        if kind is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if kind == "bool":
            if not has_value:
                values[name] = True
            elif value.lower() in ("1", "t", "true"):
                values[name] = True
            elif value.lower() in ("0", "f", "false"):
                values[name] = False
            else:
                raise UsageError(f'invalid boolean value "{value}" for -{name}: parse error')
            continue
        if not has_value:
            if index >= len(args):
                raise UsageError(f"flag needs an argument: -{name}")
            value = args[index]
            index += 1
        if kind == "int":
            try:
                values[name] = int(value)
            except ValueError:
                raise UsageError(f'invalid value "{value}" for flag -{name}: parse error') from None
        else:
            values[name] = value
    return values, positional


def no_positionals(positional: list[str], command: str) -> None:
    if positional:
        raise UsageError(f"{command} takes no arguments, got {' '.join(positional)}")


def state_for(values: dict[str, object]) -> State:
    return State(str(values.get("work-path") or work_dir()))


def cmd_user_create(args: list[str]) -> int:
    values, positional = parse_flags(args, {
        "username": "string", "u": "username", "name": "string", "email": "string",
        "password": "string", "admin": "bool", "random-password": "bool",
        "random-password-length": "int", "must-change-password": "bool", "access-token": "bool",
        "restricted": "bool", "user-type": "string", "fullname": "string",
    })
    no_positionals(positional, "admin user create")
    username = str(values.get("username") or values.get("name") or "")
    email = str(values.get("email") or "")
    if not username:
        raise CommandError("username is required")
    if not email:
        raise CommandError("email is required")
    if values.get("user-type", "individual") not in ("individual", "bot"):
        raise CommandError(f"invalid user type: {values['user-type']}")
    if values.get("random-password"):
        if "password" in values:
            raise CommandError("cannot set both -random-password and -password flags")
        length = int(values.get("random-password-length", 12))
        if length < MIN_PASSWORD_LENGTH:
            raise CommandError(f"password length must be at least {MIN_PASSWORD_LENGTH}")
        alphabet = string.ascii_letters + string.digits
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        generated = True
    elif "password" in values:
        password = str(values["password"])
        generated = False
        if len(password) < MIN_PASSWORD_LENGTH:
            raise CommandError("password is too short")
    else:
        raise CommandError("must set either password or random-password flag")
    if not USERNAME.match(username) or re.search(r"[-._]{2,}|[-._]$", username):
        raise CommandError(f"CreateUser: name is invalid [{username}]: must be valid alpha or numeric or dash(-_) or dot characters")
    if username.lower() in RESERVED_USERNAMES:
        raise CommandError(f"CreateUser: name is reserved [name: {username}]")
    if not EMAIL.match(email):
        raise CommandError(f"CreateUser: e-mail invalid [email: {email}]")

    with state_for(values).open(write=True) as data:
        if find_user(data, username):
            raise CommandError(f"CreateUser: user already exists [name: {username}]")
        if any(u["email"].lower() == email.lower() for u in data["users"]):
            raise CommandError(f"CreateUser: e-mail already in use [email: {email}]")
        user = {
            "id": data["next_id"], "username": username, "email": email, "login_name": username,
            "source_id": 0, "password_hash": hash_password(password),
            "is_admin": bool(values.get("admin", False)), "is_active": True,
            "must_change_password": bool(values.get("must-change-password", True)),
            "created": int(time.time()),
        }
        data["next_id"] += 1
        data["users"].append(user)
        token = None
        if values.get("access-token"):
            token = secrets.token_hex(20)
            data["access_tokens"].append({"user_id": user["id"], "name": "gitea-admin", "sha256": _sha256(token)})
    if generated:
        print(f"generated random password is '{password}'")
    if token:
        print(f"Access token was successfully created... {token}")
    print(f"New user '{username}' has been successfully created!")
    return 0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tabwriter(rows: list[list[str]], minwidth: int = 5, padding: int = 1) -> str:
    """Go's tabwriter.NewWriter(out, 5, 0, 1, ' ', 0): cells end at tabs, the last one is unpadded."""
    widths: dict[int, int] = {}
    for row in rows:
        for column, cell in enumerate(row[:-1]):
            widths[column] = max(widths.get(column, 0), len(cell) + padding, minwidth)
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[column]) for column, cell in enumerate(row[:-1])] + row[-1:]
        lines.append("".join(cells))
    return "".join(line + "\n" for line in lines)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def cmd_user_list(args: list[str]) -> int:
    values, positional = parse_flags(args, {"admin": "bool"})
    no_positionals(positional, "admin user list")
    with state_for(values).open() as data:
        users = sorted(data["users"], key=lambda u: u["id"])
    # As Gitea's cmd/admin_user_list.go: `--admin` lists admins without the IsAdmin and 2FA columns.
    if "admin" in values:
        rows = [["ID", "Username", "Email", "IsActive"]]
        rows += [[str(u["id"]), u["username"], u["email"], _bool(u["is_active"])] for u in users if u["is_admin"]]
    else:
        rows = [["ID", "Username", "Email", "IsActive", "IsAdmin", "2FA"]]
        rows += [[str(u["id"]), u["username"], u["email"], _bool(u["is_active"]), _bool(u["is_admin"]), "false"]
                 for u in users]
    sys.stdout.write(tabwriter(rows))
    return 0


def cmd_user_change_password(args: list[str]) -> int:
    values, positional = parse_flags(args, {
        "username": "string", "u": "username", "password": "string", "p": "password",
        "must-change-password": "bool",
    })
    no_positionals(positional, "admin user change-password")
    username, password = str(values.get("username", "")), str(values.get("password", ""))
    if not username or not password:
        raise CommandError("username and password are required")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError("password is too short")
    with state_for(values).open(write=True) as data:
        user = find_user(data, username)
        if user is None:
            raise CommandError(f"user does not exist [uid: 0, name: {username}]")
        user["password_hash"] = hash_password(password)
        user["must_change_password"] = bool(values.get("must-change-password", True))
    print(f"{user['username']}'s password has been successfully updated!")
    return 0


def cmd_user_delete(args: list[str]) -> int:
    values, positional = parse_flags(args, {"username": "string", "u": "username", "id": "int",
                                            "email": "string", "e": "email", "purge": "bool", "p": "purge"})
    no_positionals(positional, "admin user delete")
    if not any(key in values for key in ("username", "id", "email")):
        raise CommandError("You must provide the id, username or email of a user to delete")
    with state_for(values).open(write=True) as data:
        user = next((u for u in data["users"]
                     if ("username" not in values or u["username"].lower() == str(values["username"]).lower())
                     and ("id" not in values or u["id"] == values["id"])
                     and ("email" not in values or u["email"].lower() == str(values["email"]).lower())), None)
        if user is None:
            raise CommandError(f"user does not exist [uid: {values.get('id', 0)}, name: {values.get('username', '')}]")
        data["users"].remove(user)
    return 0


# Scopes Gitea knows (models/auth/access_token_scope.go): all, or read:/write: of a category.
TOKEN_SCOPE = re.compile(r"^(all|(read|write):(activitypub|admin|issue|misc|notification|organization|package|"
                         r"repository|user))$")


def cmd_generate_access_token(args: list[str]) -> int:
    values, positional = parse_flags(args, {"username": "string", "u": "username", "token-name": "string",
                                            "t": "token-name", "scopes": "string", "raw": "bool"})
    no_positionals(positional, "admin user generate-access-token")
    name = str(values.get("token-name", "gitea-admin"))
    scopes = [scope.strip() for scope in str(values.get("scopes", "all")).split(",") if scope.strip()]
    if not all(TOKEN_SCOPE.match(scope) for scope in scopes):
        raise CommandError(f"invalid access token scope provided: {values.get('scopes')}")
    token = secrets.token_hex(20)
    with state_for(values).open(write=True) as data:
        user = find_user(data, str(values.get("username", "")))
        if user is None:
            raise CommandError(f"user does not exist: {values.get('username', '')}")
        if any(t["user_id"] == user["id"] and t["name"] == name for t in data["access_tokens"]):
            raise CommandError("access token name has been used already")
        data["access_tokens"].append({"user_id": user["id"], "name": name, "sha256": _sha256(token),
                                      "scopes": scopes})
    print(token if values.get("raw") else f"Access token was successfully created: {token}")
    return 0


def cmd_generate_runner_token(args: list[str]) -> int:
    values, positional = parse_flags(args, {"scope": "string", "s": "scope"})
    no_positionals(positional, "actions generate-runner-token")
    scope = str(values.get("scope", ""))
    token = secrets.token_hex(20)
    with state_for(values).open(write=True) as data:
        if scope and not (find_user(data, scope.split("/")[0])):
            raise CommandError(f"unable to find scope {scope}")
        data["runner_tokens"].append({"scope": scope, "sha256": _sha256(token), "created": int(time.time())})
    print(token)
    return 0


# --- the server ---

NOT_JSON = object()  # a request body that could not be parsed


class Handler(BaseHTTPRequestHandler):
    server_version = "Gitea-stand-in"
    config: dict[str, dict[str, str]] = {}
    state: State
    database: Database

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        client = client_address(self.config, self.client_address[0], self.headers.get("X-Forwarded-For", ""))
        log(f"client={client} peer={self.client_address[0]} {format % args}")

    def send_json(self, status: int, body: object, content_type: str = "application/json;charset=utf-8") -> None:
        self.send_text(status, json.dumps(body), content_type)

    def send_text(self, status: int, text: str, content_type: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def fail(self, status: int, message: str) -> None:
        self.send_json(status, {"message": message, "url": f"{self.root_url()}api/swagger"})

    def root_url(self) -> str:
        return setting(self.config, "server", "ROOT_URL", "http://localhost:3000/")

    def authenticated_user(self, data: dict, scope: str = "") -> dict | None:
        """The user of basic auth credentials, or of an access token ("token T" or "Bearer T") whose
        scopes allow `scope` (read:user is allowed by write:user and all)."""
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and scope:
            digest = _sha256(credentials.strip())
            token = next((t for t in data["access_tokens"] if hmac.compare_digest(t["sha256"], digest)), None)
            if token is None:
                return None
            category = scope.split(":")[1]
            granted = set(token.get("scopes", ["all"]))
            allowed = {"all", scope, f"write:{category}"} if scope.startswith("read:") else {"all", scope}
            user = next((u for u in data["users"] if u["id"] == token["user_id"]), None)
            return user if granted & allowed and user and user["is_active"] else None
        if scheme.lower() != "basic":
            return None
        try:
            name, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = find_user(data, name)
        if user is None or not user["is_active"] or not check_password(user, password):
            return None
        return user

    def path_only(self) -> str:
        return self.path.split("?", 1)[0]

    def json_body(self) -> object:
        """The request's JSON body; NOT_JSON after answering 400 when it is not JSON."""
        try:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        except ValueError:
            self.fail(400, "invalid JSON body")
            return NOT_JSON

    def signed_in_user(self) -> dict | None:
        """The user of the basic auth credentials, or None after answering 401 or 403."""
        with self.state.open() as data:
            user = self.authenticated_user(data)
        if user is None:
            self.fail(401, "user does not exist or the password is wrong")
        elif user["must_change_password"]:
            self.fail(403, "You must change your password. Change it at: " + self.root_url() + "user/change_password")
        else:
            return user
        return None

    def repository_json(self, row: dict) -> dict:
        full_name = f"{row['owner_name']}/{row['name']}"
        return {"id": row["id"], "owner": {"id": row["owner_id"], "login": row["owner_name"]}, "name": row["name"],
                "full_name": full_name, "description": row["description"], "private": row["private"],
                "clone_url": f"{self.root_url()}{full_name}.git",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created_unix"]))}

    def request_body(self) -> bytes:
        """The body, also when git sends it in chunks (Transfer-Encoding: chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()  # the empty line after the last chunk
        return body

    def serve_git(self) -> None:
        """git's smart HTTP through `git http-backend` (CGI), pushes only for the owner and admins."""
        owner, name, _ = GIT_PATH.fullmatch(self.path_only()).groups()
        query = self.path.partition("?")[2]
        pushing = "git-receive-pack" in (self.path_only() + query)
        if not os.path.isdir(repository_path(owner, name)):
            self.fail(404, "The target couldn't be found.")
            return
        remote_user = ""
        if pushing:
            with self.state.open() as data:
                user = self.authenticated_user(data)
            if user is None or not (user["username"].lower() == owner.lower() or user["is_admin"]):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="Gitea"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            remote_user = user["username"]
        body = self.request_body() if self.command == "POST" else b""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_PROJECT_ROOT": os.path.join(work_dir(), "git", "repositories"),
            "PATH_INFO": f"/{owner.lower()}/{name.lower()}.git{self.path_only().split('.git', 1)[1]}",
            "REQUEST_METHOD": self.command, "QUERY_STRING": query, "REMOTE_USER": remote_user,
            "REMOTE_ADDR": self.client_address[0], "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""), "HOME": work_dir()}
        result = subprocess.run(["git", "http-backend"], input=body, env=environment, capture_output=True,
                                timeout=300, check=False)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        headers = [line.split(":", 1) for line in head.decode(errors="replace").splitlines() if ":" in line]
        status = next((int(value.split()[0]) for key, value in headers if key.lower() == "status"), 200)
        if result.returncode != 0 and status == 200:
            self.fail(500, f"git http-backend: {result.stderr.decode(errors='replace').strip()}")
            return
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("status", "content-length"):
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path_only()
        if GIT_PATH.fullmatch(path):
            self.serve_git()
        elif path == "/api/healthz":
            self.send_json(int(os.environ.get("STANDIN_HEALTHZ_STATUS", "200")), {"status": "pass", "description": "Gitea: Git with a cup of tea",
                                 "checks": {"cache:ping": [{"status": "pass"}], "database:ping": [{"status": "pass"}]}},
                           "application/health+json")
        elif path == "/api/v1/version":
            self.send_json(200, {"version": VERSION})
        elif path == "/api/v1/user":
            user = self.signed_in_user()
            if user is not None:
                self.send_json(200, public_user(user))
        elif path == OAUTH2_APPLICATIONS:
            with self.state.open() as data:
                user = self.authenticated_user(data, "read:user")
                if user is None:
                    self.fail(401, "token is required")
                    return
                listed = [oauth2_application_json(a) for a in data["oauth2_applications"] if a["user_id"] == user["id"]]
            self.send_json(200, listed)
        elif path == "/metrics":
            token = setting(self.config, "metrics", "TOKEN")
            enabled = setting(self.config, "metrics", "ENABLED", "false").lower() == "true"
            if not enabled:
                self.fail(404, "Not Found")
            elif token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self.fail(401, "Unauthorized")
            else:
                with self.state.open() as data:
                    users = len(data["users"])
                self.send_text(200, f"# TYPE gitea_users gauge\ngitea_users {users}\n", "text/plain; version=0.0.4")
        elif match := re.fullmatch(r"/api/v1/repos/([^/]+)/([^/]+)", path):
            self.get_repository(*(urllib.parse.unquote(part) for part in match.groups()))
        elif path == "/":
            root = html.escape(self.root_url())
            self.send_text(200, f"<!DOCTYPE html>\n<html><head><title>Gitea: Git with a cup of tea</title></head>"
                                f"<body><h1>Gitea {VERSION} (testbed stand-in)</h1>"
                                f"<p>Served at <a href=\"{root}\">{root}</a></p></body></html>\n",
                           "text/html; charset=utf-8")
        else:
            self.fail(404, "Not Found")

    def get_repository(self, owner: str, name: str) -> None:
        try:
            row = self.database.run(f"SELECT {REPOSITORY_ROW} FROM repository "
                                    "WHERE lower(owner_name) = lower(:'owner') AND lower_name = lower(:'name');",
                                    owner=owner, name=name)
        except DatabaseError as problem:
            self.fail(500, f"database: {problem}")
            return
        repository = json.loads(row) if row else None
        if repository is not None and repository["private"]:
            with self.state.open() as data:
                viewer = self.authenticated_user(data)
            if viewer is None or not (viewer["id"] == repository["owner_id"] or viewer["is_admin"]):
                repository = None  # Gitea does not say that a private repository exists
        if repository is None:
            self.fail(404, "The target couldn't be found.")
        else:
            self.send_json(200, self.repository_json(repository))

    def do_POST(self) -> None:
        if GIT_PATH.fullmatch(self.path_only()):
            self.serve_git()
            return
        if self.path_only() == OAUTH2_APPLICATIONS:
            self.save_oauth2_application(None)
            return
        if self.path_only() != "/api/v1/user/repos":
            self.fail(404, "Not Found")
            return
        body = self.json_body()
        if body is NOT_JSON:
            return
        user = self.signed_in_user()
        if user is None:
            return
        if not isinstance(body, dict):
            self.fail(422, "expected a JSON object")
            return
        name = body.get("name")
        if not isinstance(name, str) or not REPOSITORY_NAME.match(name) or name in (".", ".."):
            self.fail(422, "[Name]: must be valid alpha or numeric or dash(-_) or dot characters")
            return
        try:
            row = self.database.run(
                "INSERT INTO repository (owner_id, owner_name, lower_name, name, description, is_private, "
                "created_unix) VALUES (:'owner_id'::bigint, :'owner', lower(:'name'), :'name', :'description', "
                f":'private'::boolean, :'created'::bigint) RETURNING {REPOSITORY_ROW};",
                owner_id=str(user["id"]), owner=user["username"], name=name,
                description=str(body.get("description", "")), private=str(bool(body.get("private", False))).lower(),
                created=str(int(time.time())))
        except DatabaseError as problem:
            if "duplicate key" in str(problem):
                self.fail(409, "The repository with the same name already exists.")
            else:
                self.fail(500, f"database: {problem}")
            return
        repository = json.loads(row)
        try:
            init_bare_repository(repository_path(user["username"], name))
        except OSError as problem:
            self.database.run("DELETE FROM repository WHERE id = :'id'::bigint;", id=str(repository["id"]))
            self.fail(500, f"cannot create the repository on disk: {problem}")
            return
        self.send_json(201, self.repository_json(repository))

    def save_oauth2_application(self, application_id: int | None) -> None:
        """POST (None) or PATCH an OAuth2 application of the token's user; a new client secret either way."""
        body = self.json_body()
        if body is NOT_JSON:
            return
        with self.state.open(write=True) as data:
            user = self.authenticated_user(data, "write:user")
            if user is None:
                self.fail(401, "token is required")
                return
            if not isinstance(body, dict) or not body.get("name") or not isinstance(body.get("redirect_uris"), list):
                self.fail(422, "[Name] and [RedirectURIs] are required")
                return
            secret = "gto_" + secrets.token_hex(26)
            fields = {"name": body["name"], "redirect_uris": body["redirect_uris"],
                      "confidential_client": bool(body.get("confidential_client", True)),
                      "skip_secondary_authorization": bool(body.get("skip_secondary_authorization", False)),
                      "client_secret_sha256": _sha256(secret)}
            if application_id is None:
                application = {"id": data["next_id"], "user_id": user["id"], "client_id": str(uuid.uuid4()),
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
                data["next_id"] += 1
                data["oauth2_applications"].append(application)
            else:
                application = next((a for a in data["oauth2_applications"]
                                    if a["id"] == application_id and a["user_id"] == user["id"]), None)
                if application is None:
                    self.fail(404, "The target couldn't be found.")
                    return
                application.update(fields)
        self.send_json(201 if application_id is None else 200,
                       {**oauth2_application_json(application), "client_secret": secret})

    def do_PATCH(self) -> None:  # noqa: N802
        if match := re.fullmatch(re.escape(OAUTH2_APPLICATIONS) + r"/(\d+)", self.path_only()):
            self.save_oauth2_application(int(match.group(1)))
            return
        match = re.fullmatch(r"/api/v1/admin/users/([^/]+)", self.path_only())
        if not match:
            self.fail(404, "Not Found")
            return
        body = self.json_body()
        if body is NOT_JSON:
            return
        with self.state.open(write=True) as data:
            actor = self.authenticated_user(data)
            if actor is None:
                self.fail(401, "user does not exist or the password is wrong")
                return
            if actor["must_change_password"]:
                self.fail(403, "You must change your password. Change it at: " + self.root_url() + "user/change_password")
                return
            if not actor["is_admin"]:
                self.fail(403, "You are not a site administrator.")
                return
            target = find_user(data, match.group(1))
            if target is None:
                self.fail(404, "The target couldn't be found.")
                return
            if not isinstance(body, dict):
                self.fail(422, "expected a JSON object")
                return
            password = body.get("password")
            if password is not None and (not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH):
                self.fail(422, "password is too short")
                return
            try:
                source_id = int(body.get("source_id", target.get("source_id", 0)))
            except (TypeError, ValueError):
                self.fail(422, "[SourceID]: must be an integer")
                return
            if password is not None:
                target["password_hash"] = hash_password(password)
            target["login_name"] = str(body.get("login_name", target.get("login_name", target["username"])))
            target["source_id"] = source_id
            for field, key in (("must_change_password", "must_change_password"), ("admin", "is_admin"),
                               ("active", "is_active")):
                if field in body:
                    target[key] = bool(body[field])
            if "email" in body:
                target["email"] = str(body["email"])
            reply = public_user(target)
        self.send_json(200, reply)


def database_client(config: dict[str, dict[str, str]]) -> tuple[list[str], dict[str, str], str]:
    """psql as Gitea's database user, from [database]: (argv without a command, environment, "NAME on HOST:PORT")."""
    db_type = setting(config, "database", "DB_TYPE", "sqlite3")
    if db_type not in ("postgres", "postgresql"):
        raise CommandError(f"the stand-in supports [database] DB_TYPE postgres only, not {db_type!r}")
    address = setting(config, "database", "HOST", "127.0.0.1:5432")
    if address.startswith("/"):
        host, port = address, "5432"
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "5432")
    user = setting(config, "database", "USER")
    name = setting(config, "database", "NAME", "gitea")
    environment = {**os.environ, "PGPASSWORD": setting(config, "database", "PASSWD"),
                   "PGSSLMODE": setting(config, "database", "SSL_MODE", "disable"), "PGCONNECT_TIMEOUT": "5"}
    command = ["psql", "--no-psqlrc", "--no-password", "--quiet", "--tuples-only", "--no-align",
               f"--host={host}", f"--port={port or '5432'}", f"--username={user}", f"--dbname={name}"]
    return command, environment, f"{name} on {host}:{port}"


def wait_for_database(config: dict[str, dict[str, str]]) -> None:
    client, environment, database = database_client(config)
    command = [*client, "--command=SELECT 1"]
    user = setting(config, "database", "USER")
    wait = float(os.environ.get("STANDIN_DB_WAIT_SECONDS", "60"))
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        attempt += 1
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode == 0:
            log(f"database {database} answers as {user} (attempt {attempt})")
            return
        problem = (result.stderr.strip().splitlines() or ["psql failed"])[-1]
        if time.monotonic() >= deadline:
            raise CommandError(f"cannot connect to the database {database} as {user} after {wait:.0f}s: {problem}")
        log(f"database not ready yet (attempt {attempt}): {problem}")
        time.sleep(2)


def schema_version(release: str) -> int:
    """The migration version of a release: its minor's (patch releases keep the schema)."""
    major, minor = (int(part) for part in release.split(".")[:2])
    return major * 300 + minor


def migrate(database: Database) -> None:
    """Brings the database to this release's schema, or refuses one a newer release migrated."""
    mine = schema_version(VERSION)
    try:
        found = database.run("CREATE TABLE IF NOT EXISTS version (id BIGSERIAL PRIMARY KEY, version BIGINT);"
                             "SELECT version FROM version WHERE id = 1;")
    except DatabaseError as problem:
        raise CommandError(f"cannot read the migration version in {database.description}: {problem}") from None
    current = int(found) if found else None
    if current is not None and current > mine:
        raise CommandError(f"migrate: Your database (migration version: {current}) is for a newer Gitea, "
                           "you can not use the newer database for this old Gitea release "
                           f"({mine}). Gitea will exit to keep your database safe and unchanged.")
    half_migrated = database.run("SELECT to_regclass('standin_half_migrated') IS NOT NULL;") == "t"
    if current == mine and half_migrated:
        # Gitea cannot run on a schema a failed migration left half-changed; neither can this.
        raise CommandError(f"migrate: the database (migration version {current}) was left half-migrated "
                           "by a failed migration; restore it from a backup")
    if current == mine:
        return
    log(f"migrating the database from version {current} to {mine}")
    if os.environ.get("STANDIN_MIGRATION_FAILS", "").lower() == "true":
        # Half a migration, as a failed multi-step one leaves it; then the start fails.
        database.run("CREATE TABLE IF NOT EXISTS standin_half_migrated (id BIGINT);"
                     "INSERT INTO version (id, version) VALUES (1, :'version') "
                     "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version;", version=str(mine))
        raise CommandError(f"migrate: migration to version {mine} failed: the stand-in was built to fail it")
    database.run("INSERT INTO version (id, version) VALUES (1, :'version') "
                 "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version;", version=str(mine))


def ssh_banner_server(port: int, stop: threading.Event) -> None:
    listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True) \
        if socket.has_dualstack_ipv6() else socket.create_server(("0.0.0.0", port))
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            break
        with connection:
            with contextlib.suppress(OSError):
                connection.sendall(b"SSH-2.0-Go\r\n")


class DualStackServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def cmd_web(args: list[str]) -> int:
    values, positional = parse_flags(args, {"port": "string", "p": "port", "pid": "string", "P": "pid",
                                            "install-port": "string"})
    no_positionals(positional, "web")
    config = load_config(dict(os.environ))
    for key in ("SECRET_KEY", "INTERNAL_TOKEN"):
        if not load_secret(config, "security", key):
            raise CommandError(f"[security] {key} is empty: the stand-in, like the stack, expects it set")
    wait_for_database(config)
    database = Database(config)
    migrate(database)
    try:
        database.run(REPOSITORY_TABLE)
    except DatabaseError as problem:
        raise CommandError(f"cannot create the repository table in {database.description}: {problem}") from None
    app_ini = os.environ.get("GITEA_APP_INI", "/etc/gitea/app.ini")
    write_app_ini(config, app_ini)
    state = State(str(values.get("work-path") or work_dir()))
    with state.open(write=True):
        pass  # the data volume is writable, and the state file exists from now on

    Handler.config = config
    Handler.state = state
    Handler.database = database
    port = int(values.get("port") or setting(config, "server", "HTTP_PORT", "3000"))
    address = setting(config, "server", "HTTP_ADDR", "")
    if address in ("", "0.0.0.0", "::") and socket.has_dualstack_ipv6():
        DualStackServer.address_family = socket.AF_INET6
        server = DualStackServer(("::", port), Handler)
    else:
        server = DualStackServer((address or "0.0.0.0", port), Handler)

    stop = threading.Event()
    if setting(config, "server", "START_SSH_SERVER", "false").lower() == "true":
        ssh_port = int(setting(config, "server", "SSH_LISTEN_PORT", "") or setting(config, "server", "SSH_PORT", "22"))
        threading.Thread(target=ssh_banner_server, args=(ssh_port, stop), daemon=True).start()
        log(f"SSH banner on port {ssh_port}")

    def shut_down(signum, _frame) -> None:
        log(f"received {signal.Signals(signum).name}; shutting down")
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    log(f"Gitea {VERSION} (testbed stand-in) listening on port {port}; ROOT_URL {setting(config, 'server', 'ROOT_URL')}")
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log("stopped")
    return 0


COMMANDS = {
    ("web",): cmd_web,
    ("admin", "user", "create"): cmd_user_create,
    ("admin", "user", "list"): cmd_user_list,
    ("admin", "user", "change-password"): cmd_user_change_password,
    ("admin", "user", "delete"): cmd_user_delete,
    ("admin", "user", "generate-access-token"): cmd_generate_access_token,
    ("actions", "generate-runner-token"): cmd_generate_runner_token,
    ("actions", "grt"): cmd_generate_runner_token,
}


def usage() -> str:
    return "USAGE:\n" + "".join(f"   gitea {' '.join(words)} [options]\n" for words in COMMANDS)


def main(argv: list[str]) -> int:
    args = list(argv)
    leading: list[str] = []  # global flags before the command
    while args and args[0].startswith("-"):
        arg = args.pop(0)
        if arg in ("--version", "-version", "-v"):
            print(f"Gitea version {VERSION} built with the gitea-stack testbed (stand-in)")
            return 0
        if arg in ("--help", "-help", "-h"):
            print(usage(), end="")
            return 0
        name = arg.lstrip("-").partition("=")[0]
        kind = GLOBAL_FLAGS.get(name)
        kind = GLOBAL_FLAGS[kind] if kind not in (None, "bool", "string", "int") else kind
        if kind is None:
            print(f"Incorrect Usage: flag provided but not defined: -{name}", file=sys.stderr)
            return 1
        leading.append(arg)
        if kind == "string" and "=" not in arg:
            if not args:
                print(f"Incorrect Usage: flag needs an argument: -{name}", file=sys.stderr)
                return 1
            leading.append(args.pop(0))
    if args[:1] == ["help"]:
        print(usage(), end="")
        return 0
    for length in (3, 2, 1):
        if tuple(args[:length]) in COMMANDS:
            words, rest = args[:length], args[length:]
            break
    else:
        print(f"Incorrect Usage: unknown command: {' '.join(args) or '(none)'}", file=sys.stderr)
        print(usage(), end="", file=sys.stderr)
        return 1
    try:
        return COMMANDS[tuple(words)](leading + rest)
    except UsageError as problem:
        print(f"Incorrect Usage: {problem}", file=sys.stderr)
        return 1
    except CommandError as problem:
        print(f"Command error: {problem}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.umask(0o027)  # the state holds password hashes
    sys.exit(main(sys.argv[1:]))
