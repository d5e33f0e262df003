"""Promises the README makes, each checked where a breakage would first show.

- the host's own sshd: on adminSshPort, no passwords, no keyboard-interactive, no root (user data);
- every port key refuses what it must (range, 80/443, equal SSH ports, egress duplicates ...);
- every default image is pinned to a full release, never latest or a floating major/minor tag;
- the bundle the copy step sends is byte-identical whatever process, time zone, locale or hash seed
  renders it, and `python -m gitea_stack render` writes exactly what the copy step carries;
- the Docker install step re-runs when its script or the Docker package pins change.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import shutil
import time
from pathlib import Path

import pytest
import yaml

import gitea_stack.provision
from gitea_stack import rendering
from gitea_stack.settings import SettingsError, parse_image_reference, parse_settings
from gitea_stack.versions import DEFAULT_IMAGES, DIUN_INCLUDE_TAGS, DOCKER_PACKAGES
from tests.harness.bundles import BASE, variant
from tests.harness.pulumi_mocks import EXAMPLE_STACK_FILE, PROJECT_DIR, run_program

# --- sshd hardening, from the user data ------------------------------------------------------------

# Drop-ins Ubuntu's cloud image and cloud-init may write next to ours; sshd takes the first value it
# reads for a keyword, and reads the drop-ins in name order, so ours must come first.
OTHER_DROP_INS = ("50-cloud-init.conf", "60-cloudimg-settings.conf")


def sshd_drop_in(user_data: str) -> tuple[str, str]:
    """(path, content) of the one file the cloud-config writes below /etc/ssh."""
    config = yaml.safe_load(user_data)
    written = [f for f in config["write_files"] if f["path"].startswith("/etc/ssh/")]
    assert len(written) == 1, [f["path"] for f in written]
    return written[0]["path"], written[0]["content"]


def sshd_settings(content: str) -> dict[str, list[str]]:
    """Keyword (lower case, as sshd compares them) -> every value given, in order."""
    settings: dict[str, list[str]] = {}
    for line in content.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            settings.setdefault(words[0].lower(), []).append(" ".join(words[1:]))
    return settings


def assert_hardened(user_data: str, admin_port: int, git_port: int) -> None:
    path, content = sshd_drop_in(user_data)
    directory, name = path.rsplit("/", 1)
    assert directory == "/etc/ssh/sshd_config.d" and name.endswith(".conf")
    assert all(name < other for other in OTHER_DROP_INS), f"{name} must sort before {OTHER_DROP_INS}"
    settings = sshd_settings(content)
    assert settings["port"] == [str(admin_port)] and str(git_port) not in settings["port"]
    for keyword in ("passwordauthentication", "kbdinteractiveauthentication", "permitrootlogin"):
        assert settings[keyword][0] == "no", (keyword, settings[keyword])
    assert settings.get("challengeresponseauthentication", ["no"])[0] == "no"


def test_the_programs_user_data_hardens_sshd_on_the_admin_port(example_run):
    user_data = example_run.one("aws:ec2/instance:Instance").inputs["userData"]
    assert_hardened(user_data, admin_port=2222, git_port=22)


def test_sshd_follows_a_custom_admin_port():
    assert_hardened(rendering.render_user_data(variant("custom-ports-and-images"), "vol-0abc"),
                    admin_port=40022, git_port=2200)


# --- port keys -------------------------------------------------------------------------------------

def problems(**changes) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings({**BASE, **changes}, "prod")
    return caught.value.problems


BAD_PORTS = {
    "admin 0": ({"adminSshPort": 0}, "adminSshPort", "from 1 to 65535"),
    "admin negative": ({"adminSshPort": "-22"}, "adminSshPort", "from 1 to 65535"),
    "admin 65536": ({"adminSshPort": 65536}, "adminSshPort", "from 1 to 65535"),
    "admin fraction": ({"adminSshPort": "22.5"}, "adminSshPort", "from 1 to 65535"),
    "admin float": ({"adminSshPort": 2222.0}, "adminSshPort", "from 1 to 65535"),
    "admin boolean": ({"adminSshPort": True}, "adminSshPort", "from 1 to 65535"),
    "admin word": ({"adminSshPort": "ssh"}, "adminSshPort", "from 1 to 65535"),
    "admin 80": ({"adminSshPort": 80}, "adminSshPort", "other than 80 and 443"),
    "admin 443": ({"adminSshPort": "443"}, "adminSshPort", "other than 80 and 443"),
    "git 0": ({"gitSshPort": 0}, "gitSshPort", "from 1 to 65535"),
    "git 65536": ({"gitSshPort": "65536"}, "gitSshPort", "from 1 to 65535"),
    "git list": ({"gitSshPort": "[22]"}, "gitSshPort", "from 1 to 65535"),
    "git 80": ({"gitSshPort": 80}, "gitSshPort", "other than 80 and 443"),
    "git 443": ({"gitSshPort": 443}, "gitSshPort", "other than 80 and 443"),
    "admin on the default git port": ({"adminSshPort": 22}, "gitSshPort", "different from gitea-stack:adminSshPort"),
    "git on the default admin port": ({"gitSshPort": "2222"}, "gitSshPort", "different from gitea-stack:adminSshPort"),
    "both equal, as strings": ({"adminSshPort": "2200", "gitSshPort": "2200"}, "gitSshPort", "(both are 2200)"),
    "egress 0": ({"extraEgressPorts": [0]}, "extraEgressPorts", "0 is not a port"),
    "egress negative": ({"extraEgressPorts": [-1]}, "extraEgressPorts", "-1 is not a port"),
    "egress 65536": ({"extraEgressPorts": "[65536]"}, "extraEgressPorts", "65536 is not a port"),
    "egress word": ({"extraEgressPorts": ["ssh"]}, "extraEgressPorts", "'ssh' is not a port"),
    "egress boolean": ({"extraEgressPorts": [True]}, "extraEgressPorts", "True is not a port"),
    "egress 80": ({"extraEgressPorts": [80]}, "extraEgressPorts", "80 is always open"),
    "egress 443": ({"extraEgressPorts": [9418, 443]}, "extraEgressPorts", "443 is always open"),
    "egress 587": ({"extraEgressPorts": [587]}, "extraEgressPorts", "587 is always open"),
    "egress twice": ({"extraEgressPorts": [22, 9418, 22]}, "extraEgressPorts", "22 is listed twice"),
    "egress 41 ports": ({"extraEgressPorts": list(range(2000, 2041))}, "extraEgressPorts", "up to 40"),
    "egress not a list": ({"extraEgressPorts": "22"}, "extraEgressPorts", "a list of up to 40 TCP ports"),
    "egress a map": ({"extraEgressPorts": {"ssh": 22}}, "extraEgressPorts", "a list of up to 40 TCP ports"),
    "egress not JSON": ({"extraEgressPorts": "[22,"}, "extraEgressPorts", "a list of up to 40 TCP ports"),
}


@pytest.mark.parametrize("changes, key, words", BAD_PORTS.values(), ids=BAD_PORTS.keys())
def test_every_bad_port_is_refused_naming_its_key(changes, key, words):
    found = problems(**changes)
    assert len(found) == 1, found
    assert found[0].startswith(f"gitea-stack:{key}: ") and words in found[0], found[0]


@pytest.mark.parametrize("changes, expected", [
    ({"adminSshPort": 1, "gitSshPort": 65535}, (1, 65535, ())),
    ({"adminSshPort": "65535", "gitSshPort": "2200"}, (65535, 2200, ())),
    ({"extraEgressPorts": [65535, 1, 22]}, (2222, 22, (1, 22, 65535))),
    ({"extraEgressPorts": list(range(2000, 2040))}, (2222, 22, tuple(range(2000, 2040)))),
], ids=["lowest and highest", "from strings", "egress bounds", "egress 40 ports"])
def test_ports_at_the_bounds_are_accepted(changes, expected):
    settings = parse_settings({**BASE, **changes}, "prod")
    assert (settings.admin_ssh_port, settings.git_ssh_port, settings.extra_egress_ports) == expected


# --- default images --------------------------------------------------------------------------------

# A full release: major.minor.patch; PostgreSQL (since 10) numbers its releases major.minor.
FULL_RELEASE = re.compile(r"^v?(?P<version>\d+\.\d+\.\d+)(-[a-z0-9.]+)?$")
FULL_POSTGRES_RELEASE = re.compile(r"^(?P<version>\d+\.\d+)(-[a-z0-9.]+)?$")


@pytest.mark.parametrize("service", sorted(DEFAULT_IMAGES))
def test_every_default_image_is_pinned_to_a_full_release(service):
    image = DEFAULT_IMAGES[service]
    assert parse_image_reference(image) == image
    name = image.partition("@")[0]
    assert "/" in name and ":" in name.rsplit("/", 1)[1], f"{image}: no tag"
    tag = name.rsplit(":", 1)[1]
    rule = FULL_POSTGRES_RELEASE if service == "postgres" else FULL_RELEASE
    assert rule.match(tag), f"{image}: {tag!r} is not a full release (latest and x or x.y tags move)"
    assert "latest" not in tag
    # Diun watches the same line of releases the pin belongs to.
    assert re.search(DIUN_INCLUDE_TAGS[service], tag), (DIUN_INCLUDE_TAGS[service], tag)


def test_every_service_has_a_default_image():
    assert set(DEFAULT_IMAGES) == {"gitea", "postgres", "nginx", "certbot", "diun", "docker-socket-proxy",
                                   "prometheus", "alertmanager", "node-exporter", "postgres-exporter",
                                   "blackbox-exporter", "cadvisor", "grafana", "loki", "alloy"}


# --- the bundle: byte-identical wherever it is rendered, and the same as `render` writes ------------

def copy_payload(run) -> bytes:
    return base64.b64decode(run.named("provision-copy-bundle").inputs["stdin"])


def tar_members(tarball: bytes) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tarball))) as archive:
        return {m.name: (archive.extractfile(m).read(), m.mode) for m in archive.getmembers() if m.isfile()}


# Renders the example stack's upload in a fresh process: what the copy step sends for these facts.
RENDER_UPLOAD = """\
import sys
from gitea_stack.bundle import render_bundle
from gitea_stack.cli import read_stack
from gitea_stack.provision import upload_payload
_, settings = read_stack(sys.argv[1], "prod")
sys.stdout.write(upload_payload(render_bundle(settings, 4096), sys.stdin.read()))
"""


@pytest.fixture(scope="module")
def prod_stack_dir(tmp_path_factory) -> Path:
    """A project directory holding the example stack as stack `prod`, the stack the mocked runs use."""
    directory = tmp_path_factory.mktemp("project")
    shutil.copyfile(EXAMPLE_STACK_FILE, directory / "Pulumi.prod.yaml")
    return directory


def render_upload_elsewhere(project_dir: Path, facts: str, **environment: str) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("SOURCE_DATE_EPOCH", "TZ", "LC_ALL")}
    result = subprocess.run([sys.executable, "-c", RENDER_UPLOAD, str(project_dir)], input=facts, check=False,
                            capture_output=True, text=True, cwd="/", env={**env, **environment}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_upload_is_byte_identical_across_processes_time_zones_and_times(example_run, prod_stack_dir):
    sent = example_run.named("provision-copy-bundle").inputs["stdin"]
    facts = tar_members(copy_payload(example_run))["stack-facts.env"][0].decode()
    first = render_upload_elsewhere(prod_stack_dir, facts, TZ="UTC", LC_ALL="C", PYTHONHASHSEED="0")
    started = int(time.time())
    while int(time.time()) == started:  # a second apart at least: no clock may leak into the bytes
        time.sleep(0.05)
    second = render_upload_elsewhere(prod_stack_dir, facts, TZ="Pacific/Kiritimati", LC_ALL="C.UTF-8", PYTHONHASHSEED="4242")
    assert first == second == sent


def test_cli_render_writes_exactly_what_the_copy_step_carries(example_run, tmp_path, prod_stack_dir):
    out = tmp_path / "rendered"
    result = subprocess.run([sys.executable, "-m", "gitea_stack", "render", "--stack", "prod", "--out", str(out),
                             "--project-dir", str(prod_stack_dir),
                             "--instance-memory-mib", "4096"], check=False, capture_output=True, text=True, cwd=PROJECT_DIR,
                            env={**os.environ, "TZ": "America/St_Johns"}, timeout=60)
    assert result.returncode == 0, result.stderr
    carried = tar_members(copy_payload(example_run))
    # stack-facts.env comes from the stack's resources; `render` says so and leaves it out.
    assert carried.pop("stack-facts.env")
    written = {str(path.relative_to(out)): (path.read_bytes(), path.stat().st_mode & 0o7777)
               for path in sorted(Path(out).rglob("*")) if path.is_file()}
    assert len(written) >= 10 and written == carried


# --- the Docker install step re-runs when what it installs changes -------------------------------------

def install_step(run):
    return run.named("provision-install-docker").inputs


def test_new_docker_package_pins_rerun_the_install(example_config, example_run, monkeypatch):
    package = "docker-ce"
    newer = {**DOCKER_PACKAGES, package: "5:29.9.0-1~ubuntu.24.04~noble"}
    monkeypatch.setattr(gitea_stack.provision, "DOCKER_PACKAGES", newer)
    changed = install_step(run_program(example_config))
    assert f"{package}={newer[package]}" in changed["create"]  # the new pin is what runs
    assert changed["triggers"] != install_step(example_run)["triggers"]


def test_a_changed_install_script_reruns_the_install(example_config, example_run, monkeypatch):
    original = gitea_stack.provision.read_script
    monkeypatch.setattr(gitea_stack.provision, "read_script",
                        lambda name: original(name) + ("# changed\n" if name == "install-host.sh" else ""))
    changed = install_step(run_program(example_config))
    assert changed["stdin"].endswith("# changed\n")  # the new script is what runs
    assert changed["triggers"] != install_step(example_run)["triggers"]
