"""The rendered bundle checked by the tools made for each file: the compose-spec JSON schema,
Docker compose's own parser (v5, what the host runs), nginx -t (in test_nginx.py), shellcheck (in
test_shell_scripts.py), systemd-analyze on the units and timers, cloud-init's schema on the user data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitea_stack.bundle import PRODUCTION, HostLayout, write_bundle
from gitea_stack.rendering import render_user_data
from tests.harness.bundles import VARIANTS, render, variant
from tests.harness.testbed import compose_plugin
from tests.unit.test_day_one import CALENDARS_ACCEPTED
from tests.harness.tools import require_tool


@pytest.fixture(params=list(VARIANTS))
def rendered(request, tmp_path) -> Path:
    # The bundle directory is a render parameter; deploy.sh writes runtime/<service>.env on the host.
    write_bundle(render(variant(request.param), HostLayout(bundle_dir=str(tmp_path))), tmp_path)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "gitea.env").write_text("GITEA_STACK_SECRETS_DIGEST=0\n")
    (tmp_path / "runtime" / "diun.env").write_text("GITEA_STACK_SECRETS_DIGEST=0\n"
                                                   "DIUN_NOTIF_MAIL_HOST=email-smtp.eu-central-1.amazonaws.com\n")
    for service in ("prometheus", "alertmanager", "postgres-exporter", "grafana"):
        (tmp_path / "runtime" / f"{service}.env").write_text("GITEA_STACK_SECRETS_DIGEST=0\n")
    return tmp_path


def test_compose_file_matches_the_compose_spec_schema(rendered):
    checker = Path(sys.executable).parent / "check-jsonschema"
    if not checker.exists():
        pytest.fail("this test needs check-jsonschema (PyPI, in the test extras); run tests/run.sh")
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                             str(rendered / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_the_compose_file(rendered):
    docker_compose = compose_plugin()
    version = subprocess.run([docker_compose, "version", "--short"], capture_output=True, text=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 2, version
    result = subprocess.run([docker_compose, "--project-name", "gitea-stack", "--file",
                             str(rendered / "docker-compose.yml"), "--profile", "tools", "config", "--quiet"],
                            capture_output=True, text=True, cwd=rendered)
    assert result.returncode == 0, result.stderr


def test_bundle_scripts_pass_shellcheck(rendered):
    shellcheck = require_tool("shellcheck", "shellcheck")
    scripts = sorted((rendered / "scripts").glob("*.sh"))
    result = subprocess.run([shellcheck, "--severity=style", "--external-sources", *map(str, scripts)],
                            capture_output=True, text=True, cwd=rendered)
    assert result.returncode == 0, result.stdout


def systemd_root(rendered: Path, root: Path) -> Path:
    """A root directory where systemd-analyze finds the bundle's units as deploy.sh installs them,
    the distribution's own units, and stand-ins for what the units refer to on the host (Docker's
    unit, the bundle's scripts)."""
    require_tool("systemd-analyze", "systemd")
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    shutil.copytree(rendered / "systemd", root / "etc" / "systemd" / "system")
    (root / "usr" / "lib" / "systemd" / "system" / "docker.service").write_text(
        "[Unit]\nDescription=Docker Engine (stand-in)\n[Service]\nExecStart=/usr/bin/dockerd\n")
    (root / "usr" / "bin").mkdir(exist_ok=True)
    (root / "usr" / "bin" / "dockerd").write_text("#!/bin/sh\n")
    (root / "usr" / "bin" / "dockerd").chmod(0o755)
    shutil.copytree(rendered / "scripts", root / PRODUCTION.bundle_dir.lstrip("/") / "scripts")
    return root


def test_systemd_analyze_verify_accepts_every_unit_and_drop_in(tmp_path):
    rendered = tmp_path / "bundle"
    write_bundle(render(variant("example")), rendered)
    root = systemd_root(rendered, tmp_path / "root")
    units = sorted(path.name for path in (rendered / "systemd").iterdir() if path.is_file())
    drop_ins = sorted(path.name.removesuffix(".d") for path in (rendered / "systemd").iterdir() if path.is_dir())
    assert units and drop_ins == ["docker.service"]
    for unit in units + drop_ins:
        result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True)
        # Warnings (an unknown key, a relative path) leave the exit status at 0: any output is a finding.
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit


def test_systemd_analyze_verify_catches_a_broken_drop_in(tmp_path):
    rendered = tmp_path / "bundle"
    write_bundle(render(variant("example")), rendered)
    root = systemd_root(rendered, tmp_path / "root")
    drop_in = root / "etc" / "systemd" / "system" / "docker.service.d" / "10-gitea-stack.conf"
    drop_in.write_text(drop_in.read_text().replace("RequiresMountsFor=/", "RequiresMountsFor="))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "docker.service"],
                            capture_output=True, text=True)
    assert "RequiresMountsFor= path is not absolute" in result.stderr


def test_docker_requires_the_data_volume_to_be_mounted():
    drop_in = render(variant("example"))["systemd/docker.service.d/10-gitea-stack.conf"][0]
    assert "[Unit]\nRequiresMountsFor=/srv/gitea-stack\n" in drop_in


def test_every_oncalendar_is_a_calendar_systemd_understands():
    systemd_analyze = require_tool("systemd-analyze", "systemd")
    calendars = [line.split("=", 1)[1] for content, _ in render(variant("example")).values()
                 for line in content.splitlines() if line.startswith("OnCalendar=")]
    assert calendars
    for calendar in calendars:
        result = subprocess.run([systemd_analyze, "calendar", calendar], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert subprocess.run([systemd_analyze, "calendar", "twice a day"], capture_output=True).returncode != 0


@pytest.mark.parametrize("name", VARIANTS)
def test_cloud_init_accepts_the_user_data(name, tmp_path):
    cloud_init = require_tool("cloud-init", "cloud-init")
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(render_user_data(variant(name), "vol-0123456789abcdef0"))
    result = subprocess.run([cloud_init, "schema", "--config-file", str(user_data)], capture_output=True, text=True)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    user_data.write_text(user_data.read_text().replace("permissions:", "permisions:"))
    assert subprocess.run([cloud_init, "schema", "--config-file", str(user_data)], capture_output=True).returncode != 0


@pytest.mark.parametrize("value", CALENDARS_ACCEPTED)
def test_every_backup_schedule_the_settings_accept_systemd_accepts_too(value):
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "calendar", value], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
