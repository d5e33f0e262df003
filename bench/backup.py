"""Backup and restore of a forge-sized dataset: our method (scripts/backup.sh and scripts/restore.sh,
restic into S3) against the seeds' (the original Terraform+Ansible design: `pg_dump | gzip` and
`tar czf` of Gitea's data directory, both uploaded to S3), side by side, medians of --runs runs.

Usage, as root: .venv/bin/python bench/backup.py [--runs N]      (N >= 1, default 3)

The dataset is tests/harness/dataset.py's (>= 100,000 rows with foreign keys, >= 1,000 files, 24
real git repositories, a 50 MB binary), made once, in a PostgreSQL cluster of the benchmark's own
and a data volume on a tmpfs mount (as the host's is a filesystem of its own; both methods read and
write the same mount). S3 is moto's server on loopback. The forge's `docker` is
tests/host/test_restore.py's stand-in (PostgreSQL's tools on the benchmark's cluster); `restic` is
the real one, called directly (not the tests' logging wrapper, which would charge our method a
Python start per restic call).

Each run starts from the pristine dataset (a pg_dump and a copy of the data volume, put back
untimed), with a new bucket for each method, then times:
  full     ours: backup.sh into an empty repository; seeds: pg_dump | gzip, tar czf, upload_file x2
  incr     after dataset.change_one_percent: ours: backup.sh again; seeds: the same full again
  restore  after wiping the forge (empty database, empty data volume, as tests/ops does), from the
           second backup: ours: restore.sh (restic with an empty cache, as on a new host); seeds:
           download both, tar xzf, gunzip | psql
and checks each restore (every table's rows, every file with its mode, git fsck of every
repository) against the forge as it was backed up. Bytes: ours, restic's bytes added (backup.sh
--json) and the bucket's growth; seeds, the bytes uploaded.
Prints a table of medians with the targets (full backup at most 0.5x the seeds' time, incremental
at most 5 % of the full's bytes, restore no slower than the seeds') and writes bench/results/backup.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import dataset  # noqa: E402
from tests.harness.forge_host import forge_host  # noqa: E402
from tests.harness.postgres import run  # noqa: E402
from tests.host.test_backup import DOMAIN, REGION  # noqa: E402
from tests.host.test_restore import Forge, make_forge  # noqa: E402
from tests.ops.test_backup_restore_dataset import wipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "backup.json"
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


# --- the forge -------------------------------------------------------------------------------


def use_bucket(forge: Forge, bucket: str) -> None:
    (forge.bundle_dir / "stack-facts.env").write_text(
        f"AWS_REGION={REGION}\nBACKUP_BUCKET={bucket}\nSECRET_RESTIC_PASSWORD=gitea-stack/test/restic-password\n")


def bucket_bytes(s3, bucket: str) -> int:
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(item["Size"] for item in page.get("Contents", []))
    return total


def delete_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


def snapshot(forge: Forge) -> dict:
    """What a restore must give back: every table's rows and every file below DATA_DIR/gitea."""
    return {"rows": dataset.database_checksums(forge.psql), "files": dataset.file_checksums(forge.data_dir / "gitea")}


def verified(forge: Forge, expected: dict) -> bool:
    fsck = dataset.fsck_all(forge.data_dir / "gitea/data", forge.tools["git"])
    checks = {"rows": dataset.database_checksums(forge.psql) == expected["rows"],
              "files": dataset.file_checksums(forge.data_dir / "gitea") == expected["files"],
              "fsck": len(fsck) == dataset.REPOSITORIES and all(status == 0 for status in fsck.values())}
    if not all(checks.values()):
        progress(f"    VERIFY FAILED: {checks}")
    return all(checks.values())


def save_pristine(forge: Forge, pristine: Path, work: Path) -> None:
    pristine.mkdir()
    run(forge.tools["pg_dump"], *forge.psql[1:-1], "--format=custom", "--file", str(pristine / "gitea.dump"), "gitea",
        timeout=600)
    run("cp", "-a", f"{forge.data_dir}/.", str(pristine / "data"))
    run("cp", "-a", str(work / "owner0-project0"), str(pristine / "clone"))  # change_one_percent pushes from it


def reset_to_pristine(forge: Forge, pristine: Path, work: Path) -> None:
    """The dataset as it was made: database, data volume and the clone change_one_percent uses."""
    for database in forge.sql("SELECT datname FROM pg_database WHERE datname LIKE 'gitea%'", "postgres").split():
        forge.sql(f"DROP DATABASE {database}", "postgres")
    forge.sql("CREATE DATABASE gitea OWNER gitea", "postgres")
    run(forge.tools["pg_restore"], *forge.psql[1:-1], "--dbname", "gitea", str(pristine / "gitea.dump"), timeout=600)
    for child in forge.data_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    run("cp", "-a", f"{pristine / 'data'}/.", str(forge.data_dir))
    shutil.rmtree(work / "owner0-project0")
    run("cp", "-a", str(pristine / "clone"), str(work / "owner0-project0"))
    (forge.root / "gitea-state").unlink(missing_ok=True)


# --- the two methods -------------------------------------------------------------------------


def run_script(forge: Forge, name: str, *args: str, **extra: str) -> tuple[float, str]:
    """Runs one of the bundle's scripts as Forge.script does, timed until the script exits: its output
    goes to files, not pipes, so a child it leaves behind holding them (restore.sh's progress
    reporter's `sleep`) is not counted. Returns (seconds, stdout)."""
    out, err = forge.root / f"{name}.out", forge.root / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        seconds, result = timed(lambda: subprocess.run(
            ["bash", str(forge.bundle_dir / "scripts" / name), *args], stdout=stdout, stderr=stderr,
            env=forge.environment(PROGRESS_INTERVAL_SECONDS="30", **extra), timeout=900))
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}):\n{err.read_text()}")
    return seconds, out.read_text()


def ours_backup(forge: Forge, bucket: str) -> dict:
    before = bucket_bytes(forge.moto.client("s3"), bucket)
    seconds, stdout = run_script(forge, "backup.sh", "--json")
    return {"s": seconds, "bytes": json.loads(stdout)["bytes_added"],
            "bucket_bytes": bucket_bytes(forge.moto.client("s3"), bucket) - before}


def ours_restore(forge: Forge, cache: Path) -> float:
    return run_script(forge, "restore.sh", "--json", RESTIC_CACHE_DIR=str(cache))[0]


def seeds_backup(forge: Forge, s3, bucket: str, prefix: str, scratch: Path) -> dict:
    """pg_dump | gzip and tar czf of Gitea's directory, then both uploaded: the seeds' backup role."""
    dump, tarball = scratch / "gitea.sql.gz", scratch / "gitea-data.tar.gz"

    def backup() -> None:
        run("bash", "-c", 'set -o pipefail; "$@" | gzip >"$DUMP"', "pg_dump", forge.tools["pg_dump"],
            *forge.psql[1:-1], "gitea", env={**os.environ, "DUMP": str(dump)}, timeout=600)
        run("tar", "czf", str(tarball), "-C", str(forge.data_dir), "gitea", timeout=600)
        for path in (dump, tarball):
            s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")

    seconds, _ = timed(backup)
    uploaded = dump.stat().st_size + tarball.stat().st_size
    dump.unlink()
    tarball.unlink()
    return {"s": seconds, "bytes": uploaded}


def seeds_restore(forge: Forge, s3, bucket: str, prefix: str, scratch: Path) -> float:
    dump, tarball = scratch / "gitea.sql.gz", scratch / "gitea-data.tar.gz"

    def restore() -> None:
        for path in (dump, tarball):
            s3.download_file(bucket, f"{prefix}/{path.name}", str(path))
        run("tar", "xzf", str(tarball), "-C", str(forge.data_dir), timeout=600)
        run("bash", "-c", 'set -o pipefail; gunzip -c "$DUMP" | "$@"', "psql", *forge.psql, "--dbname", "gitea",
            "-v", "ON_ERROR_STOP=1", env={**os.environ, "DUMP": str(dump)}, timeout=600)

    seconds, _ = timed(restore)
    dump.unlink()
    tarball.unlink()
    return seconds


# --- one repetition --------------------------------------------------------------------------


def repetition(number: int, forge: Forge, pristine: Path, work: Path) -> dict:
    s3 = forge.moto.client("s3")
    ours_bucket, seeds_bucket = f"bench-ours-{number}", f"bench-seeds-{number}"
    scratch = forge.root / f"seeds-{number}"
    scratch.mkdir()
    cache = forge.root / f"restore-cache-{number}"
    for bucket in (ours_bucket, seeds_bucket):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    use_bucket(forge, ours_bucket)
    figures = {}
    try:
        progress(f"run {number}: putting the pristine dataset back (untimed)")
        reset_to_pristine(forge, pristine, work)
        progress(f"run {number}: full backup, ours (backup.sh)")
        full = ours_backup(forge, ours_bucket)
        progress(f"    {full['s']:.1f}s, {full['bytes']} bytes added, bucket +{full['bucket_bytes']} bytes")
        progress(f"run {number}: full backup, seeds (pg_dump | gzip, tar czf, upload)")
        seed_full = seeds_backup(forge, s3, seeds_bucket, "full", scratch)
        progress(f"    {seed_full['s']:.1f}s, {seed_full['bytes']} bytes uploaded")
        progress(f"run {number}: changing 1 % of the dataset (untimed)")
        dataset.change_one_percent(forge.psql, forge.data_dir / "gitea/data", forge.tools["git"], work)
        progress(f"run {number}: incremental backup, ours (backup.sh)")
        incr = ours_backup(forge, ours_bucket)
        progress(f"    {incr['s']:.1f}s, {incr['bytes']} bytes added, bucket +{incr['bucket_bytes']} bytes")
        progress(f"run {number}: 'incremental' backup, seeds (another full)")
        seed_incr = seeds_backup(forge, s3, seeds_bucket, "incremental", scratch)
        progress(f"    {seed_incr['s']:.1f}s, {seed_incr['bytes']} bytes uploaded")
        expected = snapshot(forge)
        progress(f"run {number}: wipe, then restore, ours (restore.sh)")
        wipe(forge)
        restore_s = ours_restore(forge, cache)
        ours_ok = verified(forge, expected)
        progress(f"    {restore_s:.1f}s, verified: {ours_ok}")
        progress(f"run {number}: wipe, then restore, seeds (download, tar xzf, gunzip | psql)")
        wipe(forge)
        seed_restore_s = seeds_restore(forge, s3, seeds_bucket, "incremental", scratch)
        seeds_ok = verified(forge, expected)
        progress(f"    {seed_restore_s:.1f}s, verified: {seeds_ok}")
        figures = {"full_s": full["s"], "full_bytes": full["bytes"], "full_bucket_bytes": full["bucket_bytes"],
                   "incr_s": incr["s"], "incr_bytes": incr["bytes"], "incr_bucket_bytes": incr["bucket_bytes"],
                   "restore_s": restore_s, "verified": ours_ok,
                   "seed_full_s": seed_full["s"], "seed_full_bytes": seed_full["bytes"],
                   "seed_incr_s": seed_incr["s"], "seed_incr_bytes": seed_incr["bytes"],
                   "seed_restore_s": seed_restore_s, "seed_verified": seeds_ok}
    finally:
        for bucket in (ours_bucket, seeds_bucket):
            delete_bucket(s3, bucket)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return figures


# --- the report ------------------------------------------------------------------------------


def report(runs: list[dict], size: dict, restic_version: str) -> dict:
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if "verified" not in key}
    ratios = {"full_s_ours_over_seeds": median["full_s"] / median["seed_full_s"],
              "incr_s_ours_over_seeds": median["incr_s"] / median["seed_incr_s"],
              "restore_s_ours_over_seeds": median["restore_s"] / median["seed_restore_s"],
              "full_bytes_ours_over_seeds": median["full_bytes"] / median["seed_full_bytes"],
              "incr_bytes_ours_over_seeds": median["incr_bytes"] / median["seed_incr_bytes"],
              "incr_over_full_bytes": median["incr_bytes"] / median["full_bytes"],
              "incr_over_full_bucket_bytes": median["incr_bucket_bytes"] / median["full_bucket_bytes"],
              "seed_incr_over_full_bytes": median["seed_incr_bytes"] / median["seed_full_bytes"]}
    targets = {"full backup at most 0.5x the seeds' time": ratios["full_s_ours_over_seeds"] <= 0.5,
               "incremental at most 5 % of the full's bytes (restic's bytes added)": ratios["incr_over_full_bytes"] <= 0.05,
               "incremental at most 5 % of the full's bytes (bucket growth)": ratios["incr_over_full_bucket_bytes"] <= 0.05,
               "restore no slower than the seeds'": ratios["restore_s_ours_over_seeds"] <= 1.0}
    ok, seeds_ok = all(run["verified"] for run in runs), all(run["seed_verified"] for run in runs)

    def mib(value: float) -> str:
        return f"{value / 2**20:.1f} MiB"

    rows = [("full backup time", f"{median['full_s']:.1f} s", f"{median['seed_full_s']:.1f} s",
             ratios["full_s_ours_over_seeds"]),
            ("full backup bytes", mib(median["full_bytes"]), mib(median["seed_full_bytes"]),
             ratios["full_bytes_ours_over_seeds"]),
            ("  (ours: bucket growth)", mib(median["full_bucket_bytes"]), "", None),
            ("incremental time", f"{median['incr_s']:.1f} s", f"{median['seed_incr_s']:.1f} s",
             ratios["incr_s_ours_over_seeds"]),
            ("incremental bytes", mib(median["incr_bytes"]), mib(median["seed_incr_bytes"]),
             ratios["incr_bytes_ours_over_seeds"]),
            ("  (ours: bucket growth)", mib(median["incr_bucket_bytes"]), "", None),
            ("incremental / full bytes", f"{ratios['incr_over_full_bytes']:.1%}",
             f"{ratios['seed_incr_over_full_bytes']:.1%}", None),
            ("  (ours: bucket growth)", f"{ratios['incr_over_full_bucket_bytes']:.1%}", "", None),
            ("restore time", f"{median['restore_s']:.1f} s", f"{median['seed_restore_s']:.1f} s",
             ratios["restore_s_ours_over_seeds"]),
            ("restore verified (all runs)", str(ok), str(seeds_ok), None)]
    print(f"\ndataset: {size['rows']} rows ({mib(size['database_bytes'])} database), {size['files']} files "
          f"({mib(size['files_bytes'])}), {size['repositories']} repositories; {restic_version}")
    print(f"medians of {len(runs)} runs:")
    print(f"  {'figure':30s} {'ours':>12s} {'seeds':>12s} {'ours/seeds':>10s}")
    for name, ours, seeds, ratio in rows:
        print(f"  {name:30s} {ours:>12s} {seeds:>12s} {'' if ratio is None else f'{ratio:.2f}x':>10s}")
    print("targets:")
    for name, passed in targets.items():
        print(f"  {'PASS' if passed else 'MISS'}  {name}")
    return {**{key: round(value, 3) if isinstance(value, float) else value for key, value in median.items()},
            "verified": ok, "seed_verified": seeds_ok, "runs": len(runs),
            "ratios": {key: round(value, 4) for key, value in ratios.items()},
            "targets": {name: "PASS" if passed else "MISS" for name, passed in targets.items()},
            "dataset": size, "restic_version": restic_version,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data_volume": "tmpfs", "each_run": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure; medians are reported (default 3)")
    runs = parser.parse_args().runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("bench/backup.py must run as root: PostgreSQL runs as the postgres user, the data volume is a tmpfs mount")
    with forge_host("gitea-stack-bench-", REGION, DOMAIN, tmpfs_mib=1200) as host:
        restic_version = run(host.tools["restic"], "version").stdout.strip()
        data_dir, work, pristine = host.data_dir, host.root / "work", host.root / "pristine"
        progress(f"PostgreSQL and moto in {host.root}; data volume: tmpfs at {data_dir}")
        forge = make_forge(host, log_restic=False)  # restic itself, as on the host
        progress("making the dataset: database, files and git repositories")
        size = {**dataset.create_forge(forge.psql, data_dir, host.tools["git"], work),
                "files_bytes": sum(path.stat().st_size for path in (data_dir / "gitea").rglob("*") if path.is_file()),
                "database_bytes": int(forge.sql("SELECT pg_database_size('gitea')", "postgres"))}
        progress(f"dataset: {size}")
        progress("keeping a pristine copy (pg_dump, cp -a)")
        save_pristine(forge, pristine, work)
        figures = [repetition(number, forge, pristine, work) for number in range(1, runs + 1)]
        results = report(figures, size, restic_version)
        results["total_s"] = round(time.monotonic() - STARTED, 1)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {RESULTS} (total {results['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
