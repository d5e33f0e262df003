"""The pure parts of scripts/backup-support.py (restic's damage messages, status files) and of
scripts/restore-support.py (the runs in a repository, the latest complete one)."""

from __future__ import annotations

import importlib.util
import io
import json
import time

import pytest

from gitea_stack.rendering import SCRIPTS_DIR

_restore_spec = importlib.util.spec_from_file_location("restore_support", SCRIPTS_DIR / "restore-support.py")
assert _restore_spec and _restore_spec.loader
runs = importlib.util.module_from_spec(_restore_spec)
_restore_spec.loader.exec_module(runs)
_spec = importlib.util.spec_from_file_location("backup_support", SCRIPTS_DIR / "backup-support.py")
assert _spec and _spec.loader
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

PACK = "82ed5a07ca22568350e9bdff0f515ff608bad726836cfd772d9100ecc7f808ce"
OTHER = "f3cd7d8a8f1046a80c0a293aef53583292d8ecf367264a0e30ee9d337a84b35e"


def snapshot(run: str, kind: str, when: str, snapshot_id: str | None = None, tags: tuple[str, ...] = ("gitea-stack",)):
    return {"id": snapshot_id or f"{kind}-{run}", "time": when, "tags": [*tags, f"run:{run}", kind]}


def latest(monkeypatch, capsys, snapshots) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(snapshots)))
    code = runs.pick(runs.read_runs(snapshots), "latest")
    return code, capsys.readouterr().out.strip()


def test_the_latest_complete_run_is_drilled_and_a_newer_incomplete_one_is_not(monkeypatch, capsys):
    code, out = latest(monkeypatch, capsys, [
        snapshot("a", "database", "2026-11-01T01:00:00.123456789Z"),
        snapshot("a", "files", "2026-11-01T01:02:00.987654321Z"),
        snapshot("b", "database", "2026-11-02T01:00:00+01:00"),
        snapshot("b", "files", "2026-11-02T01:03:00+01:00"),
        snapshot("c", "database", "2026-11-03T01:00:00Z"),  # its files snapshot is missing
        snapshot("d", "database", "2026-11-04T01:00:00Z", tags=()),  # not the stack's
        snapshot("d", "files", "2026-11-04T01:00:00Z", tags=()),
    ])
    assert code == 0
    run, started, database, files, age = out.split()
    assert (run, started, database, files) == ("b", "2026-11-02T00:00:00Z", "database-b", "files-b")
    expected = time.time() - runs.restic_time("2026-11-02T00:00:00Z")
    assert abs(int(age) - expected) < 60


@pytest.mark.parametrize("snapshots", [[], None, [snapshot("a", "database", "2026-11-01T01:00:00Z")]])
def test_no_complete_run_is_exit_code_4(monkeypatch, capsys, snapshots):
    assert latest(monkeypatch, capsys, snapshots)[0] == 4


def test_restic_times_keep_nanoseconds_and_offsets():
    assert runs.restic_time("2026-11-02T01:00:00.5+01:00") == runs.restic_time("2026-11-02T00:00:00.5Z")
    assert runs.restic_time("2026-11-02T00:00:00.123456789Z") % 1 == pytest.approx(0.123456789, abs=1e-6)
    with pytest.raises(ValueError):
        runs.restic_time("yesterday")


def test_damaged_packs_are_read_from_both_of_restics_messages(tmp_path):
    log = tmp_path / "check.log"
    log.write_text(f"""using temporary cache in /tmp/restic-check-cache-1
check all packs
pack {OTHER}: does not exist
read 100.0% of data packs
Pack ID does not match, want {PACK}, got {"0" * 64}
pack {OTHER}: does not exist
Fatal: repository contains errors
""")
    assert support.damaged_packs(str(log)) == [OTHER, PACK]


def test_a_check_status_keeps_last_success_and_gets_no_backup_keys(tmp_path, capsys):
    status_file = tmp_path / "backup-check-status.json"
    support.write_status(str(status_file), ["state=ok", "message=fine", "finished=T1", "subset=10%", "duration_s=5"])
    ok = json.loads(status_file.read_text())
    assert ok == {"state": "ok", "message": "fine", "finished": "T1", "subset": "10%", "duration_s": 5,
                  "last_success": "T1"}
    support.write_status(str(status_file), ["state=failed", "message=broken", "finished=T2",
                                            f"list.damaged_packs={PACK}", f"list.damaged_packs={OTHER}"])
    failed = json.loads(status_file.read_text())
    assert failed["last_success"] == "T1" and failed["damaged_packs"] == [PACK, OTHER]
    assert "snapshots" not in failed and "last_success_run_id" not in failed
    assert status_file.stat().st_mode & 0o777 == 0o644
    capsys.readouterr()


def test_a_drill_status_has_table_rows_and_lists(tmp_path, capsys):
    status_file = tmp_path / "restore-drill-status.json"
    support.write_status(str(status_file), ["state=ok", "finished=T", "tables=2", "rows=7", "list.failed_repositories=",
                                            'table.public."user"=5', "table.public.action=2"])
    status = json.loads(capsys.readouterr().out)
    assert status["table_rows"] == {'public."user"': 5, "public.action": 2}
    assert status["failed_repositories"] == [] and status["tables"] == 2 and status["rows"] == 7


def test_a_backup_status_keeps_its_shape(tmp_path, capsys):
    status_file = tmp_path / "backup-status.json"
    support.write_status(str(status_file), ["state=ok", "run_id=r1", "finished=T1", "snapshot.database=d1",
                                            "snapshot.files=f1", "bytes_added=10"])
    support.write_status(str(status_file), ["state=failed", "run_id=r2", "finished=T2"])
    status = json.loads(status_file.read_text())
    assert status["last_success"] == "T1" and status["last_success_run_id"] == "r1"
    assert status["snapshots"] == {"database": "d1", "files": "f1"}
    capsys.readouterr()
