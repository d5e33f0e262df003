"""A Linux kernel of the test's own (User-mode Linux), for what this machine's kernel refuses even root.

Growing a mounted ext4 filesystem (EXT4_IOC_RESIZE_FS, what `resize2fs` does online) needs
CAP_SYS_RESOURCE, and a sandbox's root may not have it (this one's has not). A UML kernel (Debian's
`user-mode-linux`) runs as an ordinary process and gives its own init every capability. Its root
filesystem is this machine's (hostfs), so a guest script runs the same binaries and project scripts,
and reads and writes the test's temporary directory; its mounts and loop devices are its own.

Debian 12's UML (6.1) hands the host an XSAVE buffer of a fixed size. On CPUs whose XSAVE area is
larger (AVX-512 and AMX, as on some of this project's machines) the host refuses it and the guest
dies at its first process ("userspace - ptrace set fp regs failed, errno = 14"; trixie's 6.12 too).
There, the guest is booted with the UML kernel of Debian unstable instead (7.2 and later size the
buffer from the host), fetched with apt into CACHE_DIR and run with unstable's own C library
(patchelf points the binary at it). Unstable moves, so this fallback is not pinned; the run says
which version it used.

A scenario is a bash script run as the guest's init, after /proc, /sys, /dev/fd and the loop driver
are set up. `step NAME COMMAND...` runs one command and keeps its exit status, output and duration,
which `run_in_uml` hands back as `GuestStep`s; the guest powers off when the scenario ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.tools import require_tool

INIT = r"""#!/bin/bash
# init of a gitea-stack test guest (User-mode Linux, root on hostfs): setup, the scenario, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
RESULTS={results}
exec >"$RESULTS/init.log" 2>&1
trap 'echo $? >"$RESULTS/exit-status"; poweroff -f' EXIT
set -euo pipefail
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
insmod "{modules}/kernel/drivers/block/loop.ko"

step() {{
  local name=$1 started status=0
  shift
  started=$(date +%s%N)
  "$@" >"$RESULTS/$name.stdout" 2>"$RESULTS/$name.stderr" || status=$?
  printf '%s %s\n' "$status" "$(($(date +%s%N) - started))" >"$RESULTS/$name.status"
}}

{scenario}
"""


@dataclass(frozen=True)
class GuestStep:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_in_uml(scenario: str, work_dir: Path, timeout: float = 300, memory_mib: int = 256) -> dict[str, GuestStep]:
    """Boots a UML guest that runs `scenario` as root; returns its steps by name. The guest's failure
    to set up or finish fails the test with its log."""
    kernel = require_tool("linux.uml", "user-mode-linux")
    require_tool("insmod", "kmod")
    results = work_dir / "uml-results"
    results.mkdir(parents=True)
    init = work_dir / "uml-init"
    modules = "/usr/lib/uml/modules/$(uname -r)"
    # UML backs the guest's memory with a file in TMPDIR (else /dev/shm, which may be small or
    # full here): keep it in the test's own directory.
    environment = {**os.environ, "TMPDIR": str(work_dir)}
    for attempt in (1, 2):
        init.write_text(INIT.format(results=results, scenario=scenario, modules=modules))
        init.chmod(0o755)
        # No `quiet` and console 0 on stdout: when a guest dies before its init runs, the kernel's own
        # messages are the only clue, and they go into the failure message.
        argv = [kernel, f"mem={memory_mib}M", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}",
                "con=null", "con0=fd:0,fd:1", f"uml_dir={work_dir}", "umid=gitea-stack-test"]
        returncode, console = _boot(argv, environment, work_dir, results, timeout)
        if XSTATE_FAILURE in console and attempt == 1:
            kernel, modules = unstable_uml()
            print(f"the UML guest died at its first process ({XSTATE_FAILURE!r}): this CPU's XSAVE area is larger "
                  f"than Debian 12's UML takes; booting it again with Debian unstable's, {kernel}")
            continue
        if (results / "init.log").exists() or attempt == 2:
            break
        # The kernel never reached init (nothing of the scenario ran): one more boot, said aloud.
        print(f"the UML guest stopped (exit {returncode}) before its init ran; booting it once more.\n"
              f"console:\n{console[-3000:]}")
    status = results / "exit-status"
    if not status.exists() or status.read_text().strip() != "0":
        pytest.fail(f"the UML guest failed (status {status.read_text().strip() if status.exists() else 'none'}, "
                    f"kernel process exit {returncode}):\n{_tail(results / 'init.log')}\nconsole:\n{console[-3000:]}")
    steps = {}
    for marker in results.glob("*.status"):
        name = marker.name.removesuffix(".status")
        returncode, nanoseconds = marker.read_text().split()
        steps[name] = GuestStep(int(returncode), (results / f"{name}.stdout").read_text(),
                                (results / f"{name}.stderr").read_text(), int(nanoseconds) / 1e9)
    return steps


XSTATE_FAILURE = "ptrace set fp regs failed"
CACHE_DIR = Path("/var/cache/gitea-stack-tests/uml-unstable")
UNSTABLE = "deb http://deb.debian.org/debian sid main\n"


def unstable_uml() -> tuple[str, str]:
    """Debian unstable's UML kernel, patched to run with unstable's C library, and its modules
    directory; fetched with apt once, then from CACHE_DIR."""
    patchelf = require_tool("patchelf", "patchelf")
    apt_get = require_tool("apt-get", "apt")
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    kernels = sorted(CACHE_DIR.glob("*/linux.uml"))
    if not kernels:
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
            work_path = Path(work)
            (work_path / "sources.list").write_text(UNSTABLE)
            for directory in ("lists/partial", "archives/partial", "debs"):
                (work_path / directory).mkdir(parents=True)
            apt = [apt_get, "-o", f"Dir::Etc::sourcelist={work_path / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
                   "-o", f"Dir::State::Lists={work_path / 'lists'}", "-o", f"Dir::Cache={work_path}",
                   "-o", "APT::Sandbox::User=root"]
            for command in ([*apt, "update"], [*apt, "download", "user-mode-linux", "libc6"]):
                result = subprocess.run(command, capture_output=True, text=True, cwd=work_path / "debs", timeout=600)
                if result.returncode != 0:
                    pytest.fail(f"could not fetch Debian unstable's UML ({' '.join(command[-2:])}):\n{result.stderr[-2000:]}")
            root = work_path / "root"
            for deb in sorted((work_path / "debs").glob("*.deb")):
                subprocess.run([dpkg_deb, "-x", str(deb), str(root)], check=True)
            version = next((root / "usr/lib/uml/modules").iterdir()).name
            target = CACHE_DIR / version
            os.replace(root, target)
            libraries = target / "usr/lib/x86_64-linux-gnu"
            kernel = target / "linux.uml"
            subprocess.run(["cp", str(target / "usr/bin/linux.uml"), str(kernel)], check=True)
            subprocess.run([patchelf, "--set-interpreter", str(libraries / "ld-linux-x86-64.so.2"),
                            "--set-rpath", str(libraries), str(kernel)], check=True)
        kernels = [kernel]
    kernel = kernels[-1]
    return str(kernel), str(next((kernel.parent / "usr/lib/uml/modules").iterdir()))


def _boot(argv: list[str], environment: dict[str, str], work_dir: Path, results: Path,
          timeout: float) -> tuple[int, str]:
    """Runs one guest to its end; returns the kernel process's exit status and its console output."""
    # Its own process group: UML runs the guest's processes as host processes of its own, and a
    # guest that hangs is ended with all of them.
    guest = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=work_dir, env=environment)
    try:
        console, _ = guest.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(guest.pid, signal.SIGKILL)
        guest.communicate()
        pytest.fail(f"the UML guest did not finish within {timeout}s:\n{_tail(results / 'init.log')}")
    return guest.returncode, console.decode(errors="replace")


def _tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else "(no log)"
