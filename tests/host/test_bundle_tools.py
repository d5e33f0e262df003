"""The rendered bundle checked by the tools made for each file: the compose-spec JSON schema,
docker-compose's own parser, nginx -t (in test_nginx.py) and shellcheck (in test_shell_scripts.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gitea_stack.bundle import HostLayout, render_bundle, write_bundle
from tests.harness.bundles import VARIANTS, variant
from tests.harness.tools import require_tool


@pytest.fixture(params=list(VARIANTS))
def rendered(request, tmp_path) -> Path:
    # The bundle directory is a render parameter; deploy.sh writes runtime/diun-smtp.env on the host.
    write_bundle(render_bundle(variant(request.param), HostLayout(bundle_dir=str(tmp_path))), tmp_path)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "diun-smtp.env").write_text("DIUN_NOTIF_MAIL_HOST=email-smtp.eu-central-1.amazonaws.com\n")
    return tmp_path


def test_compose_file_matches_the_compose_spec_schema(rendered):
    checker = Path(sys.executable).parent / "check-jsonschema"
    if not checker.exists():
        pytest.fail("this test needs check-jsonschema (PyPI, in the test extras); run tests/run.sh")
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                             str(rendered / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_compose_file(rendered):
    docker_compose = require_tool("docker-compose", "docker-compose")
    result = subprocess.run([docker_compose, "--project-name", "gitea-stack", "--file",
                             str(rendered / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, cwd=rendered)
    assert result.returncode == 0, result.stderr


def test_bundle_scripts_pass_shellcheck(rendered):
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = sorted((rendered / "scripts").glob("*.sh"))
    result = subprocess.run([shellcheck, "--severity=style", "--external-sources", *map(str, scripts)],
                            capture_output=True, text=True, cwd=rendered)
    assert result.returncode == 0, result.stdout
