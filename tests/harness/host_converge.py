"""What deploy.sh needs to run on this machine as far as its checks: a bundle, Secrets Manager, shims.

deploy.sh reads its bundle directory (settings.env, stack-facts.env), fetches the stack's secrets with
boto3 and only then touches Docker. The host tests render a real bundle into temporary directories
(the bundle and data directories are layout parameters), serve Secrets Manager from moto on an
ephemeral loopback port, and put shims first on PATH: `sudo` runs its command as is (the tests run
as root already, and keep their environment), `docker` records every call and fails, so a test can
assert that a refused converge never reached the services.
"""

from __future__ import annotations

import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gitea_stack.bundle import HostLayout, render_bundle, write_bundle
from gitea_stack.provision import stack_facts
from gitea_stack.settings import parse_settings
from tests.harness.bundles import BASE, facts
from tests.harness.host_standins import MotoServer

REGION = "eu-central-1"
SECRET_VALUES = {"gitea-secret-key": "HostTierSecretKey0123456789abcdefABCDEF0123456789",
                 "postgres-password": "HostTierPostgresPassword0123456789"}
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SecretsManager:
    url: str
    names: dict[str, str]  # key -> secret name, as stack-facts.env lists them


@contextmanager
def secrets_manager() -> Iterator[SecretsManager]:
    """moto's server on loopback (the host tier's MotoServer) holding SECRET_VALUES."""
    with tempfile.TemporaryDirectory(prefix="gitea-stack-moto-") as workdir, MotoServer(Path(workdir), REGION) as moto:
        aws = SecretsManager(moto.url, {key: f"gitea-stack/host/{key}" for key in SECRET_VALUES})
        client = moto.client("secretsmanager")
        for key, name in aws.names.items():
            client.create_secret(Name=name, SecretString=SECRET_VALUES[key])
        yield aws


def write_host_bundle(bundle_dir: Path, data_dir: Path, aws: SecretsManager, **setting_changes: object) -> None:
    """The bundle `pulumi up` would copy (stack-facts.env included), for these directories."""
    settings = parse_settings({**BASE, "awsEndpointUrl": aws.url, **setting_changes}, "host")
    layout = HostLayout(bundle_dir=str(bundle_dir), data_dir=str(data_dir))
    bundle = render_bundle(settings, facts(settings).memory_mib, layout)
    bundle["stack-facts.env"] = (stack_facts(REGION, "gitea-stack-host-backups", aws.names), 0o644)
    write_bundle(bundle, bundle_dir)


def write_shims(directory: Path) -> Path:
    """`sudo` (runs its command) and `docker` (records its arguments, fails); returns the record."""
    directory.mkdir(parents=True, exist_ok=True)
    calls = directory / "docker-calls"
    shims = {"sudo": '#!/bin/sh\nexec "$@"\n',
             "docker": f'#!/bin/sh\necho "$*" >>{calls}\necho "docker is not for this test" >&2\nexit 1\n'}
    for name, content in shims.items():
        (directory / name).write_text(content)
        (directory / name).chmod(0o755)
    return calls


def host_environment(shims: Path, tmp_dir: Path, **extra: str) -> dict[str, str]:
    """What deploy.sh runs with: the shims first, then this virtualenv's python3 (boto3), then the
    system; fake AWS credentials (moto takes any) and no AWS config of the operator's."""
    return {"PATH": f"{shims}:{Path(sys.executable).parent}:{SYSTEM_PATH}", "TMPDIR": str(tmp_dir),
            "GITEA_STACK_LOCK": str(tmp_dir / "gitea-stack.lock"),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", **extra}


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path below root with its mode and, for files, its content: equal trees, nothing changed."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_mode, path.read_bytes() if stat.S_ISREG(info.st_mode) else None)
    return found
