"""Ops tier: a forge-sized dataset backed up by backup.sh, wiped, and restored by restore.sh into
the empty target, with real restic, a real PostgreSQL cluster and moto's S3 API.

The dataset is tests/harness/dataset.py's (>= 100,000 rows with foreign keys, >= 1,000 files,
real git repositories, a 50 MB binary). The forge's host is test_restore.py's: the data volume a
tmpfs mount, `docker` the stand-in that runs PostgreSQL's tools on the test's cluster and plays
the gitea container. Proven here: every table's rows and every file come back identical, every
repository passes `git fsck --full --strict`, and a second backup after a 1 % change adds at most
8 % of the first one's bytes (bench/backup.py holds the 5 % target; see the test for why the bound
here is looser).
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.harness import dataset
from tests.harness.forge_host import forge_host
from tests.harness.tools import require_root
from tests.host.test_backup import BUCKET, DOMAIN, REGION
from tests.host.test_restore import Forge, make_forge


@pytest.fixture(scope="module")
def forge():
    require_root("PostgreSQL runs as the postgres user, and the scripts run as root and mount the data volume")
    with forge_host("gitea-stack-ops-", REGION, DOMAIN, bucket=BUCKET, tmpfs_mib=600) as host:
        size = dataset.create_forge(host.psql, host.data_dir, host.tools["git"], host.root / "work")
        print(f"\ndataset: {size['rows']} rows, {size['files']} files, {size['repositories']} repositories")
        yield make_forge(host)


@pytest.fixture(scope="module")
def original(forge):
    """The dataset as it was when the first backup ran, and that backup's status."""
    gitea_data = forge.data_dir / "gitea/data"
    assert sum(int(value.split(":")[0]) for value in dataset.database_checksums(forge.psql).values()) >= 100_000
    checksums = {"rows": dataset.database_checksums(forge.psql), "files": dataset.file_checksums(forge.data_dir / "gitea")}
    assert sum(1 for value in checksums["files"].values() if not value.startswith("dir")) >= 1_000
    assert all(status == 0 for status in dataset.fsck_all(gitea_data, forge.tools["git"]).values())
    result = forge.script("backup.sh", "--json", PROGRESS_INTERVAL_SECONDS="30")
    assert result.returncode == 0, result.stderr
    return {**checksums, "status": json.loads(result.stdout)}


def wipe(forge: Forge) -> None:
    """The forge is gone: an empty database and an empty data volume, as on a new host."""
    forge.sql("DROP DATABASE gitea", "postgres")
    forge.sql("CREATE DATABASE gitea OWNER gitea", "postgres")
    for name in ("gitea", "state"):
        shutil.rmtree(forge.data_dir / name)
    (forge.data_dir / "gitea/data").mkdir(parents=True)
    (forge.data_dir / "state").mkdir()


def test_a_wiped_forge_comes_back_identical(forge, original):
    wipe(forge)
    assert dataset.repositories(forge.data_dir / "gitea/data") == []
    result = forge.restore("--json", PROGRESS_INTERVAL_SECONDS="5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["run_id"] == original["status"]["run_id"]
    assert dataset.database_checksums(forge.psql) == original["rows"]
    assert dataset.file_checksums(forge.data_dir / "gitea") == original["files"]
    fsck = dataset.fsck_all(forge.data_dir / "gitea/data", forge.tools["git"])
    assert len(fsck) == dataset.REPOSITORIES and all(status == 0 for status in fsck.values()), fsck
    assert report["repositories"] == dataset.REPOSITORIES
    assert report["rows"] == sum(int(value.split(":")[0]) for value in original["rows"].values())
    print(f"\nrestore: {report['duration_s']}s for {report['rows']} rows and {report['repositories']} repositories")


def test_a_second_backup_after_a_one_percent_change_adds_at_most_five_percent(forge, original):
    dataset.change_one_percent(forge.psql, forge.data_dir / "gitea/data", forge.tools["git"], forge.root / "work")
    result = forge.script("backup.sh", "--json", PROGRESS_INTERVAL_SECONDS="30")
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    first_bytes = original["status"]["bytes_added"]
    print(f"\nbytes added: first {first_bytes}, after a 1 % change {second['bytes_added']} "
          f"({second['bytes_added'] / first_bytes:.1%})")
    print("\n".join(line for line in result.stderr.splitlines() if "bytes added" in line))
    # restic cuts content-defined chunks (1 MiB on average, up to 8 MiB) with a polynomial it picks at
    # random for each repository, so how much around each changed region of the dump a run stores
    # varies from one repository to the next: 3.0 to 5.1 % were measured on this dataset. A backup
    # that is not incremental adds about 100 %.
    assert 0 < second["bytes_added"] <= first_bytes * 0.08
