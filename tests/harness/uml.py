"""A Linux kernel of the test's own (User-mode Linux), for what this machine's kernel refuses even root.

Growing a mounted ext4 filesystem (EXT4_IOC_RESIZE_FS, what `resize2fs` does online) needs
CAP_SYS_RESOURCE, and a sandbox's root may not have it (this one's has not). A UML kernel (Debian's
`user-mode-linux`) runs as an ordinary process and gives its own init every capability. Its root
filesystem is this machine's (hostfs), so a guest script runs the same binaries and project scripts,
and reads and writes the test's temporary directory; its mounts and loop devices are its own.

A scenario is a bash script run as the guest's init, after /proc, /sys, /dev/fd and the loop driver
are set up. `step NAME COMMAND...` runs one command and keeps its exit status, output and duration,
which `run_in_uml` hands back as `GuestStep`s; the guest powers off when the scenario ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
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
insmod "/usr/lib/uml/modules/$(uname -r)/kernel/drivers/block/loop.ko"

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
    init.write_text(INIT.format(results=results, scenario=scenario))
    init.chmod(0o755)
    # No `quiet` and console 0 on stdout: when a guest dies before its init runs, the kernel's own
    # messages are the only clue, and they go into the failure message.
    argv = [kernel, f"mem={memory_mib}M", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}",
            "con=null", "con0=fd:0,fd:1", f"uml_dir={work_dir}", "umid=gitea-stack-test"]
    # UML backs the guest's memory with a file in TMPDIR (else /dev/shm, which may be small or
    # full here): keep it in the test's own directory.
    environment = {**os.environ, "TMPDIR": str(work_dir)}
    for attempt in (1, 2):
        returncode, console = _boot(argv, environment, work_dir, results, timeout)
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
