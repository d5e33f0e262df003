"""scripts/mount-data-volume.sh on real block devices (loop devices), as cloud-init runs it.

Each run happens in a private mount namespace where /etc/fstab is a scratch copy and
/dev/disk/by-id holds the NVMe-style name EC2 gives the volume, so the host's own mounts and
fstab are never touched, and the script runs unchanged.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness.tools import require_root, require_tool

SCRIPT = SCRIPTS_DIR / "mount-data-volume.sh"
VOLUME_ID = "vol-0feedc0ffee000001"

# Runs inside `unshare --mount`: fake the EC2 device name, swap in the scratch fstab, run the script,
# then report what a later boot would see.
NAMESPACE_RUNNER = r"""
set -euo pipefail
device=$1 fstab=$2 mount_point=$3 script=$4 volume_id=$5
mount --make-rprivate /
mkdir -p /dev/disk
mount -t tmpfs tmpfs /dev/disk
mkdir /dev/disk/by-id
[ "$device" = none ] || ln -s "$device" "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume_id/-/}"
mount --bind "$fstab" /etc/fstab
status=0
bash "$script" "$volume_id" "$mount_point" || status=$?
if mountpoint -q "$mount_point"; then
  echo "MOUNTED"
  ls -A "$mount_point" | sed 's/^/FILE /'
  [ -f "$mount_point/marker" ] || echo written >"$mount_point/marker"
fi
exit "$status"
"""


@pytest.fixture
def tools():
    require_root("it attaches loop devices and mounts filesystems")
    return {name: require_tool(name, package) for name, package in (
        ("losetup", "mount"), ("unshare", "util-linux"), ("mkfs.ext4", "e2fsprogs"), ("mkfs.ext2", "e2fsprogs"),
        ("blkid", "util-linux"), ("mountpoint", "util-linux"))}


@pytest.fixture
def disk(tmp_path, tools):
    """A 64 MiB blank loop device, detached afterwards."""
    image = tmp_path / "volume.img"
    with image.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    device = subprocess.run([tools["losetup"], "--find", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    yield Path(device)
    subprocess.run([tools["losetup"], "--detach", device], check=False)


def mount_volume(device, tmp_path, fstab: Path, wait_seconds: int = 30) -> subprocess.CompletedProcess:
    mount_point = tmp_path / "srv" / "gitea-stack"
    return subprocess.run(
        ["unshare", "--mount", "bash", "-c", NAMESPACE_RUNNER, "runner", str(device), str(fstab), str(mount_point),
         str(SCRIPT), VOLUME_ID],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                          "MOUNT_WAIT_SECONDS": str(wait_seconds)})


def fstab_lines(fstab: Path) -> list[str]:
    return [line for line in fstab.read_text().splitlines() if line and not line.startswith("#")]


def digest(device: Path) -> str:
    return hashlib.sha256(device.read_bytes()).hexdigest()


def test_a_blank_volume_is_formatted_mounted_and_added_to_fstab(disk, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("# scratch fstab\n")
    result = mount_volume(disk, tmp_path, fstab)
    assert result.returncode == 0, result.stderr
    assert "formatting blank data volume" in result.stdout
    assert "MOUNTED" in result.stdout
    (line,) = fstab_lines(fstab)
    uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(disk)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert line == f"UUID={uuid} {tmp_path}/srv/gitea-stack ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2"


def test_a_volume_with_data_is_mounted_again_never_formatted(disk, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("")
    first = mount_volume(disk, tmp_path, fstab)
    assert first.returncode == 0, first.stderr
    # A replaced instance: same volume, the data written by the first run must still be there.
    second = mount_volume(disk, tmp_path, fstab)
    assert second.returncode == 0, second.stderr
    assert "formatting" not in second.stdout
    assert "FILE marker" in second.stdout
    assert len(fstab_lines(fstab)) == 1


def test_a_volume_holding_another_filesystem_is_left_untouched(disk, tmp_path, tools):
    subprocess.run([tools["mkfs.ext2"], "-q", str(disk)], check=True)
    before = digest(disk)
    fstab = tmp_path / "fstab"
    fstab.write_text("")
    result = mount_volume(disk, tmp_path, fstab)
    assert result.returncode == 1
    assert f"data volume {VOLUME_ID} holds 'ext2', not ext4; leaving it untouched" in result.stderr
    assert digest(disk) == before
    assert fstab_lines(fstab) == []


def test_a_volume_that_never_appears_fails_with_a_clear_message(tmp_path, tools):
    fstab = tmp_path / "fstab"
    fstab.write_text("")
    result = mount_volume("none", tmp_path, fstab, wait_seconds=2)
    assert result.returncode == 1
    assert f"data volume {VOLUME_ID} did not appear within 2s" in result.stderr
    assert fstab_lines(fstab) == []


def test_bad_usage_exits_2():
    result = subprocess.run(["bash", str(SCRIPT), "only-one-argument"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Usage: mount-data-volume.sh VOLUME_ID MOUNT_POINT" in result.stderr
