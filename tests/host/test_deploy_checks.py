"""The converge refuses what would harm the data before anything changes: `converge_command` runs
`deploy.sh --check` on the uploaded bundle before that replaces the bundle in use.

The program's own converge command runs against temporary bundle, upload and data directories, with
Secrets Manager from moto on loopback and shims for `sudo` and `docker` (tests/harness/host_converge.py).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from gitea_stack.provision import converge_command
from gitea_stack.versions import DEFAULT_IMAGES
from tests.harness.host_converge import (
    SECRET_VALUES,
    SecretsManager,
    host_environment,
    secrets_manager,
    tree,
    write_host_bundle,
    write_shims,
)
from tests.harness.tools import require_root, require_tool

POSTGRES_16 = "docker.io/library/postgres:16.10-bookworm"
POSTGRES_17 = "docker.io/library/postgres:17.6-bookworm"
POSTGRES_18 = DEFAULT_IMAGES["postgres"]


@pytest.fixture(scope="module")
def aws():
    with secrets_manager() as served:
        yield served


class Host:
    """A host's directories: the bundle in use, the upload `pulumi up` copied, the data volume."""

    def __init__(self, root: Path, aws: SecretsManager):
        self.root = root
        self.live, self.upload, self.data, self.tmp = (root / name for name in ("live", "upload", "data", "tmp"))
        for directory in (self.live, self.upload, self.data, self.tmp):
            directory.mkdir()
        self.aws = aws
        self.docker_calls = write_shims(root / "shims")
        self.environment = host_environment(root / "shims", self.tmp)

    def deployed(self, **settings: object) -> None:
        write_host_bundle(self.live, self.data, self.aws, **settings)

    def uploaded(self, **settings: object) -> None:
        write_host_bundle(self.upload, self.data, self.aws, **settings)

    def cluster(self, relative: str, version: str) -> None:
        """A PostgreSQL cluster as the image leaves it: PGDATA with its PG_VERSION."""
        pgdata = self.data / "postgres" / relative
        pgdata.mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text(f"{version}\n")

    def data_encrypted_with(self, secret_key: str) -> None:
        state = self.data / "state"
        state.mkdir(exist_ok=True)
        (state / "gitea-secret-key.sha256").write_text(hashlib.sha256(secret_key.encode()).hexdigest() + "\n")

    def converge(self) -> subprocess.CompletedProcess:
        """`pulumi up`'s converge step, as it runs over SSH."""
        return subprocess.run(["bash", "-c", converge_command(str(self.live), str(self.upload))],
                              check=False, capture_output=True, text=True, timeout=120, env=self.environment)

    def check_upload(self) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.upload / "scripts" / "deploy.sh"), "--check"],
                              check=False, capture_output=True, text=True, timeout=120, env=self.environment)

    def staged_secrets_left(self) -> list[Path]:
        return [*self.tmp.glob(".staging.*"), *self.live.glob("secrets/.staging.*")]


@pytest.fixture
def host(tmp_path, aws):
    require_root("deploy.sh gives files to the users the images run as")
    for command, package in (("bash", "bash"), ("flock", "util-linux"), ("sha256sum", "coreutils")):
        require_tool(command, package)
    return Host(tmp_path, aws)


UPGRADE_NEEDS_A_RUNNING_POSTGRES = "but no PostgreSQL runs to dump the data from; nothing was changed"
OLDER_MAJOR = "an older major, which cannot read it; nothing was changed"


@pytest.mark.parametrize("pgdata, data_major, image, image_major, refusal", [
    # A newer major is upgraded by update.sh from the running cluster; with none running, refused.
    ("data", "16", POSTGRES_17, 17, UPGRADE_NEEDS_A_RUNNING_POSTGRES),   # the layout of images up to 17
    ("18/docker", "18", "docker.io/library/postgres:19.1-bookworm", 19, UPGRADE_NEEDS_A_RUNNING_POSTGRES),
    ("18/docker", "18", POSTGRES_17, 17, OLDER_MAJOR),                    # a downgrade, never
])
def test_an_image_of_another_postgres_major_is_refused_and_nothing_changes(host, pgdata, data_major, image,
                                                                           image_major, refusal):
    host.deployed(images={"postgres": POSTGRES_18 if data_major == "18" else POSTGRES_16})
    host.cluster(pgdata, data_major)
    host.uploaded(images={"postgres": image})
    live_before, data_before = tree(host.live), tree(host.data)

    result = host.converge()

    assert result.returncode == 1, result.stderr
    assert (f"the data volume holds PostgreSQL {data_major} data") in result.stderr
    assert f"the configured image {image} is PostgreSQL {image_major}" in result.stderr
    assert refusal in result.stderr
    assert f"back to {'the' if refusal != OLDER_MAJOR else 'a'} {data_major}.x tag" in result.stderr
    # The refused bundle never became the live one; the data and the services were not touched:
    # docker was only asked which containers run.
    assert tree(host.live) == live_before
    assert f"image: {image}" not in (host.live / "docker-compose.yml").read_text()
    assert tree(host.data) == data_before
    calls = host.docker_calls.read_text().splitlines() if host.docker_calls.exists() else []
    assert all(call.startswith("ps ") for call in calls), calls


def test_a_newer_major_with_its_postgres_running_passes_the_check_as_an_upgrade(host):
    host.deployed(images={"postgres": POSTGRES_16})
    host.cluster("data", "16")
    host.uploaded(images={"postgres": POSTGRES_17})
    # docker answers `ps` with the running postgres container, and nothing else.
    (host.root / "shims" / "docker").write_text(
        f'#!/bin/sh\necho "$*" >>{host.docker_calls}\ncase $1 in ps) echo 0123456789ab ;; *) exit 1 ;; esac\n')
    result = host.check_upload()
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL 16 data: it is upgraded to 17 by a dump and restore" in result.stderr
    assert all(call.startswith("ps ") for call in host.docker_calls.read_text().splitlines())


def test_an_image_whose_tag_names_no_major_is_refused_once_there_is_data(host):
    # The settings refuse such an image; the host refuses it too, for a bundle edited by hand.
    digest_only = "docker.io/library/postgres@sha256:" + "ab" * 32
    host.deployed()
    host.cluster("18/docker", "18")
    host.uploaded()
    settings_env = host.upload / "settings.env"
    lines = [line for line in settings_env.read_text().splitlines() if not line.startswith("POSTGRES_")]
    settings_env.write_text("\n".join([*lines, f"POSTGRES_IMAGE={digest_only}", "POSTGRES_MAJOR="]) + "\n")
    live_before = tree(host.live)
    result = host.converge()
    assert result.returncode == 1
    assert (f"the configured PostgreSQL image {digest_only} names no major version in its tag, and the data "
            "volume holds PostgreSQL 18 data; nothing was changed") in result.stderr
    assert tree(host.live) == live_before


@pytest.mark.parametrize("pgdata, data_major, image", [
    ("18/docker", "18", POSTGRES_18),
    ("data", "17", POSTGRES_17),
    (None, None, POSTGRES_17),  # a new forge: the image creates its cluster
])
def test_the_same_major_or_a_new_forge_passes_the_check_and_changes_nothing(host, pgdata, data_major, image):
    host.deployed()
    if pgdata:
        host.cluster(pgdata, data_major)
    host.data_encrypted_with(SECRET_VALUES["gitea-secret-key"])
    host.uploaded(images={"postgres": image})
    upload_before, data_before, live_before = tree(host.upload), tree(host.data), tree(host.live)

    result = host.check_upload()

    assert result.returncode == 0, result.stderr
    assert f"checked {host.upload}: nothing refuses this converge" in result.stderr
    assert (tree(host.upload), tree(host.data), tree(host.live)) == (upload_before, data_before, live_before)
    assert host.staged_secrets_left() == []  # the fetched secrets went away with the check
    assert not host.docker_calls.exists()


def test_a_changed_secret_key_is_refused_before_the_bundle_is_replaced(host):
    host.deployed()
    host.cluster("18/docker", "18")
    host.data_encrypted_with("the key the data was written with")
    host.uploaded(adminEmail="changed@example.com")  # any change: a new bundle
    live_before = tree(host.live)

    result = host.converge()

    assert result.returncode == 1
    assert "is not the key this forge's data was encrypted with" in result.stderr
    assert "AWSPREVIOUS" in result.stderr
    assert tree(host.live) == live_before
    assert host.staged_secrets_left() == []
    assert not host.docker_calls.exists()

