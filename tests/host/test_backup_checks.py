"""scripts/check-backups.sh and scripts/restore-drill.sh on backups made by the real backup.sh.

One forge for the module, built as tests/host/test_backup.py builds its own (its helpers, imported):
a PostgreSQL cluster of the test's own with the `gitea` database, a data volume with a real bare
repository, moto's S3 (the bucket) and SES (the mail, read back from moto's data.json), the real
restic. On PATH, `docker` is tests/harness/postgres_container_standin.py: `docker run` of the stack's
PostgreSQL image starts another cluster of the test's own (the drill's scratch "container"),
`docker exec` runs the real client tools on it, `docker rm -f` stops it by its PID; `docker compose`
goes to test_backup.py's pg_dump stand-in. The tests run in order: the destructive ones last.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness import postgres_container_standin
from tests.harness.secret_scan import scan
from tests.harness.tools import require_root
from tests.harness.forge_host import forge_host
from tests.harness.postgres import run
from tests.host.test_backup import (
    ALERT_EMAIL, BUCKET, DOCKER_STANDIN, DOMAIN, REGION, RESTIC_WRAPPER, STACK, TABLES, Forge, fill_database,
    make_bundle, make_data_volume, tree_digests,
)
from tests.host.test_nginx import wait_until

POSTGRES_IMAGE = "docker.io/library/postgres:18.1-bookworm"
ALERT_EMAILS = ALERT_EMAIL  # what make_bundle writes to settings.env
SCRIPTS = ("check-backups.sh", "restore-drill.sh", "restore-support.py", "send-mail.py")


class CheckedForge(Forge):
    """test_backup.py's Forge with the two scripts of this module and the mail sent through SES."""

    def script(self, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(self.bundle_dir / "scripts" / name), *args],
                                env=self.environment(**extra), capture_output=True, text=True, timeout=300)
        self.runs.append(result)
        return result

    def check(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return self.script("check-backups.sh", *args, **extra)

    def drill(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return self.script("restore-drill.sh", *args, **extra)

    def mails(self) -> list[dict]:
        return self.moto.sent_mails()

    def docker_calls(self) -> list[list[str]]:
        log = self.root / "docker-standin-calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    @property
    def containers(self) -> list[Path]:
        return sorted((self.root / "containers").glob("*.json"))

    def scratch_left(self) -> list[Path]:
        return sorted(self.data_dir.glob(".restore-drill-*"))


def live_fingerprint(forge: CheckedForge) -> dict:
    """The live database's contents and the data volume, less the status files the scripts write by design."""
    written = {"state/backup-check-status.json", "state/restore-drill-status.json", "state/backup-status.json"}
    return {
        "databases": forge.sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database", "postgres"),
        "tables": {table: forge.sql(f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) "
                                    f"FROM {table} t") for table in TABLES},
        "files": {path: digest for path, digest in tree_digests(forge.data_dir).items() if path not in written},
    }


def make_repository_with_a_missing_object(bare: Path, git: str, root: Path) -> None:
    """A bare repository pushed with the git client, one of whose loose objects is then deleted."""
    work = root / f"clone-{bare.name}"
    run(git, "init", "--quiet", "--bare", str(bare))
    run(git, "init", "--quiet", "-b", "main", str(work))
    for number in range(3):
        (work / f"file{number}.txt").write_text(secrets.token_hex(200))
        run(git, "-C", str(work), "add", ".")
        run(git, "-C", str(work), "-c", "user.name=Bob", "-c", "user.email=bob@example.com", "commit", "--quiet",
            "-m", f"commit {number}")
    run(git, "-C", str(work), "push", "--quiet", str(bare), "main")
    blob = run(git, "-C", str(work), "rev-parse", "main:file1.txt").stdout.strip()
    loose = bare / "objects" / blob[:2] / blob[2:]
    assert loose.exists(), "a small push is unpacked into loose objects"
    loose.unlink()


@pytest.fixture(scope="module")
def forge():
    require_root("PostgreSQL runs as the postgres user and the scripts run as root, as on the host")
    with forge_host("gitea-stack-checks-", REGION, DOMAIN, bucket=BUCKET) as host:
        root, tools, sockets, port, psql, moto = host.root, host.tools, host.sockets, host.port, host.psql, host.moto
        try:
            fill_database(psql)
            data_dir, bundle_dir, bin_dir = host.data_dir, root / "opt/gitea-stack", root / "bin"
            make_data_volume(data_dir, tools, root)
            canaries = {"host/restic-password": "restic-" + secrets.token_urlsafe(24),
                        "gitea/gitea-secret-key": "secret-key-" + secrets.token_urlsafe(24),
                        "gitea/postgres-password": "postgres-" + secrets.token_urlsafe(24)}
            make_bundle(bundle_dir, data_dir, moto.url, canaries)
            for script in SCRIPTS:
                shutil.copy2(SCRIPTS_DIR / script, bundle_dir / "scripts" / script)
            with (bundle_dir / "settings.env").open("a") as settings:
                settings.write(f"POSTGRES_IMAGE={POSTGRES_IMAGE}\nPOSTGRES_MAJOR=18\n")  # make_bundle wrote ALERT_EMAILS
            bin_dir.mkdir()
            (root / "containers").mkdir()
            (root / "compose-standin").write_text(DOCKER_STANDIN.format(
                log=root / "docker-calls.log", pg_dump=tools["pg_dump"], socket_dir=sockets, port=port))
            postgres_container_standin.write_docker_wrapper(bin_dir / "docker", {
                "log": str(root / "docker-standin-calls.jsonl"), "state_dir": str(root / "containers"),
                "compose": str(root / "compose-standin"), "image": POSTGRES_IMAGE,
                "tools": {name: tools[name] for name in ("initdb", "postgres", *postgres_container_standin.CLIENT_TOOLS)}})
            for name, text in {
                "restic": RESTIC_WRAPPER.format(python=sys.executable, log=root / "restic-calls.jsonl", restic=tools["restic"]),
                "python3": f"#!/bin/sh\nexec '{sys.executable}' \"$@\"\n",
            }.items():
                (bin_dir / name).write_text(text)
                (bin_dir / name).chmod(0o755)
            checked = CheckedForge(root, bundle_dir, data_dir, bin_dir, moto, psql, tools, canaries)
            first = checked.backup("--json")
            assert first.returncode == 0, first.stderr
            checked.first.update(json.loads(first.stdout))
            yield checked
        finally:
            postgres_container_standin.stop_all(root / "containers")
            subprocess.run(["umount", "--quiet", str(root / "small")], check=False, capture_output=True)


@pytest.mark.parametrize("script", ["check-backups.sh", "restore-drill.sh"])
def test_help_documents_usage_and_exit_codes(script):
    result = subprocess.run(["bash", str(SCRIPTS_DIR / script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert f"Usage: {script}" in result.stdout and "Exit codes:" in result.stdout and "--json" in result.stdout
    bad = subprocess.run(["bash", str(SCRIPTS_DIR / script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage:" in bad.stderr


@pytest.mark.parametrize("subset", ["0", "101", "ten", "5.5"])
def test_the_check_refuses_a_subset_that_is_not_a_percentage(subset):
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "check-backups.sh"), "--subset", subset],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--subset" in result.stderr


def test_the_check_passes_on_sound_backups_and_writes_its_status(forge):
    mails_before = len(forge.mails())
    result = forge.check("--json", "--subset", "100")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "ok" and status["subset"] == "100%"
    assert status["last_success"] == status["finished"] and isinstance(status["duration_s"], int)
    assert {"message", "started", "finished", "repository", "host"} <= set(status)
    assert json.loads((forge.data_dir / "state/backup-check-status.json").read_text()) == status
    assert "checking" in result.stderr and "done: no errors" in result.stderr
    calls = [json.loads(line) for line in (forge.root / "restic-calls.jsonl").read_text().splitlines()]
    assert ["--option", f"s3.region={REGION}", "check", "--read-data-subset", "100%"] in calls
    assert len(forge.mails()) == mails_before  # a sound check mails nobody
    default = forge.check("--json")
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["subset"] == "10%"


def test_the_check_waits_for_a_running_backup(forge):
    stderr = forge.root / "waiting-check.err"
    with open(forge.root / "backup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what flock(1) takes in backup.sh
        with stderr.open("w") as err:
            check = subprocess.Popen(["bash", str(forge.bundle_dir / "scripts/check-backups.sh")],
                                     env=forge.environment(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: "waiting for it to end" in stderr.read_text(), timeout=30, what="the check waiting")
            assert check.poll() is None, "the check must wait, not skip"
            calls_before = (forge.root / "restic-calls.jsonl").read_text()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        assert check.wait(timeout=120) == 0, stderr.read_text()
    assert calls_before.count('"check"') < (forge.root / "restic-calls.jsonl").read_text().count('"check"')


def test_a_check_that_cannot_run_fails_and_mails_without_blaming_the_packs(forge):
    previous = json.loads((forge.data_dir / "state/backup-check-status.json").read_text())
    password = forge.bundle_dir / "secrets/host/restic-password"
    right = password.read_text()
    password.write_text("not-the-password")
    mails_before = len(forge.mails())
    try:
        result = forge.check("--json")
    finally:
        password.write_text(right)
    assert result.returncode == 1
    assert "wrong password" in result.stderr and "nothing was checked" in result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "failed" and status["last_success"] == previous["last_success"]
    assert "damaged_packs" not in status
    mails = forge.mails()[mails_before:]
    assert len(mails) == 1 and "backup check FAILED: restic cannot open" in mails[0]["subject"]
    assert "What it means" not in mails[0]["body"] and "What to do first" in mails[0]["body"]


def test_the_drill_restores_the_latest_run_and_mails_the_result(forge):
    second = forge.backup("--json")  # the latest complete run is the one drilled
    assert second.returncode == 0, second.stderr
    latest = json.loads(second.stdout)
    before = live_fingerprint(forge)
    mails_before, calls_before = len(forge.mails()), len(forge.docker_calls())
    result = forge.drill("--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    calls = forge.docker_calls()[calls_before:]
    live_rows = {table: int(forge.sql(f"SELECT count(*) FROM {table}")) for table in TABLES}
    assert status["state"] == "ok" and status["backup_run_id"] == latest["run_id"]
    assert status["database_snapshot"].startswith(latest["snapshots"]["database"])
    assert status["files_snapshot"].startswith(latest["snapshots"]["files"])
    assert status["tables"] == len(TABLES) and status["rows"] == sum(live_rows.values())
    assert status["table_rows"] == {f"public.{table}": rows for table, rows in live_rows.items()}
    assert status["repositories_checked"] == 1 and status["failed_repositories"] == []
    assert json.loads((forge.data_dir / "state/restore-drill-status.json").read_text()) == status
    mails = forge.mails()[mails_before:]
    assert len(mails) == 1
    mail = mails[0]
    assert mail["subject"].startswith(f"[gitea-stack {STACK}] restore drill passed")
    assert mail["destinations"]["ToAddresses"] == [ALERT_EMAILS]
    assert f"run:{latest['run_id']}" in mail["body"] or latest["run_id"] in mail["body"]
    assert "1 checked, 0 failed" in mail["body"]
    assert f"{len(TABLES)} tables, {sum(live_rows.values())} rows" in mail["body"]
    # The scratch container: the stack's image, no network, gone afterwards; the scratch directory too.
    runs = [call for call in calls if call[:1] == ["run"]]
    assert len(runs) == 1 and POSTGRES_IMAGE in runs[0]
    assert runs[0][runs[0].index("--network") + 1] == "none"
    volume = runs[0][runs[0].index("--volume") + 1]  # PostgreSQL 18's layout, in the scratch directory
    assert volume.startswith(f"{forge.data_dir}/.restore-drill-{latest['run_id']}/") and volume.endswith(
        ":/var/lib/postgresql")
    assert not forge.containers and not forge.scratch_left()
    assert not [call for call in calls if call[:1] == ["compose"]], "the drill never touches the forge"
    assert ["rm", "-f", runs[0][runs[0].index("--name") + 1]] in calls
    assert "MiB of about" in result.stderr  # progress while restic and pg_restore write (every 1 s here)
    assert live_fingerprint(forge) == before


def test_the_drill_waits_for_a_running_backup(forge):
    stderr = forge.root / "waiting-drill.err"
    with open(forge.root / "backup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with stderr.open("w") as err:
            drill = subprocess.Popen(["bash", str(forge.bundle_dir / "scripts/restore-drill.sh")],
                                     env=forge.environment(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: "waiting for it to end" in stderr.read_text(), timeout=30, what="the drill waiting")
            assert drill.poll() is None and "drilling" not in stderr.read_text()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        assert drill.wait(timeout=300) == 0, stderr.read_text()
    assert not forge.containers and not forge.scratch_left()


def test_the_drill_with_keep_leaves_its_scratch_copy(forge):
    result = forge.drill("--keep")
    try:
        assert result.returncode == 0, result.stderr
        assert len(forge.scratch_left()) == 1 and len(forge.containers) == 1
        assert "kept the scratch directory" in result.stderr
        restored = forge.scratch_left()[0] / "files" / str(forge.data_dir / "gitea/data/git/repositories").lstrip("/")
        assert (restored / "alice/project.git/HEAD").exists()
    finally:
        postgres_container_standin.stop_all(forge.root / "containers")
        for scratch in forge.scratch_left():
            shutil.rmtree(scratch)


def test_a_stopped_drill_still_removes_its_container_and_scratch_directory(forge):
    stderr = forge.root / "stopped-drill.err"
    with stderr.open("w") as err:
        drill = subprocess.Popen(["bash", str(forge.bundle_dir / "scripts/restore-drill.sh")],
                                 env=forge.environment(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: "restoring the database dump" in stderr.read_text() or drill.poll() is not None,
                   timeout=60, what="the drill restoring the database")
        assert drill.poll() is None, stderr.read_text()
        drill.send_signal(signal.SIGTERM)  # what systemctl stop sends
        assert drill.wait(timeout=120) == 143, stderr.read_text()
    finally:
        if drill.poll() is None:
            drill.kill()
    assert not forge.containers and not forge.scratch_left(), stderr.read_text()
    assert json.loads((forge.data_dir / "state/restore-drill-status.json").read_text())["state"] == "failed"
    assert "restore drill FAILED" in forge.mails()[-1]["subject"]


def test_the_drill_refuses_when_the_scratch_filesystem_is_too_small(forge):
    small = forge.root / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (the host tier runs as root): {mounted.stderr}")
    try:
        calls_before, mails_before = len(forge.docker_calls()), len(forge.mails())
        result = forge.drill("--json", RESTORE_DRILL_DIR=str(small))
        assert result.returncode == 1, result.stderr
        assert "not enough free space" in result.stderr and "nothing was restored" in result.stderr
        assert json.loads(result.stdout)["state"] == "failed"
        assert forge.docker_calls()[calls_before:] == [], "no container was started"
        assert list(small.iterdir()) == []
        mails = forge.mails()[mails_before:]
        assert len(mails) == 1 and "restore drill FAILED: not enough free space" in mails[0]["subject"]
        assert "RESTORE_DRILL_DIR" in mails[0]["body"]  # what to do first
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_damaged_repository_in_the_backup_fails_the_drill_naming_it(forge):
    broken = forge.data_dir / "gitea/data/git/repositories/bob/broken.git"
    make_repository_with_a_missing_object(broken, forge.tools["git"], forge.root)
    try:
        made = forge.backup()
        assert made.returncode == 0, made.stderr
        mails_before = len(forge.mails())
        result = forge.drill("--json")
        assert result.returncode == 1, result.stderr
        status = json.loads(result.stdout)
        assert status["state"] == "failed" and status["failed_repositories"] == ["bob/broken.git"]
        assert status["repositories_checked"] == 2 and "bob/broken.git" in status["message"]
        assert status["last_success"]  # the earlier drill's
        mails = forge.mails()[mails_before:]
        assert len(mails) == 1 and "restore drill FAILED" in mails[0]["subject"]
        assert "bob/broken.git" in mails[0]["subject"] + mails[0]["body"]
        assert "2 checked, 1 failed: bob/broken.git" in mails[0]["body"]
        assert not forge.containers and not forge.scratch_left()
    finally:
        shutil.rmtree(broken.parent)
    repaired = forge.backup()
    assert repaired.returncode == 0, repaired.stderr


def test_a_bucket_without_a_complete_run_has_nothing_to_drill(forge):
    empty = "gitea-stack-test-empty"
    forge.moto.client("s3").create_bucket(Bucket=empty, CreateBucketConfiguration={"LocationConstraint": REGION})
    facts = forge.bundle_dir / "stack-facts.env"
    original = facts.read_text()
    facts.write_text(original.replace(f"BACKUP_BUCKET={BUCKET}", f"BACKUP_BUCKET={empty}"))
    try:
        result = forge.drill("--json")
        assert result.returncode == 4, result.stderr
        assert "no restic repository" in result.stderr
        # A repository whose only run lacks its files snapshot: no complete run either.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "RESTIC_REPOSITORY": f"s3:{forge.moto.url}/{empty}/restic",
               "RESTIC_PASSWORD_FILE": str(forge.bundle_dir / "secrets/host/restic-password"),
               "RESTIC_CACHE_DIR": str(forge.root / "operator-cache")}
        restic = [forge.tools["restic"], "--option", f"s3.region={REGION}"]
        subprocess.run([*restic, "init"], env=env, check=True, capture_output=True)
        subprocess.run([*restic, "backup", "--stdin", "--stdin-filename", "postgres/gitea.dump", "--host", STACK,
                        "--tag", "gitea-stack,run:incomplete,database"], input=b"a dump", env=env, check=True,
                       capture_output=True)
        mails_before = len(forge.mails())
        result = forge.drill("--json")
        assert result.returncode == 4, result.stderr
        assert "no complete backup run" in result.stderr
        assert json.loads(result.stdout)["state"] == "failed"
        assert "restore drill FAILED" in forge.mails()[mails_before]["subject"]
        assert not forge.containers and not forge.scratch_left()
    finally:
        facts.write_text(original)


def test_a_damaged_pack_fails_the_check_naming_the_snapshots_it_breaks(forge):
    previous = json.loads((forge.data_dir / "state/backup-check-status.json").read_text())
    s3 = forge.moto.client("s3")
    packs = [item for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="restic/data/")
             for item in page.get("Contents", [])]
    largest = max(packs, key=lambda item: item["Size"])  # a pack of the dump's data
    pack_id = largest["Key"].rsplit("/", 1)[1]
    s3.put_object(Bucket=BUCKET, Key=largest["Key"], Body=secrets.token_bytes(largest["Size"]))
    mails_before = len(forge.mails())
    result = forge.check("--json", "--subset", "100")
    assert result.returncode == 1, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "failed" and "restic check found errors" in status["message"]
    assert status["last_success"] == previous["last_success"]
    assert status["damaged_packs"] == [pack_id]
    database_snapshots = {s["id"] for s in forge.snapshots() if "database" in s["tags"]}
    assert status["affected_snapshots"] and set(status["affected_snapshots"]) <= database_snapshots | {
        s["id"] for s in forge.snapshots()}
    assert set(status["affected_snapshots"]) & database_snapshots
    mails = forge.mails()[mails_before:]
    assert len(mails) == 1 and "backup check FAILED" in mails[0]["subject"]
    body = mails[0]["body"]
    assert pack_id in body and "What it means" in body and "What to do first" in body
    assert any(snapshot[:8] in body for snapshot in status["affected_snapshots"])


def test_secrets_never_appear_in_output_mail_or_command_lines(forge):
    calls = [json.loads(line) for line in (forge.root / "restic-calls.jsonl").read_text().splitlines()]
    places = {"restic command lines": calls, "docker command lines": forge.docker_calls(),
              "output": [[run.stdout, run.stderr] for run in forge.runs],
              "mail": [[mail["subject"], mail["body"]] for mail in forge.mails()],
              "status": [(forge.data_dir / "state" / name).read_text()
                         for name in ("backup-check-status.json", "restore-drill-status.json")]}
    found = scan(places, forge.canaries.values())
    assert not found.findings, found.findings
