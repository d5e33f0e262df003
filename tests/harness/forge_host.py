"""The host half of a forge for the backup and restore tests and bench/backup.py: a directory of
its own (not below pytest's root-only temporary directory: the postgres user must reach its
cluster), optionally with the data volume as a tmpfs mount there, a PostgreSQL cluster
(tests/harness/postgres.py) and moto's server with SES accepting the stack's mail and, when named,
the backup bucket. Everything is stopped by PID, unmounted and removed when the block ends.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.host_standins import MotoServer
from tests.harness.postgres import postgres_tools, psql_argv, run, start_postgres, stop_postgres
from tests.harness.tools import require_tool


@dataclass
class ForgeHost:
    root: Path
    data_dir: Path  # DATA_DIR: root/srv/gitea-stack
    tools: dict[str, str]  # restic, git, flock and PostgreSQL's
    sockets: Path
    port: int
    moto: MotoServer

    @property
    def psql(self) -> list[str]:
        return psql_argv(self.tools, self.sockets, self.port)


@contextmanager
def forge_host(prefix: str, region: str, domain: str, bucket: str | None = None,
               tmpfs_mib: int | None = None) -> Iterator[ForgeHost]:
    tools = {"restic": require_tool("restic", "restic"), "git": require_tool("git", "git"),
             "flock": require_tool("flock", "util-linux"), **postgres_tools()}
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    data_dir = root / "srv/gitea-stack"
    postgres = moto = None
    mounted = False
    try:
        if tmpfs_mib:
            data_dir.mkdir(parents=True)
            run("mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m,mode=0755", f"{prefix}data", str(data_dir))
            mounted = True
        postgres, sockets, port = start_postgres(root, tools)
        moto = MotoServer(root, region).start()
        moto.accept_mail_from(domain)
        if bucket:
            moto.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        yield ForgeHost(root, data_dir, tools, sockets, port, moto)
    finally:
        if moto:
            moto.stop()
        if postgres:
            stop_postgres(postgres)
        if mounted:
            subprocess.run(["umount", "--lazy", str(data_dir)], check=False)
        shutil.rmtree(root, ignore_errors=True)
