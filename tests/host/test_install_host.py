"""scripts/install-host.sh with a real apt-get, against a local repository, with the dpkg lock really held.

Each run happens in a private mount namespace (`unshare --mount`, as in test_mount_data_volume.py)
where /var/lib/dpkg, /var/lib/apt, /var/cache/apt, /var/log and /etc/apt are scratch directories
bound over the real ones, so the script runs unchanged (fed to `bash -s` on stdin, as `pulumi up`
does over SSH) and every apt-get, apt-mark and dpkg it starts works on the scratch copies only:

* /var/lib/dpkg is this machine's dpkg database (status, available, ...) so dpkg knows what is
  installed, minus what could reach the real filesystem: maintainer scripts are left out and every
  package's file list is empty, so even a removal would delete and run nothing. Relations to the
  fake packages are dropped from the copied status (this machine may carry Debian's docker.io,
  which conflicts with docker-ce; an Ubuntu host does not), as are any installed fake package names.
* /etc/apt holds only sources: the local repository's `ubuntu/` suite (python3-boto3 and restic, like the
  Ubuntu archive) and a non-empty sources.list.d/docker.list for its `docker/` suite, so the script
  takes its "repository already configured" branch and nothing goes to the network.
* The repository is built once per module with `dpkg-deb --build` and `dpkg-scanpackages` from
  packages holding only a DEBIAN/control: the pinned Docker packages, a later docker-compose-plugin
  (pins must win over candidates), python3-boto3, restic, and docker-ce-rootless-extras, which docker-ce
  Recommends, as Docker's real package does. Installing them writes no files.
* `systemctl` is a shim first on PATH that records its arguments (no systemd here).

The dpkg frontend lock is held the way dpkg and apt take it, an fcntl write lock (F_SETLK) on
/var/lib/dpkg/lock-frontend, by a separate process started inside the namespace, so the lock is on
the scratch copy the script sees, never on this machine's. The holder lets go only once the script's
output shows what the test waits for (apt's "Waiting for cache lock", a retry), or never: so the
waiting is certain on a slow machine and costs about one of apt's one-second polls on a fast one.
The real dpkg database, /etc/apt and the installed packages are compared before and after every test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitea_stack.provision import install_command
from gitea_stack.rendering import SCRIPTS_DIR
from gitea_stack.versions import DOCKER_PACKAGES
from tests.harness.tools import require_root, require_tool

SCRIPT = SCRIPTS_DIR / "install-host.sh"
PINS = install_command().split(" -- ", 1)[1].split()  # exactly what `pulumi up` passes
PINNED = dict(pin.split("=", 1) for pin in PINS)
RECOMMENDED = "docker-ce-rootless-extras"
BOTO3_VERSION = "1.34.46+dfsg-1"
RESTIC_VERSION = "0.16.4-1"
UBUNTU_PACKAGES = " python3-boto3 restic"  # installed unpinned, after the pins
NEWER_COMPOSE = DOCKER_PACKAGES["docker-compose-plugin"] + "+1"  # a later release than the pin
FAKE_PACKAGES = [*PINNED, RECOMMENDED, "python3-boto3", "restic"]
FRONTEND_LOCK = "/var/lib/dpkg/lock-frontend"
LISTS_LOCK = "/var/lib/apt/lists/lock"  # what apt-get update takes (and apt-daily holds on a fresh host)
APT_WAITING = "Waiting for cache lock"  # what apt-get prints while DPkg::Lock::Timeout runs
NEVER = "-"  # the holder keeps the lock until the script has finished

# Runs inside `unshare --mount`: private apt and dpkg state, the lock holder, then the script as
# `pulumi up` runs it (`bash -s -- PINS...` with the script on stdin), then what dpkg now knows.
NAMESPACE_RUNNER = r"""
set -euo pipefail
root=$1 report=$2 lock=$3 release_after=$4 python=$5 holder=$6 script=$7
shift 7
mount --make-rprivate /
for dir in var/lib/dpkg var/lib/apt var/cache/apt var/log etc/apt; do
  mount --bind "$root/$dir" "/$dir"
done
holder_pid=''
if [ "$lock" != none ]; then
  "$python" -c "$holder" "$lock" "$release_after" "$report" &
  holder_pid=$!
  for _ in $(seq 200); do
    if [ -e "$report/locked.json" ] || ! kill -0 "$holder_pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  [ -e "$report/locked.json" ] || { echo "runner: the lock holder could not take $lock" >&2; exit 99; }
fi
date +%s.%N >"$report/started"
status=0
cat "$script" | bash -s -- "$@" >"$report/stdout" 2>"$report/stderr" || status=$?
date +%s.%N >"$report/finished"
if [ -n "$holder_pid" ]; then
  kill "$holder_pid" 2>/dev/null || true
  wait "$holder_pid" 2>/dev/null || true
fi
PATH=/usr/sbin:/usr/bin:/sbin:/bin  # the real tools again, not the test's shims
dpkg-query -W -f='${Package} ${Version} ${Status}\n' >"$report/dpkg-query"
apt-mark showhold >"$report/holds"
exit "$status"
"""

# The lock holder, a separate process in the namespace: takes the lock as dpkg and apt do
# (fcntl.lockf is fcntl(F_SETLK) with a whole-file F_WRLCK), holds it until the script's output
# shows `release_after` (at most 60s), then releases it; with "-", until it is killed.
LOCK_HOLDER = r"""
import fcntl, json, os, sys, time
path, release_after, report = sys.argv[1], sys.argv[2], sys.argv[3]

def publish(name, data):
    with open(f"{report}/{name}.tmp", "w") as out:
        json.dump(data, out)
    os.rename(f"{report}/{name}.tmp", f"{report}/{name}")

fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
info = os.fstat(fd)
publish("locked.json", {"pid": os.getpid(), "device": info.st_dev, "inode": info.st_ino, "at": time.time()})


def seen():
    for name in ("stdout", "stderr"):
        try:
            with open(f"{report}/{name}") as output:
                if release_after in output.read():
                    return True
        except FileNotFoundError:
            pass
    return False


deadline = time.monotonic() + (10**6 if release_after == "-" else 60)
while time.monotonic() < deadline and (release_after == "-" or not seen()):
    time.sleep(0.02)
fcntl.lockf(fd, fcntl.LOCK_UN)
publish("released.json", {"at": time.time()})
"""

SYSTEMCTL_SHIM = """#!/bin/sh
# No systemd here: record the call, succeed.
echo "$*" >>"$INSTALL_HOST_TEST_REPORT/systemctl.log"
"""

REFUSING_SHIM = """#!/bin/sh
# Everything is installed: the script must not get here.
echo "refusing {name} $*" >&2
echo "{name} $*" >>"$INSTALL_HOST_TEST_REPORT/refused.log"
exit 100
"""


@pytest.fixture(scope="module")
def tools():
    require_root("it bind-mounts over the package database in a private mount namespace")
    return {name: require_tool(name, package) for name, package in (
        ("unshare", "util-linux"), ("mount", "mount"), ("dpkg-deb", "dpkg"), ("dpkg-query", "dpkg"),
        ("dpkg-scanpackages", "dpkg-dev"), ("apt-get", "apt"), ("apt-mark", "apt"))}


def fake_package(build: Path, suite: Path, name: str, version: str, *relations: str) -> None:
    """A package with a DEBIAN/control and no files: installing it writes nothing outside dpkg's database."""
    tree = build / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    control = [f"Package: {name}", f"Version: {version}", "Architecture: all",
               "Maintainer: gitea-stack tests <tests@example.invalid>", *relations,
               f"Description: stand-in for {name} (gitea-stack install-host test)"]
    (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(suite)], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def repository(tools, tmp_path_factory) -> Path:
    """A local apt repository: suite `docker/` (Docker's repository) and suite `ubuntu/` (the archive)."""
    assert subprocess.run(["dpkg", "--compare-versions", NEWER_COMPOSE, "gt",
                           DOCKER_PACKAGES["docker-compose-plugin"]]).returncode == 0
    root = tmp_path_factory.mktemp("apt-repository")
    root.chmod(0o755)  # apt's _apt user reads file: repositories
    build = tmp_path_factory.mktemp("apt-packages")
    docker, ubuntu = root / "docker", root / "ubuntu"
    docker.mkdir()
    ubuntu.mkdir()
    ce = DOCKER_PACKAGES["docker-ce"]
    fake_package(build, docker, "docker-ce", ce, "Depends: containerd.io, docker-ce-cli",
                 f"Recommends: {RECOMMENDED}")
    for name in ("docker-ce-cli", "containerd.io", "docker-compose-plugin"):
        fake_package(build, docker, name, DOCKER_PACKAGES[name])
    fake_package(build, docker, "docker-compose-plugin", NEWER_COMPOSE)
    fake_package(build, docker, RECOMMENDED, ce)
    fake_package(build, ubuntu, "python3-boto3", BOTO3_VERSION)
    fake_package(build, ubuntu, "restic", RESTIC_VERSION)
    for suite in (docker, ubuntu):
        # A flat repository's Filename fields are relative to the repository's URI, not the suite's.
        index = subprocess.run([tools["dpkg-scanpackages"], "--multiversion", suite.name, "/dev/null"], cwd=root,
                               capture_output=True, text=True, check=True).stdout
        (suite / "Packages").write_text(index)
    return root


def without_fake_packages(status: str) -> str:
    """The status file with no fake package installed and no relation to one (e.g. docker.io's Conflicts)."""
    def keep(alternative: str) -> bool:
        return re.split(r"[\s(:]", alternative.strip(), maxsplit=1)[0] not in FAKE_PACKAGES

    stanzas = []
    for stanza in status.strip("\n").split("\n\n"):
        if re.search(rf"^Package: ({'|'.join(map(re.escape, FAKE_PACKAGES))})$", stanza, re.MULTILINE):
            continue
        lines = []
        for line in stanza.split("\n"):
            field = re.match(r"(Conflicts|Breaks|Replaces): (.*)", line)
            if field:
                kept = [alternative.strip() for alternative in field[2].split(",") if keep(alternative)]
                if not kept:
                    continue
                line = f"{field[1]}: {', '.join(kept)}"
            lines.append(line)
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + "\n"


def copy_dpkg_database(source: Path, target: Path) -> None:
    """source's dpkg database without maintainer scripts, every package's file list empty.

    The file lists are hard links to one empty file next to `target` (new inodes are slow to make on
    a busy disk; dpkg never writes a file list in place, it replaces or removes it).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    empty_list = target.parent / "empty.list"
    empty_list.touch()
    shutil.copytree(source, target, symlinks=True,
                    ignore=lambda directory, names: ["info"] if directory == str(source) else [])
    (target / "info").mkdir()
    shutil.copyfile(source / "info" / "format", target / "info" / "format")
    for name in os.listdir(source / "info"):
        if name.endswith(".list"):
            os.link(empty_list, target / "info" / name)


@pytest.fixture(scope="module")
def dpkg_database(tools, tmp_path_factory) -> Path:
    """This machine's dpkg database, unable to touch this machine's files (see the module docstring)."""
    real = Path("/var/lib/dpkg")
    copy = tmp_path_factory.mktemp("dpkg") / "dpkg"
    copy_dpkg_database(real, copy)
    assert os.stat(copy / "info" / "format").st_ino != os.stat(real / "info" / "format").st_ino
    (copy / "status").write_text(without_fake_packages((real / "status").read_text()))
    for update in (copy / "updates").iterdir():
        update.unlink()
    return copy


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def machine_state() -> dict:
    packages = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version} ${Status}\\n"], capture_output=True,
                              text=True, check=True).stdout
    etc_apt = {str(path): sha256(path) for path in sorted(Path("/etc/apt").rglob("*")) if path.is_file()}
    return {"packages": packages, "status": sha256(Path("/var/lib/dpkg/status")),
            "extended_states": sha256(Path("/var/lib/apt/extended_states")), "etc/apt": etc_apt,
            "dpkg/info": sorted(os.listdir("/var/lib/dpkg/info"))}


@pytest.fixture(autouse=True)
def machine_untouched():
    before = machine_state()
    yield
    after = machine_state()
    changed = sorted(key for key in before if after[key] != before[key])
    assert not changed, f"this machine's package state changed during the test: {changed}"


@dataclass
class Run:
    returncode: int
    runner_output: str  # the namespace runner's own messages, if any
    report: Path

    @property
    def stdout(self) -> str:
        return (self.report / "stdout").read_text() if (self.report / "stdout").exists() else ""

    @property
    def stderr(self) -> str:
        return (self.report / "stderr").read_text() if (self.report / "stderr").exists() else ""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr + self.runner_output

    def packages(self) -> dict[str, tuple[str, str]]:
        """What the private dpkg database holds now: name -> (version, status)."""
        rows = (line.split(" ", 2) for line in (self.report / "dpkg-query").read_text().splitlines())
        return {name: (version, status) for name, version, status in rows}

    def installed(self) -> dict[str, str]:
        return {name: version for name, (version, status) in self.packages().items()
                if status.endswith(" ok installed")}

    def holds(self) -> list[str]:
        return (self.report / "holds").read_text().split()

    def calls(self, log: str) -> list[str]:
        path = self.report / log
        return path.read_text().splitlines() if path.exists() else []

    def time(self, name: str) -> float:
        return float((self.report / name).read_text())

    def event(self, name: str) -> dict:
        return json.loads((self.report / name).read_text())


class Sandbox:
    """One host's private apt and dpkg state; each run sees what the previous runs installed."""

    def __init__(self, root: Path, repository: Path, dpkg_database: Path):
        self.root = root
        self.runs = 0
        copy_dpkg_database(dpkg_database, root / "var/lib/dpkg")
        for directory in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt",
                          "etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "bin"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "etc/apt/sources.list.d/ubuntu.sources").write_text(
            f"Types: deb\nURIs: file:{repository}\nSuites: ubuntu/\nTrusted: yes\n")
        (root / "etc/apt/sources.list.d/docker.list").write_text(f"deb [trusted=yes] file:{repository} docker/\n")
        self.shim("systemctl", SYSTEMCTL_SHIM)

    def shim(self, name: str, text: str) -> None:
        path = self.root / "bin" / name
        path.write_text(text)
        path.chmod(0o755)

    def refuse_apt(self) -> None:
        for name in ("apt-get", "apt-mark", "apt", "dpkg"):
            self.shim(name, REFUSING_SHIM.replace("{name}", name))

    def run(self, pins: list[str] = PINS, lock: str = "none", release_after: str = NEVER,
            **environment: str) -> Run:
        self.runs += 1
        report = self.root / f"report-{self.runs}"
        report.mkdir()
        env = {"PATH": f"{self.root}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
               "INSTALL_HOST_TEST_REPORT": str(report), "APT_RETRY_PAUSE_SECONDS": "1", **environment}
        command = ["unshare", "--mount", "bash", "-c", NAMESPACE_RUNNER, "runner", str(self.root), str(report),
                   lock, release_after, sys.executable, LOCK_HOLDER, str(SCRIPT), *pins]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"install-host.sh did not finish within 120s:\n{stdout}{stderr}")
        return Run(process.returncode, stdout + stderr, report)


@pytest.fixture
def sandbox(tmp_path, repository, dpkg_database) -> Sandbox:
    return Sandbox(tmp_path / "host", repository, dpkg_database)


def test_the_install_waits_for_the_dpkg_lock_then_installs_the_pins_held_without_recommends(sandbox):
    run = sandbox.run(lock=FRONTEND_LOCK, release_after=APT_WAITING)  # the script's default timeout: 600s
    assert run.returncode == 0, run.output

    # The lock was taken on the namespace's scratch copy, by a separate process, and really waited for.
    locked, released = run.event("locked.json"), run.event("released.json")
    lock_file = os.stat(sandbox.root / "var/lib/dpkg/lock-frontend")
    assert (locked["device"], locked["inode"]) == (lock_file.st_dev, lock_file.st_ino)
    assert locked["inode"] != os.stat("/var/lib/dpkg/lock-frontend").st_ino
    assert locked["at"] < run.time("started") < released["at"] < run.time("finished")
    assert "install-host: each apt-get waits up to 600s for the dpkg lock" in run.stdout
    assert (f"{APT_WAITING}: Could not get lock {FRONTEND_LOCK}. It is held by process {locked['pid']}"
            in run.stdout)

    installed = run.installed()
    assert {name: installed.get(name) for name in PINNED} == PINNED  # the pins, not the newer compose
    assert "python3-boto3" in installed and installed.get("restic") == RESTIC_VERSION
    assert RECOMMENDED not in installed
    assert all(run.packages()[name][1] == "hold ok installed" for name in PINNED)
    assert sorted(run.holds()) == sorted(PINNED)
    assert run.calls("systemctl.log") == ["enable --now docker"]
    assert "0 to remove" in run.stdout
    assert "install-host: Docker's apt repository is already configured" in run.stdout
    assert f"install-host: installing {' '.join(PINS)}{UBUNTU_PACKAGES}" in run.stdout
    assert run.stdout.rstrip().endswith(f"install-host: installed {' '.join(PINS)}{UBUNTU_PACKAGES}")


def test_without_waiting_the_held_lock_fails_the_install(sandbox):
    # What apt-get does by default, and what the script did before: the bug this module catches.
    run = sandbox.run(lock=FRONTEND_LOCK, APT_LOCK_TIMEOUT_SECONDS="0")
    assert run.returncode == 1, run.output
    pid = run.event("locked.json")["pid"]
    assert f"E: Could not get lock {FRONTEND_LOCK}. It is held by process {pid}" in run.stderr
    assert f"install-host: apt-get install {' '.join(PINS)}{UBUNTU_PACKAGES} failed" in run.stderr
    assert not set(run.installed()) & set(FAKE_PACKAGES)
    assert run.holds() == []
    assert run.calls("systemctl.log") == []


def test_a_rerun_with_everything_installed_changes_nothing_and_calls_no_apt(sandbox):
    first = sandbox.run()
    assert first.returncode == 0, first.output
    sandbox.refuse_apt()
    again = sandbox.run()
    assert again.returncode == 0, again.output
    assert again.stdout == "install-host: everything is installed at its pinned version\n"
    assert again.calls("refused.log") == [] and again.calls("systemctl.log") == []
    assert again.installed() == first.installed() and again.holds() == first.holds()


def test_a_changed_pin_moves_the_held_package(sandbox):
    first = sandbox.run()
    assert first.returncode == 0, first.output
    pins = [f"docker-compose-plugin={NEWER_COMPOSE}" if pin.startswith("docker-compose-plugin=") else pin
            for pin in PINS]
    upgrade = sandbox.run(pins)
    assert upgrade.returncode == 0, upgrade.output
    assert f"install-host: installing docker-compose-plugin={NEWER_COMPOSE}\n" in upgrade.stdout
    assert upgrade.installed()["docker-compose-plugin"] == NEWER_COMPOSE
    assert sorted(upgrade.holds()) == sorted(PINNED)
    back = sandbox.run()  # and back down again: a pin is exact
    assert back.returncode == 0, back.output
    assert back.installed()["docker-compose-plugin"] == PINNED["docker-compose-plugin"]
    assert sorted(back.holds()) == sorted(PINNED)


def test_apt_get_update_is_retried_while_its_lists_lock_is_held(sandbox):
    # apt-get update cannot wait for its lock (apt-daily holds it on a fresh host): it is retried.
    run = sandbox.run(lock=LISTS_LOCK, release_after="install-host: apt-get update failed (attempt 1 of")
    assert run.returncode == 0, run.output
    assert f"E: Could not get lock {LISTS_LOCK}" in run.stderr
    assert "install-host: apt-get update failed (attempt 1 of 5); retrying in 1s" in run.stdout
    assert run.event("released.json")["at"] < run.time("finished")
    assert sorted(run.holds()) == sorted(PINNED)


def test_apt_get_update_fails_clearly_after_the_last_attempt(sandbox):
    run = sandbox.run(lock=LISTS_LOCK, APT_RETRY_ATTEMPTS="2", APT_RETRY_PAUSE_SECONDS="0")
    assert run.returncode == 1, run.output
    assert run.stdout.count("install-host: apt-get update failed (attempt") == 1
    assert "install-host: apt-get update failed 2 times; giving up" in run.stderr
    assert not set(run.installed()) & set(FAKE_PACKAGES)


@pytest.mark.parametrize(("pins", "environment", "message"), [
    (PINS, {"APT_LOCK_TIMEOUT_SECONDS": "10m"}, "got APT_LOCK_TIMEOUT_SECONDS=10m"),
    (PINS, {"APT_RETRY_ATTEMPTS": "0"}, "expected at least 1 attempt"),
    (["docker-ce"], {}, "expected PACKAGE=VERSION, got 'docker-ce'"),
], ids=["lock-timeout", "attempts", "pin"])
def test_bad_usage_exits_2_before_apt(sandbox, pins, environment, message):
    sandbox.refuse_apt()
    run = sandbox.run(pins, **environment)
    assert run.returncode == 2, run.output
    assert message in run.stderr
    assert run.calls("refused.log") == []
