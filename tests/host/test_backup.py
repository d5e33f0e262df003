"""scripts/backup.sh with a real restic, a real PostgreSQL cluster and a real S3 API (moto).

One forge for the module, its tests in order:
* PostgreSQL is Debian's, a cluster of the test's own (initdb in a temporary directory, started as
  the postgres user on a unix socket only, stopped by its PID), with a `gitea` database of a few
  tables;
* the data volume is a temporary directory laid out as the host's (DATA_DIR/gitea/{data,config},
  DATA_DIR/state) with a real git repository made with the git client, LFS objects, attachments, an
  SSH host key, jwt/private.pem, app.ini, and the directories backup.sh leaves out;
* the bundle directory holds the scripts, settings.env (AWS_ENDPOINT_URL: moto on loopback),
  stack-facts.env and the secret files deploy.sh would have staged (secrets/host/restic-password,
  secrets/gitea/...);
* on PATH: `docker`, which turns `compose ... exec -T postgres pg_dump ARGS` into the real pg_dump
  against the test's cluster (or, when BACKUP_TEST_DUMP_FAILS_AFTER is set, its first N bytes and
  exit 1: a dump that dies half-way); `restic`, which logs its command line and runs the real one;
  `python3`, this test's Python (it has boto3, as the host's python3-boto3).
restic is the one the host tier installs (Debian 12: 0.14); Ubuntu 24.04's 0.16 takes the same flags.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness.host_standins import MotoServer
from tests.harness.secret_scan import scan
from tests.harness.tools import require_root
from tests.harness.forge_host import forge_host
from tests.harness.postgres import run

REGION = "eu-central-1"
BUCKET = "gitea-stack-test-backups"
STACK = "test"
DOMAIN = "git.example.com"
ALERT_EMAIL = "ops@example.com"
# ~40 MB of dump, of text that does not repeat (content-defined chunks of repeating text reach restic's
# 8 MiB maximum): about 40 of restic's chunks, so a second run can show what it shares with the first.
ROWS = 160_000
# What backup.sh leaves out of the files snapshot (Gitea rebuilds it), below DATA_DIR/gitea/data.
REBUILT = ("indexers", "repo-archive", "sessions", "tmp")

DOCKER_STANDIN = """#!/bin/bash
# docker for backup.sh: `compose ... exec -T postgres pg_dump ARGS` runs the real pg_dump on the test's cluster.
set -euo pipefail
printf '%s\\n' "$*" >>'{log}'
args=("$@")
[ "${{args[0]}}" = compose ] || {{ echo "docker stand-in: only compose is known, got $*" >&2; exit 99; }}
for ((i = 0; i < ${{#args[@]}}; i++)); do
  if [ "${{args[i]}}" = exec ] && [ "${{args[i+1]}}" = -T ] && [ "${{args[i+2]}}" = postgres ]; then
    dump=("${{args[@]:i+3}}")
    [ "${{dump[0]}}" = pg_dump ] || {{ echo "docker stand-in: not pg_dump: ${{dump[*]}}" >&2; exit 99; }}
    if [ -n "${{BACKUP_TEST_DUMP_FAILS_AFTER:-}}" ]; then
      '{pg_dump}' --host '{socket_dir}' --port {port} "${{dump[@]:1}}" | head -c "$BACKUP_TEST_DUMP_FAILS_AFTER" || true
      echo "pg_dump: error: connection to server lost" >&2
      exit 1
    fi
    exec '{pg_dump}' --host '{socket_dir}' --port {port} "${{dump[@]:1}}"
  fi
done
echo "docker stand-in: unexpected call: $*" >&2
exit 99
"""

RESTIC_WRAPPER = """#!/bin/sh
# restic for backup.sh: its command line, one JSON line per call, then the real restic.
# One write(2) per line to an O_APPEND file: restics run side by side never interleave their lines.
'{python}' -c 'import json, os, sys; os.write(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), (json.dumps(sys.argv[2:]) + "\\n").encode())' '{log}' "$@"
exec '{restic}' "$@"
"""


@dataclass
class Forge:
    root: Path
    bundle_dir: Path
    data_dir: Path
    bin_dir: Path
    moto: MotoServer
    psql: list[str]
    tools: dict[str, str]
    canaries: dict[str, str]
    runs: list[subprocess.CompletedProcess] = field(default_factory=list)
    first: dict = field(default_factory=dict)  # the first backup's status

    @property
    def status_file(self) -> Path:
        return self.data_dir / "state" / "backup-status.json"

    def environment(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "GITEA_STACK_DIR": str(self.bundle_dir), "RESTIC_CACHE_DIR": str(self.root / "cache"),
                "BACKUP_LOCK": str(self.root / "backup.lock"), "GITEA_STACK_LOCK": str(self.root / "stack.lock"),
                "PROGRESS_INTERVAL_SECONDS": "0", **extra}

    def backup(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(self.bundle_dir / "scripts" / "backup.sh"), *args],
                                env=self.environment(**extra), capture_output=True, text=True, timeout=120)
        self.runs.append(result)
        return result

    def restic(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        """The real restic on the repository, as the operator would run it (its own cache); bytes out."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "RESTIC_REPOSITORY": f"s3:{self.moto.url}/{BUCKET}/restic",
               "RESTIC_PASSWORD_FILE": str(self.bundle_dir / "secrets/host/restic-password"),
               "RESTIC_CACHE_DIR": str(self.root / "operator-cache")}
        result = subprocess.run([self.tools["restic"], "--option", f"s3.region={REGION}", *args], input=stdin,
                                env=env, capture_output=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(f"restic {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result

    def snapshots(self) -> list[dict]:
        return json.loads(self.restic("snapshots", "--json").stdout or b"null") or []

    def sql(self, query: str, database: str = "gitea") -> str:
        return subprocess.run([*self.psql, "--dbname", database, "-At", "-c", query],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    def bucket_status(self) -> dict:
        body = self.moto.client("s3").get_object(Bucket=BUCKET, Key="status/backup.json")["Body"].read()
        return json.loads(body)


def fill_database(psql: list[str]) -> None:
    run(*psql, "--dbname", "postgres", "-c", "CREATE DATABASE gitea")
    run(*psql, "--dbname", "gitea", "-v", "ON_ERROR_STOP=1", "-c", f"""
        CREATE TABLE "user" (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, email text);
        CREATE TABLE repository (id bigserial PRIMARY KEY, owner_id bigint REFERENCES "user"(id), name text,
                                 description text);
        CREATE TABLE action (id bigserial PRIMARY KEY, repo_id bigint REFERENCES repository(id), content text);
        INSERT INTO "user" (name, email) SELECT 'user' || i, 'user' || i || '@example.com'
            FROM generate_series(1, 50) i;
        INSERT INTO repository (owner_id, name, description) SELECT 1 + i % 50, 'repo' || i, md5(i::text)
            FROM generate_series(1, 200) i;
        INSERT INTO action (repo_id, content) SELECT 1 + i % 200,
            md5(i::text) || md5((i + 1)::text) || md5((i * 3)::text) || md5((i * 7)::text)
            || md5((i * 11)::text) || md5((i * 13)::text) || md5((i * 17)::text) || md5((i * 19)::text)
            FROM generate_series(1, {ROWS}) i;
    """)


TABLES = ('"user"', "repository", "action")


def make_data_volume(data_dir: Path, tools: dict[str, str], root: Path) -> None:
    gitea = data_dir / "gitea"
    data = gitea / "data"
    for relative, content in {
        "config/app.ini": "[server]\nDOMAIN = git.example.com\n[oauth2]\nJWT_SIGNING_ALGORITHM = RS256\n",
        "data/jwt/private.pem": "-----BEGIN PRIVATE KEY-----\n" + secrets.token_hex(600) + "\n-----END PRIVATE KEY-----\n",
        "data/ssh/gitea.rsa": secrets.token_hex(800),
        "data/custom/public/assets/img/logo.svg": "<svg/>",
        "data/lfs/ab/cd/abcdef0123": secrets.token_bytes(3000).hex(),
        "data/attachments/1/2/12345678": "an attachment\n",
        "data/avatars/0123abcd": secrets.token_hex(300),
        "data/packages/ff/ee/ffee01": secrets.token_hex(300),
        "data/actions_log/alice/project/01/1.log.zst": "step 1\n",
        "data/actions_artifacts/1/artifact.zip": secrets.token_hex(100),
        **{f"data/{rebuilt}/leftover": "rebuilt by Gitea\n" for rebuilt in REBUILT},
    }.items():
        path = gitea / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (data_dir / "state").mkdir(mode=0o700)
    (data_dir / "state" / "gitea-secret-key.sha256").write_text("0" * 64 + "\n")
    # A real repository: pushed to a bare one with the git client, as Gitea stores them.
    git = tools["git"]
    bare = data / "git" / "repositories" / "alice" / "project.git"
    run(git, "init", "--quiet", "--bare", str(bare))
    work = root / "clone"
    run(git, "init", "--quiet", "-b", "main", str(work))
    identity = ("-c", "user.name=Alice", "-c", "user.email=alice@example.com")
    for number in range(20):
        (work / f"file{number}.txt").write_text(f"{number}\n" + secrets.token_hex(2000))
        run(git, "-C", str(work), "add", ".")
        run(git, "-C", str(work), *identity, "commit", "--quiet", "-m", f"commit {number}")
    run(git, "-C", str(work), "push", "--quiet", str(bare), "main")


def make_bundle(bundle_dir: Path, data_dir: Path, endpoint: str, canaries: dict[str, str],
                retention_days: int = 30) -> None:
    (bundle_dir / "scripts").mkdir(parents=True, exist_ok=True)
    for script in ("lib.sh", "backup.sh", "backup-support.py", "send-mail.py"):
        shutil.copy2(SCRIPTS_DIR / script, bundle_dir / "scripts" / script)
    write_settings(bundle_dir, data_dir, endpoint, retention_days)
    (bundle_dir / "stack-facts.env").write_text(
        f"AWS_REGION={REGION}\nBACKUP_BUCKET={BUCKET}\nSECRET_RESTIC_PASSWORD=gitea-stack/{STACK}/restic-password\n")
    for relative, value in canaries.items():
        path = bundle_dir / "secrets" / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(value)
        path.chmod(0o600)


def write_settings(bundle_dir: Path, data_dir: Path, endpoint: str, retention_days: int = 30) -> None:
    (bundle_dir / "settings.env").write_text(
        f"STACK={STACK}\nDOMAIN={DOMAIN}\nDATA_DIR={data_dir}\nBACKUP_RETENTION_DAYS={retention_days}\n"
        f"AWS_ENDPOINT_URL={endpoint}\nALERT_EMAILS={ALERT_EMAIL}\n")


def tree_digests(top: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256 or link target or 'dir', mode) of everything below `top`."""
    found = {}
    for path in sorted(top.rglob("*")):
        relative = str(path.relative_to(top))
        info = path.lstat()
        if path.is_symlink():
            found[relative] = (f"-> {os.readlink(path)}", info.st_mode)
        elif path.is_dir():
            found[relative] = ("dir", info.st_mode)
        else:
            found[relative] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode)
    return found


@pytest.fixture(scope="module")
def forge():
    require_root("PostgreSQL runs as the postgres user and the scripts run as root, as on the host")
    with forge_host("gitea-stack-backup-", REGION, DOMAIN, bucket=BUCKET) as host:
        root, tools, sockets, port, psql = host.root, host.tools, host.sockets, host.port, host.psql
        fill_database(psql)
        data_dir, bundle_dir, bin_dir = host.data_dir, root / "opt/gitea-stack", root / "bin"
        make_data_volume(data_dir, tools, root)
        canaries = {"host/restic-password": "restic-" + secrets.token_urlsafe(24),
                    "gitea/gitea-secret-key": "secret-key-" + secrets.token_urlsafe(24),
                    "gitea/gitea-internal-token": "internal-token-" + secrets.token_urlsafe(24),
                    "gitea/postgres-password": "postgres-" + secrets.token_urlsafe(24)}
        make_bundle(bundle_dir, data_dir, host.moto.url, canaries)
        bin_dir.mkdir()
        for name, text in {
            "docker": DOCKER_STANDIN.format(log=root / "docker-calls.log", pg_dump=tools["pg_dump"],
                                            socket_dir=sockets, port=port),
            "restic": RESTIC_WRAPPER.format(python=sys.executable, log=root / "restic-calls.jsonl",
                                            restic=tools["restic"]),
            "python3": f"#!/bin/sh\nexec '{sys.executable}' \"$@\"\n",
        }.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        yield Forge(root, bundle_dir, data_dir, bin_dir, host.moto, psql, tools, canaries)


def run_snapshots(forge: Forge, run_id: str) -> list[dict]:
    return [snapshot for snapshot in forge.snapshots() if f"run:{run_id}" in snapshot.get("tags", [])]


def kind(snapshot: dict) -> str:
    return next(tag for tag in snapshot["tags"] if tag in ("database", "files"))


def test_help_documents_usage_and_exit_codes():
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "backup.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "Usage: backup.sh" in result.stdout and "Exit codes:" in result.stdout
    assert "3 another backup is running" in result.stdout
    bad = subprocess.run(["bash", str(SCRIPTS_DIR / "backup.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage:" in bad.stderr


def test_a_backup_is_two_snapshots_of_one_run(forge):
    result = forge.backup("--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    forge.first.update(status)
    assert status["state"] == "ok" and status["last_success"] == status["finished"]
    assert "initialising" in result.stderr  # a new bucket: the repository was made on first use
    assert "MiB read" in result.stderr  # progress while restic reads (every 0 s here)
    made = run_snapshots(forge, status["run_id"])
    assert sorted(kind(snapshot) for snapshot in made) == ["database", "files"]
    for snapshot in made:
        assert snapshot["hostname"] == STACK
        assert {"gitea-stack", f"run:{status['run_id']}"} <= set(snapshot["tags"])
        assert status["snapshots"][kind(snapshot)] == snapshot["short_id"]
    assert status["bytes_added"] > 1_000_000
    calls = (forge.root / "docker-calls.log").read_text().splitlines()
    assert len(calls) == 1 and "exec -T postgres pg_dump --format=custom --compress=0 --username=postgres gitea" in calls[0]


def test_the_run_restores_the_database_and_the_files(forge):
    status = forge.first
    restored = forge.root / "restored"
    restored.mkdir()
    dump = forge.restic("dump", status["snapshots"]["database"], "/postgres/gitea.dump").stdout
    (restored / "gitea.dump").write_bytes(dump)
    run(*forge.psql, "--dbname", "postgres", "-c", "CREATE DATABASE restored")
    run(forge.tools["pg_restore"], *forge.psql[1:7], "--dbname", "restored", "--exit-on-error",
        str(restored / "gitea.dump"))
    for table in TABLES:
        count = forge.sql(f"SELECT count(*) FROM {table}")
        assert forge.sql(f"SELECT count(*) FROM {table}", "restored") == count and int(count) > 0
    assert forge.sql("SELECT md5(string_agg(content, ',' ORDER BY id)) FROM action", "restored") == \
        forge.sql("SELECT md5(string_agg(content, ',' ORDER BY id)) FROM action")

    forge.restic("restore", status["snapshots"]["files"], "--target", str(restored / "files"))
    gitea = forge.data_dir / "gitea"
    expected = {path: digest for path, digest in tree_digests(gitea).items()
                if not any(path == f"data/{rebuilt}" or path.startswith(f"data/{rebuilt}/") for rebuilt in REBUILT)}
    assert tree_digests(restored / "files" / str(gitea).lstrip("/")) == expected
    assert "data/jwt/private.pem" in expected and "config/app.ini" in expected
    secrets_dir = restored / "files" / str(forge.bundle_dir / "secrets/gitea").lstrip("/")
    for relative, value in forge.canaries.items():
        if relative.startswith("gitea/"):
            assert (secrets_dir / relative.removeprefix("gitea/")).read_text() == value
    assert not (restored / "files" / str(forge.bundle_dir / "secrets/host").lstrip("/")).exists()
    assert (restored / "files" / str(forge.data_dir / "state/gitea-secret-key.sha256").lstrip("/")).exists()
    repository = restored / "files" / str(gitea / "data/git/repositories/alice/project.git").lstrip("/")
    run(forge.tools["git"], "-C", str(repository), "fsck", "--full", "--strict")
    assert run(forge.tools["git"], "-C", str(repository), "rev-list", "--count", "main").stdout.strip() == "20"


def test_the_status_file_and_the_bucket_object_match(forge):
    local = json.loads(forge.status_file.read_text())
    assert local == forge.bucket_status() == forge.first
    assert forge.status_file.stat().st_mode & 0o777 == 0o644
    assert {"state", "last_success", "duration_s", "bytes_added", "snapshots", "message", "run_id"} <= set(local)


def test_a_second_backup_adds_only_the_change(forge):
    (forge.data_dir / "gitea/data/attachments/1/2/99999999").write_text("a new attachment\n")
    forge.sql("INSERT INTO \"user\" (name, email) VALUES ('newcomer', 'newcomer@example.com')")
    result = forge.backup("--json")
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    assert second["run_id"] != forge.first["run_id"]
    print(f"bytes added: first run {forge.first['bytes_added']}, second run {second['bytes_added']}")
    assert 0 < second["bytes_added"] < forge.first["bytes_added"] / 4, (second, forge.first)
    assert "initialising" not in result.stderr
    assert forge.bucket_status() == second
    forge.first.clear()
    forge.first.update(second)


def mails_since(forge: Forge, count: int) -> list[dict]:
    return forge.moto.sent_mails()[count:]


def test_a_dump_that_dies_half_way_leaves_no_snapshot(forge):
    before, mails = forge.snapshots(), len(forge.moto.sent_mails())
    result = forge.backup("--json", BACKUP_TEST_DUMP_FAILS_AFTER="20000000")
    assert result.returncode == 1, result.stderr
    assert "pg_dump failed (exit code 1)" in result.stderr and "forgotten" in result.stderr
    assert forge.snapshots() == before
    status = json.loads(result.stdout)
    assert status["state"] == "failed" and "pg_dump failed" in status["message"]
    assert status["last_success"] == forge.first["last_success"]
    assert status["snapshots"] == forge.first["snapshots"]
    assert json.loads(forge.status_file.read_text()) == forge.bucket_status() == status
    forge.restic("check")  # what was forgotten leaves the repository sound
    assert len(mails_since(forge, mails)) == 1, result.stderr
    [mail] = mails_since(forge, mails)
    assert mail["subject"].startswith(f"[gitea-stack {STACK}] backup FAILED: pg_dump failed (exit code 1)")
    assert mail["destinations"]["ToAddresses"] == [ALERT_EMAIL]
    assert "earlier snapshots" in mail["body"] and "What to do first" in mail["body"]


def test_a_wrong_password_changes_nothing(forge):
    before, status_before = forge.snapshots(), forge.status_file.read_bytes()
    mails = len(forge.moto.sent_mails())
    calls_before = (forge.root / "docker-calls.log").read_text()
    password = forge.bundle_dir / "secrets/host/restic-password"
    right = password.read_text()
    password.write_text("not-the-password")
    try:
        result = forge.backup()
    finally:
        password.write_text(right)
    assert result.returncode == 1
    assert "wrong password" in result.stderr and "nothing was backed up" in result.stderr
    assert forge.snapshots() == before
    status = json.loads(forge.status_file.read_text())
    assert status["state"] == "failed" and status["last_success"] == json.loads(status_before)["last_success"]
    assert (forge.root / "docker-calls.log").read_text() == calls_before  # no dump was started
    [mail] = mails_since(forge, mails)
    assert "backup FAILED: restic cannot open" in mail["subject"]


def test_an_unreachable_bucket_fails_clearly(forge):
    # Every AWS API of this test is moto's one endpoint, so SES is unreachable too: no mail to check here.
    closed = "http://127.0.0.1:9"  # discard: nothing listens there
    write_settings(forge.bundle_dir, forge.data_dir, closed)
    try:
        result = forge.backup(AWS_MAX_ATTEMPTS="1")
    finally:
        write_settings(forge.bundle_dir, forge.data_dir, forge.moto.url)
    assert result.returncode == 1
    assert "cannot reach the backup bucket" in result.stderr
    assert json.loads(forge.status_file.read_text())["state"] == "failed"


def test_a_concurrent_run_exits_with_the_lock_code_and_changes_nothing(forge):
    before, status_before = forge.snapshots(), forge.status_file.read_bytes()
    mails = len(forge.moto.sent_mails())
    calls_before = (forge.root / "docker-calls.log").read_text()
    with open(forge.root / "backup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what flock(1) takes: a running backup
        result = forge.backup("--json")
    assert result.returncode == 3
    assert "another backup is running" in result.stderr and result.stdout == ""
    assert forge.snapshots() == before and forge.status_file.read_bytes() == status_before
    assert (forge.root / "docker-calls.log").read_text() == calls_before
    [mail] = mails_since(forge, mails)
    assert "backup skipped: the previous run is still going" in mail["subject"]
    assert "systemctl status gitea-stack-backup.service" in mail["body"]


def test_retention_forgets_old_snapshots_and_keeps_the_last_run(forge):
    # A database snapshot from long ago, as a run of 2020 would have left it.
    forge.restic("backup", "--stdin", "--stdin-filename", "postgres/gitea.dump", "--host", STACK,
                 "--tag", "gitea-stack,run:old,database", "--time", "2020-01-01 00:00:00", stdin=b"an old dump")
    assert any("run:old" in snapshot["tags"] for snapshot in forge.snapshots())
    # The runs so far were within a day of the repository's creation: none of them pruned.
    calls = [json.loads(line) for line in (forge.root / "restic-calls.jsonl").read_text().splitlines()]
    assert len(forge.runs) >= 3 and not any("forget" in call and "--prune" in call for call in calls)
    result = forge.backup("--json", BACKUP_PRUNE_INTERVAL_HOURS="0")  # a day later
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    remaining = forge.snapshots()
    assert not any("run:old" in snapshot["tags"] for snapshot in remaining)
    assert sorted(kind(s) for s in remaining if f"run:{status['run_id']}" in s["tags"]) == ["database", "files"]
    assert len(remaining) >= 4  # the earlier runs are within BACKUP_RETENTION_DAYS: kept
    forge.restic("check")
    calls = [json.loads(line) for line in (forge.root / "restic-calls.jsonl").read_text().splitlines()]
    forgets = [call for call in calls if "forget" in call and "--prune" in call]
    assert forgets and all("--keep-within" in call and call[call.index("--keep-within") + 1] == "30d"
                           and "--keep-last" in call for call in forgets)


def test_secrets_never_appear_in_output_or_command_lines(forge):
    calls = [json.loads(line) for line in (forge.root / "restic-calls.jsonl").read_text().splitlines()]
    assert calls and forge.runs
    places = {"restic command lines": calls, "docker command lines": (forge.root / "docker-calls.log").read_text(),
              "output": [[run.stdout, run.stderr] for run in forge.runs],
              "status": [forge.status_file.read_text(), json.dumps(forge.bucket_status())]}
    found = scan(places, forge.canaries.values())
    assert not found.findings, found.findings
