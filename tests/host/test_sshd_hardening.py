"""The host's own sshd as the user data configures it, judged by OpenSSH itself.

The sshd drop-in is taken from the rendered cloud-config (write_files) and put, unchanged, into a
directory a main config Includes first, as Ubuntu 24.04's sshd_config does. Beside it lie drop-ins
such as Ubuntu's cloud image and cloud-init write (50-cloud-init.conf may allow passwords); sshd
keeps the first value it reads for a keyword, so ours must win. `sshd -t` validates the whole,
`sshd -T` prints the settings sshd would run with.

sshd insists on its privilege separation directory (/run/sshd) even to check a config: it runs in a
private mount namespace with a tmpfs on /run, so nothing on this machine changes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gitea_stack.rendering import render_user_data
from tests.harness.bundles import variant
from tests.harness.tools import require_root, require_tool

# What Ubuntu 24.04's /etc/ssh/sshd_config holds besides comments; the Include comes first.
UBUNTU_MAIN_CONFIG = """\
Include {drop_ins}/*.conf
HostKey {host_key}
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""
# Drop-ins of others that would weaken sshd if they came first.
OTHER_DROP_INS = {
    "50-cloud-init.conf": "PasswordAuthentication yes\n",
    "60-cloudimg-settings.conf": "PasswordAuthentication no\n",
    "90-permissive.conf": "KbdInteractiveAuthentication yes\nPermitRootLogin yes\n",
}


def sshd_config_from_user_data(user_data: str, directory: Path) -> Path:
    """A main config, our drop-in from the user data and the others'; returns the main config."""
    ssh_keygen = require_tool("ssh-keygen", "openssh-client")
    drop_ins = directory / "sshd_config.d"
    drop_ins.mkdir(parents=True)
    written = [f for f in yaml.safe_load(user_data)["write_files"] if f["path"].startswith("/etc/ssh/")]
    assert len(written) == 1 and written[0]["path"].startswith("/etc/ssh/sshd_config.d/"), written
    (drop_ins / Path(written[0]["path"]).name).write_text(written[0]["content"])
    for name, content in OTHER_DROP_INS.items():
        (drop_ins / name).write_text(content)
    host_key = directory / "ssh_host_ed25519_key"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    main = directory / "sshd_config"
    main.write_text(UBUNTU_MAIN_CONFIG.format(drop_ins=drop_ins, host_key=host_key))
    return main


def sshd(*args: str) -> subprocess.CompletedProcess:
    """sshd with `args`, in a private mount namespace where /run/sshd exists."""
    require_root("sshd checks its config only with /run/sshd, made here on a private tmpfs")
    binary = require_tool("sshd", "openssh-server")
    unshare = require_tool("unshare", "util-linux")
    script = 'mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec "$@"'
    return subprocess.run([unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                           binary, *args], capture_output=True, text=True, check=False, timeout=30)


def effective_settings(config: Path) -> dict[str, list[str]]:
    checked = sshd("-t", "-f", str(config))
    assert checked.returncode == 0, checked.stderr
    printed = sshd("-T", "-f", str(config))
    assert printed.returncode == 0, printed.stderr
    settings: dict[str, list[str]] = {}
    for line in printed.stdout.splitlines():
        keyword, _, value = line.partition(" ")
        settings.setdefault(keyword, []).append(value)
    return settings


@pytest.mark.parametrize("name, admin_port, git_port", [("example", 2222, 22),
                                                         ("custom-ports-and-images", 40022, 2200)])
def test_sshd_runs_on_the_admin_port_with_keys_only_and_no_root(tmp_path, name, admin_port, git_port):
    config = sshd_config_from_user_data(render_user_data(variant(name), "vol-0abc"), tmp_path)
    settings = effective_settings(config)
    assert settings["port"] == [str(admin_port)]
    assert str(git_port) not in settings["port"]
    assert settings["passwordauthentication"] == ["no"]
    assert settings["kbdinteractiveauthentication"] == ["no"]
    assert settings["permitrootlogin"] == ["no"]
    assert settings["pubkeyauthentication"] == ["yes"]


def test_sshd_t_rejects_a_broken_drop_in(tmp_path):
    """So the check above is sshd's judgement: a drop-in it cannot read fails it."""
    user_data = render_user_data(variant("example"), "vol-0abc").replace("Port 2222", "Port twenty-two")
    config = sshd_config_from_user_data(user_data, tmp_path)
    checked = sshd("-t", "-f", str(config))
    assert checked.returncode != 0 and "Badly formatted port number" in checked.stderr, checked.stderr
