"""scripts/restore.sh with a real restic, a real PostgreSQL cluster and a real S3 API (moto).

One forge for the module, backed up by the real backup.sh, then restored in the tests' order:
* PostgreSQL, the data volume and the bundle are test_backup.py's (a cluster of the test's own, a
  layout of the host's with a real git repository); the data volume is a tmpfs mount, as the
  host's is a filesystem of its own (restore.sh swaps directories within it with `mv`);
* on PATH: `docker` (DOCKER_STANDIN below), which runs `compose exec -T postgres pg_restore|psql|
  pg_dump ...` as the real tools on the test's cluster and plays the gitea container: stopped and
  started by compose, healthy once its database has its tables (or never, when the test says so);
  `restic`, which logs its command line and runs the real one (and, when told, fills the data
  volume first: a disk that fills up during a restore).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness.secret_scan import scan
from tests.harness.tools import require_root, require_tool
from tests.harness.forge_host import ForgeHost, forge_host
from tests.harness.postgres import give_database_to_gitea, run
from tests.host.test_backup import Forge as BackupForge
from tests.host.test_backup import (ALERT_EMAIL, BUCKET, DOMAIN, REBUILT, REGION, STACK, TABLES, fill_database,
                                    make_bundle, make_data_volume, tree_digests)

DOCKER_STANDIN = """#!{python}
# docker for restore.sh: postgres tools on the test's cluster, and a gitea container in a state file.
import json, os, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
state_file = {state!r}
def state():
    return open(state_file).read().strip() if os.path.exists(state_file) else "running"
def gitea_tables():
    out = subprocess.run([{psql!r}, "--host", {sockets!r}, "--port", "{port}", "--username", "postgres",
                          "--dbname", "gitea", "-At", "-c", "SELECT count(*) FROM pg_tables WHERE tablename = 'user'"],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "1"
if args[:1] == ["inspect"]:
    healthy = state() == "running" and gitea_tables() and not os.environ.get("RESTORE_TEST_GITEA_UNHEALTHY")
    print("healthy" if healthy else "unhealthy")
    sys.exit(0)
if args[:1] != ["compose"]:
    sys.exit(f"docker stand-in: unexpected call {{args}}")
for i, arg in enumerate(args):
    if args[i:i + 3] == ["exec", "-T", "postgres"]:
        tool, rest = args[i + 3], args[i + 4:]
        if tool not in ("psql", "pg_restore", "pg_dump"):
            sys.exit(f"docker stand-in: unexpected tool {{tool}}")
        os.execv(os.path.join({server_bin!r}, tool), [tool, "--host", {sockets!r}, "--port", "{port}", *rest])
    if args[i:i + 3] == ["ps", "--quiet", "gitea"]:
        if state() == "running":
            print("gitea-container")
        sys.exit(0)
    if args[i:i + 2] == ["stop", "gitea"]:
        open(state_file, "w").write("stopped")
        sys.exit(0)
    if args[i:i + 3] == ["up", "--detach", "gitea"]:
        open(state_file, "w").write("running")
        with open({starts!r}, "a") as starts:
            key = os.path.join(os.environ["GITEA_STACK_DIR"], "secrets/gitea/gitea-secret-key")
            starts.write(open(key).read() + "\\n")
        sys.exit(0)
sys.exit(f"docker stand-in: unexpected call {{args}}")
"""

RESTIC_WRAPPER = """#!/bin/sh
# restic for restore.sh: its command line, one JSON line per call; when RESTORE_TEST_FILL is set, a
# restore first finds the volume all but full (another writer filled it), then the real restic.
# One write(2) per line to an O_APPEND file: restics run side by side never interleave their lines.
'{python}' -c 'import json, os, sys; os.write(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), (json.dumps(sys.argv[2:]) + "\\n").encode())' '{log}' "$@"
for argument in "$@"; do
  if [ "$argument" = restore ] && [ -n "${{RESTORE_TEST_FILL:-}}" ]; then
    fallocate -l "$(($(df --output=avail -B1 "$(dirname "$RESTORE_TEST_FILL")" | tail -n 1) - 65536))" "$RESTORE_TEST_FILL"
  fi
done
exec '{restic}' "$@"
"""


def install_standins(root: Path, bin_dir: Path, tools: dict[str, str], sockets: Path, port: int,
                     log_restic: bool = True) -> None:
    """`docker` (DOCKER_STANDIN), `python3` (this Python: it has boto3, as the host's) and, with
    log_restic, the logging `restic` wrapper, in bin_dir; their logs in root."""
    bin_dir.mkdir()
    standins = {
        "docker": DOCKER_STANDIN.format(python=sys.executable, log=str(root / "docker-calls.jsonl"),
                                        state=str(root / "gitea-state"), psql=tools["psql"], sockets=str(sockets),
                                        port=port, server_bin=str(Path(tools["psql"]).parent),
                                        starts=str(root / "gitea-starts.log")),
        "python3": f"#!/bin/sh\nexec '{sys.executable}' \"$@\"\n",
    }
    if log_restic:
        standins["restic"] = RESTIC_WRAPPER.format(python=sys.executable, log=root / "restic-calls.jsonl",
                                                   restic=tools["restic"])
    for name, text in standins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


class Forge(BackupForge):
    """test_backup.py's Forge, run with restore.sh's settings and stand-ins."""

    def environment(self, **extra: str) -> dict[str, str]:
        return super().environment(**{"PROGRESS_INTERVAL_SECONDS": "1", "RESTORE_SPACE_MARGIN_MIB": "0",
                                      "HEALTH_TIMEOUT_SECONDS": "20", **extra})

    def script(self, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.bundle_dir / "scripts" / name), *args],
                              env=self.environment(**extra), capture_output=True, text=True, timeout=300)

    def restore(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return self.script("restore.sh", *args, **extra)

    def backup_status(self) -> dict:
        """backup.sh --json, which must succeed; its status."""
        result = self.script("backup.sh", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def databases(self) -> set[str]:
        return set(self.sql("SELECT datname FROM pg_database", "postgres").split())

    def table_checksums(self, database: str = "gitea") -> dict[str, str]:
        return {table: self.sql(f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) "
                                f"FROM {table} t", database) for table in TABLES}

    def files(self) -> dict[str, tuple[str, int]]:
        """The live forge's files, as backup.sh keeps them (what Gitea rebuilds left out)."""
        return {path: digest for path, digest in tree_digests(self.data_dir / "gitea").items()
                if not any(path == f"data/{name}" or path.startswith(f"data/{name}/") for name in REBUILT)}

    def gitea_state(self) -> str:
        state = self.root / "gitea-state"
        return state.read_text().strip() if state.exists() else "running"

    def docker_calls(self) -> list[list[str]]:
        log = self.root / "docker-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def restic_calls(self) -> list[list[str]]:
        return [json.loads(line) for line in (self.root / "restic-calls.jsonl").read_text().splitlines()]

    def leftovers(self) -> list[str]:
        """Staging copies a restore must never leave behind."""
        staged = [path.name for path in self.data_dir.glob(".restore-*")]
        return staged + sorted({"gitea_restore"} & self.databases())


def make_forge(host: ForgeHost, log_restic: bool = True, canaries: dict[str, str] | None = None) -> Forge:
    """A forge on the host's data volume, PostgreSQL cluster and moto: the bundle (scripts, settings,
    secret files with canary values, and `canaries` too) and the stand-ins (the logging restic
    wrapper with log_restic)."""
    bundle_dir, bin_dir = host.root / "opt/gitea-stack", host.root / "bin"
    canaries = {"host/restic-password": "restic-" + os.urandom(12).hex(),
                "gitea/gitea-secret-key": "secret-key-" + os.urandom(12).hex(),
                "gitea/gitea-internal-token": "internal-token-" + os.urandom(12).hex(), **(canaries or {})}
    make_bundle(bundle_dir, host.data_dir, host.moto.url, canaries)
    for script in ("restore.sh", "restore-support.py"):
        shutil.copy2(SCRIPTS_DIR / script, bundle_dir / "scripts" / script)
    install_standins(host.root, bin_dir, host.tools, host.sockets, host.port, log_restic)
    return Forge(host.root, bundle_dir, host.data_dir, bin_dir, host.moto, host.psql, host.tools, canaries)


@pytest.fixture(scope="module")
def forge():
    require_root("PostgreSQL runs as the postgres user, and the scripts run as root and mount the data volume")
    require_tool("fallocate", "util-linux")  # the disk that fills during a restore
    with forge_host("gitea-stack-restore-", REGION, DOMAIN, bucket=BUCKET, tmpfs_mib=200) as host:
        fill_database(host.psql)
        give_database_to_gitea(host.psql)
        make_data_volume(host.data_dir, host.tools, host.root)
        forge = make_forge(host, canaries={"gitea/postgres-password": "postgres-" + os.urandom(12).hex()})
        yield forge


@pytest.fixture(scope="module")
def backed_up(forge):
    """Two runs of backup.sh; the first one's database and files as they were when it ran."""
    first_rows, first_files = forge.table_checksums(), forge.files()
    first = forge.backup_status()
    (forge.data_dir / "gitea/data/attachments/1/2/55555555").write_text("after the first run\n")
    forge.sql("INSERT INTO \"user\" (name, email) VALUES ('second', 'second@example.com')")
    second = forge.backup_status()
    return {"first": first, "first_rows": first_rows, "first_files": first_files, "second": second}


def failure_mail(forge: Forge, count: int, subject: str) -> dict:
    """The one mail sent since there were `count`: to the alert address, about `subject`."""
    mails = forge.moto.sent_mails()[count:]
    assert len(mails) == 1, mails
    assert mails[0]["destinations"]["ToAddresses"] == [ALERT_EMAIL]
    assert mails[0]["subject"].startswith(f"[gitea-stack {STACK}] restore of run ") and subject in mails[0]["subject"]
    assert "What to do first" in mails[0]["body"]
    return mails[0]


def unchanged(forge: Forge):
    """What the live forge is now, to compare with after a restore that must change nothing."""
    return forge.table_checksums(), forge.files(), sorted(forge.databases()), forge.gitea_state()


def test_help_documents_usage_and_exit_codes():
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "restore.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for text in ("Usage: restore.sh --list", "--extract PATH", "--bucket NAME", "Exit codes:",
                 "4 no such run", "5 the target holds data"):
        assert text in result.stdout
    for bad in (["--bogus"], ["--snapshot"], ["--extract", "x"], ["--to", "/tmp/x"], ["--bucket", "b"]):
        result = subprocess.run(["bash", str(SCRIPTS_DIR / "restore.sh"), *bad], capture_output=True, text=True)
        assert result.returncode == 2 and "Usage:" in result.stderr, bad


def test_list_shows_the_runs_newest_first(forge, backed_up):
    result = forge.restore("--list", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [run["run_id"] for run in runs] == [backed_up["second"]["run_id"], backed_up["first"]["run_id"]]
    assert all(run["complete"] for run in runs)
    assert runs[0]["database"].startswith(backed_up["second"]["snapshots"]["database"])
    text = forge.restore("--list")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["RUN", "TIME", "DATABASE", "FILES", "STATE"]
    assert lines[1].split()[0] == backed_up["second"]["run_id"] and lines[1].split()[-1] == "complete"


def test_a_target_that_holds_data_is_refused_without_force(forge, backed_up):
    before, calls = unchanged(forge), len(forge.docker_calls())
    mails = len(forge.moto.sent_mails())
    result = forge.restore()
    assert result.returncode == 5, result.stderr
    assert "the target holds a forge" in result.stderr and "nothing was changed" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    assert not any("stop" in call or "pg_restore" in call for call in forge.docker_calls()[calls:])
    mail = failure_mail(forge, mails, 'FAILED: the target holds a forge')
    assert 'The live forge is as it was' in mail["body"]


def test_a_run_that_does_not_exist_is_exit_4(forge, backed_up):
    before, mails = unchanged(forge), len(forge.moto.sent_mails())
    result = forge.restore("--snapshot", "20200101T000000.000000000Z", "--force")
    assert result.returncode == 4, result.stderr
    assert "no backup run or snapshot '20200101T000000.000000000Z'" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    failure_mail(forge, mails, "FAILED: no run '20200101T000000.000000000Z'")


def test_a_wrong_password_changes_nothing(forge, backed_up):
    before, mails = unchanged(forge), len(forge.moto.sent_mails())
    password = forge.bundle_dir / "secrets/host/restic-password"
    right = password.read_text()
    password.write_text("not-the-password")
    try:
        result = forge.restore("--force")
    finally:
        password.write_text(right)
    assert result.returncode == 1
    assert "wrong password" in result.stderr and "nothing was changed" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    failure_mail(forge, mails, 'FAILED: restic cannot read')


def test_too_little_room_is_refused_before_anything_is_written(forge, backed_up):
    before, mails = unchanged(forge), len(forge.moto.sent_mails())
    result = forge.restore("--force", RESTORE_SPACE_MARGIN_MIB="100000")
    assert result.returncode == 1
    assert "needs about" in result.stderr and "nothing was changed" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    failure_mail(forge, mails, 'FAILED: the data volume has')


def test_a_disk_that_fills_during_the_restore_leaves_the_live_forge_as_it_was(forge, backed_up):
    before, mails = unchanged(forge), len(forge.moto.sent_mails())
    filler = forge.data_dir / "filler"
    try:
        result = forge.restore("--force", RESTORE_TEST_FILL=str(filler))
    finally:
        filler.unlink(missing_ok=True)
    assert result.returncode == 1, result.stderr
    assert "could not restore the files" in result.stderr and "the live forge is as it was" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    mail = failure_mail(forge, mails, 'FAILED: restic could not restore the files')
    assert 'The live forge is as it was' in mail["body"]


def test_gitea_that_stays_unhealthy_on_the_restored_data_is_put_back(forge, backed_up):
    before, mails = unchanged(forge), len(forge.moto.sent_mails())
    result = forge.restore("--force", RESTORE_TEST_GITEA_UNHEALTHY="1", HEALTH_TIMEOUT_SECONDS="4")
    assert result.returncode == 1, result.stderr
    assert "not healthy in time: gitea=unhealthy" in result.stderr
    assert "putting the live forge back as it was" in result.stderr
    assert unchanged(forge) == before and forge.leftovers() == []
    assert not list(forge.data_dir.glob("before-restore-*"))
    failure_mail(forge, mails, 'FAILED: not healthy in time')


def test_a_named_run_restores_over_a_damaged_forge_and_keeps_what_was_there(forge, backed_up):
    # The damage: a repository deleted, rows gone, a file changed.
    shutil.rmtree(forge.data_dir / "gitea/data/git/repositories/alice/project.git")
    forge.sql("DELETE FROM action WHERE id % 2 = 0")
    (forge.data_dir / "gitea/data/avatars/0123abcd").write_text("changed\n")
    damaged_rows, damaged_files = forge.table_checksums(), forge.files()
    first = backed_up["first"]
    result = forge.restore("--snapshot", first["run_id"], "--force", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert forge.table_checksums() == backed_up["first_rows"]
    assert forge.files() == backed_up["first_files"]
    repository = forge.data_dir / "gitea/data/git/repositories/alice/project.git"
    run(forge.tools["git"], "-C", str(repository), "fsck", "--full", "--strict")
    assert report["run_id"] == first["run_id"] and report["repositories"] == 1 and report["tables"] == 3
    assert report["rows"] == sum(int(value.split(":")[0]) for value in backed_up["first_rows"].values())
    # What was there is kept aside, named in the report.
    assert forge.table_checksums(report["kept_database"]) == damaged_rows
    kept = Path(report["kept_directory"])
    assert kept.parent == forge.data_dir and kept.name.startswith("before-restore-")
    assert {path: digest for path, digest in tree_digests(kept / "gitea").items()
            if not any(path == f"data/{name}" or path.startswith(f"data/{name}/") for name in REBUILT)} == damaged_files
    assert forge.gitea_state() == "running" and forge.leftovers() == []
    assert "Sync missed branches" in result.stderr and "MiB so far" in result.stderr
    # Gitea was stopped before the swap and started after it.
    names = [" ".join(call) for call in forge.docker_calls()]
    stop = max(i for i, call in enumerate(names) if call.endswith("stop gitea"))
    rename = max(i for i, call in enumerate(names) if "RENAME TO gitea" in call)
    start = max(i for i, call in enumerate(names) if call.endswith("up --detach gitea"))
    assert stop < rename < start


def test_the_restored_forge_keeps_its_secret_key_with_its_data(forge, backed_up):
    key = forge.canaries["gitea/gitea-secret-key"]
    assert (forge.data_dir / "state/gitea-secrets/gitea-secret-key").read_text() == key
    assert (forge.data_dir / "state/gitea-secrets/gitea-secret-key").stat().st_mode & 0o777 == 0o600
    assert (forge.bundle_dir / "secrets/gitea/gitea-secret-key").read_text() == key
    # This host's own backup status stays the live one, not the restored one.
    status = json.loads((forge.data_dir / "state/backup-status.json").read_text())
    assert status["run_id"] == backed_up["second"]["run_id"]


def test_extract_pulls_one_repository_without_touching_the_live_forge(forge, backed_up):
    before = unchanged(forge)
    target = forge.root / "extracted"
    path = "git/repositories/alice/project.git"
    result = forge.restore("--extract", path, "--to", str(target))
    assert result.returncode == 0, result.stderr
    restored = target / str(forge.data_dir / "gitea/data" / path).lstrip("/")
    assert f"done: {restored}" in result.stderr
    run(forge.tools["git"], "-C", str(restored), "fsck", "--full", "--strict")
    assert run(forge.tools["git"], "-C", str(restored), "rev-list", "--count", "main").stdout.strip() == "20"
    assert not (target / str(forge.data_dir / "gitea/data/lfs").lstrip("/")).exists()  # only what was asked
    assert unchanged(forge) == before
    again = forge.restore("--extract", path, "--to", str(target))
    assert again.returncode == 5 and "already exists" in again.stderr
    missing = forge.restore("--extract", "git/repositories/nobody/nothing.git", "--to", str(forge.root / "x"))
    assert missing.returncode == 4 and "has no" in missing.stderr
    live = forge.restore("--extract", path, "--to", str(forge.data_dir / "gitea/data/restored"))
    assert live.returncode == 1 and "inside the live forge's data" in live.stderr


def test_another_stacks_bucket_restores_into_an_empty_target_before_gitea_starts(forge, backed_up):
    """Disaster recovery: a new stack (its own secret key) with an empty volume and an empty
    database, restoring from the old stack's bucket read-only with its password file."""
    forge.sql("DROP DATABASE gitea", "postgres")
    forge.sql("CREATE DATABASE gitea OWNER gitea", "postgres")
    for name in ("gitea", "state"):
        shutil.rmtree(forge.data_dir / name)
    shutil.rmtree(next(forge.data_dir.glob("before-restore-*")))
    (forge.data_dir / "gitea/data").mkdir(parents=True)
    (forge.data_dir / "state").mkdir()
    (forge.root / "gitea-state").write_text("stopped")
    new_key = forge.bundle_dir / "secrets/gitea/gitea-secret-key"
    new_key.write_text("the-new-stacks-own-key")
    password = forge.root / "old-stack-password"
    password.write_text(forge.canaries["host/restic-password"])
    calls = len(forge.restic_calls())

    verify = forge.restore("--verify-source", "--json", "--bucket", BUCKET, "--region", REGION,
                           "--password-file", str(password))
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["run_id"] == backed_up["second"]["run_id"]
    result = forge.restore("--no-start", "--json", "--bucket", BUCKET, "--region", REGION,
                           "--password-file", str(password))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["run_id"] == backed_up["second"]["run_id"] and report["started"] == "false"
    assert report["kept_database"] and forge.gitea_state() == "stopped"
    assert forge.table_checksums()['"user"'].startswith(str(50 + 1) + ":")  # the second run's rows
    assert (forge.data_dir / "gitea/data/attachments/1/2/55555555").read_text() == "after the first run\n"
    assert new_key.read_text() == forge.canaries["gitea/gitea-secret-key"]
    assert all("--no-lock" in call for call in forge.restic_calls()[calls:])


def test_a_wrong_password_for_another_stacks_bucket_fails_clearly(forge, backed_up):
    password = forge.root / "wrong-password"
    password.write_text("not-it")
    before = unchanged(forge)
    result = forge.restore("--bucket", BUCKET, "--region", REGION, "--password-file", str(password))
    assert result.returncode == 1
    assert "wrong password" in result.stderr and "nothing was changed" in result.stderr
    assert unchanged(forge) == before


def test_secrets_never_appear_in_output_or_command_lines(forge, backed_up):
    places = {"restic command lines": forge.restic_calls(), "docker command lines": forge.docker_calls()}
    found = scan(places, forge.canaries.values())
    assert not found.findings, found.findings
