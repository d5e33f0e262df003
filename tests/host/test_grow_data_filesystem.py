"""scripts/grow-data-filesystem.sh on real, mounted ext4 filesystems (loop devices), as EC2 grows them.

The growth itself runs in a User-mode Linux guest (tests/harness/uml.py): online resize2fs needs
CAP_SYS_RESOURCE, which root in this sandbox lacks. There, one sparse image file on a loop device is
formatted and mounted by mount-data-volume.sh exactly as cloud-init does; then the image file is
enlarged and `losetup --set-capacity` shows the device its new size, as the kernel sees an EBS volume
modification: three seconds late from the background (the script has to wait), or at once. Everything
that grows nothing runs on this machine's kernel.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitea_stack.rendering import SCRIPTS_DIR
from tests.harness.host_converge import (
    host_environment,
    secrets_manager,
    tree,
    write_host_bundle,
    write_shims,
)
from tests.harness.tools import require_root, require_tool
from tests.harness.uml import run_in_uml

SCRIPT = SCRIPTS_DIR / "grow-data-filesystem.sh"
MOUNT_SCRIPT = SCRIPTS_DIR / "mount-data-volume.sh"
VOLUME_ID = "vol-0feedc0ffee000002"
GIB = 1024 ** 3
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The guest's story: the volume as cloud-init leaves it, grown by EC2 (late, then at once), and too small.
STORY = r"""
work={work} mount_point={work}/srv/gitea-stack grow={grow}
image=$work/volume.img
truncate -s 1G "$image"
device=$(losetup --find --show "$image")
# What EC2 and cloud-init give the mount script: the NVMe name of the volume, an fstab.
mkdir -p /dev/disk/by-id
ln -s "$device" "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id_without_dash}"
: >"$work/fstab"
mount --bind "$work/fstab" /etc/fstab
step mount bash {mount_script} {volume_id} "$mount_point"
echo "written before any growth" >"$mount_point/marker"

# A resize2fs that counts its calls, then runs the real one.
mkdir "$work/spy"
printf '#!/bin/sh
echo "$*" >>%s
exec %s "$@"
' "$work/resize2fs-calls" "$(command -v resize2fs)" >"$work/spy/resize2fs"
chmod +x "$work/spy/resize2fs"
: >"$work/resize2fs-calls"
grow() {{ env PATH="$work/spy:$PATH" GROW_WAIT_SECONDS="$1" bash "$grow" "$mount_point" "$2"; }}
enlarge() {{ truncate -s "$1" "$image" && losetup --set-capacity "$device"; }}
mounted_size() {{ stat --file-system --format '%b %S' "$mount_point"; }}
resize_calls() {{ wc -l <"$work/resize2fs-calls"; }}
still_mounted() {{ mountpoint -q "$mount_point" && cat "$mount_point/marker"; }}

step type findmnt --noheadings --output FSTYPE,LABEL "$mount_point"
step before-mounted mounted_size
(sleep 3; enlarge 2G) &
step late grow 60 2
wait
step late-mounted mounted_size
step late-calls resize_calls
step late-still still_mounted
step again grow 60 2
step again-calls resize_calls

enlarge 3G
step empty grow 0 ""
enlarge 4G
step zero grow 0 0
step at-once-mounted mounted_size
step at-once-still still_mounted

step too-small grow 2 5
step too-small-calls resize_calls
step too-small-mounted mounted_size

umount "$mount_point"
losetup --detach "$device"
"""


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The guest's steps by name; one boot serves every test of the growth."""
    work = tmp_path_factory.mktemp("grow-in-uml")
    scenario = STORY.format(work=work, grow=SCRIPT, mount_script=MOUNT_SCRIPT, volume_id=VOLUME_ID,
                            volume_id_without_dash=VOLUME_ID.replace("-", ""))
    steps = run_in_uml(scenario, work)
    steps["image"] = work / "volume.img"
    steps["mount_point"] = work / "srv" / "gitea-stack"
    return steps


def size(step) -> int:
    blocks, block_size = step.stdout.split()
    return int(blocks) * int(block_size)


def filesystem_bytes(image: Path) -> int:
    """The ext4 size its superblock records (block count x block size)."""
    header = subprocess.run([require_tool("dumpe2fs", "e2fsprogs"), "-h", str(image)], capture_output=True,
                            text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def test_the_volume_starts_as_cloud_init_formats_and_mounts_it(story):
    assert story["mount"].returncode == 0, story["mount"].stderr
    assert f"formatting blank data volume {VOLUME_ID}" in story["mount"].stdout
    assert story["type"].stdout.split() == ["ext4", "gitea-data"]


def test_a_grown_volume_is_waited_for_and_its_mounted_filesystem_grows_to_fill_it(story):
    late = story["late"]
    assert late.returncode == 0, late.stderr
    assert late.seconds >= 3
    assert "waiting for the data volume (/dev/loop0) to grow to 2 GiB: it has 1.00 GiB" in late.stderr
    assert f"grew the filesystem on {story['mount_point']} from 1.00 GiB to 2.00 GiB" in late.stderr
    # Grown while mounted: the mounted filesystem reports the new size, and its data are still there.
    assert size(story["late-mounted"]) > size(story["before-mounted"]) + GIB * 9 // 10
    assert story["late-still"].stdout == "written before any growth\n"
    assert story["late-calls"].stdout.strip() == "1"


def test_a_second_run_changes_nothing(story):
    again = story["again"]
    assert again.returncode == 0, again.stderr
    assert f"the filesystem on {story['mount_point']} fills the data volume (/dev/loop0): 2.00 GiB; " \
           "nothing to grow" in again.stderr
    assert "waiting" not in again.stderr
    assert story["again-calls"].stdout.strip() == "1"  # resize2fs was not even run


@pytest.mark.parametrize("step, grown_to", [("empty", "3.00"), ("zero", "4.00")])
def test_without_an_expected_size_it_grows_to_whatever_the_device_is_at_once(story, step, grown_to):
    result = story[step]
    assert result.returncode == 0, result.stderr
    assert "waiting" not in result.stderr
    assert f"to {grown_to} GiB" in result.stderr.splitlines()[-1]
    assert story["at-once-still"].stdout == "written before any growth\n"
    assert size(story["at-once-mounted"]) > size(story["late-mounted"]) + 2 * GIB * 9 // 10


def test_a_volume_that_stays_too_small_fails_clearly_and_changes_nothing(story):
    result = story["too-small"]
    assert result.returncode == 1
    assert "the data volume (/dev/loop0) still has 4.00 GiB after the 2s allowed, not the 5 GiB of gitea-stack:dataVolumeGiB; " \
           "nothing was changed" in result.stderr
    assert "aws ec2 describe-volumes-modifications" in result.stderr
    assert story["too-small-calls"].stdout.strip() == "3"  # the late and the two at-once growths
    assert story["too-small-mounted"].stdout == story["at-once-mounted"].stdout
    assert filesystem_bytes(story["image"]) == 4 * GIB


@pytest.fixture
def tools():
    require_root("it attaches loop devices and mounts filesystems")
    return {name: require_tool(name, package) for name, package in (
        ("losetup", "mount"), ("unshare", "util-linux"), ("mkfs.ext4", "e2fsprogs"), ("mkfs.ext2", "e2fsprogs"),
        ("findmnt", "util-linux"), ("mountpoint", "util-linux"), ("blockdev", "util-linux"), ("flock", "util-linux"))}


@pytest.fixture
def ext4_device(tmp_path, tools):
    """A 1 GiB (sparse) ext4 loop device on this machine's kernel, detached afterwards."""
    image = tmp_path / "volume.img"
    with image.open("wb") as handle:
        handle.truncate(GIB)
    subprocess.run([tools["mkfs.ext4"], "-q", "-L", "gitea-data", str(image)], check=True)
    device = subprocess.run([tools["losetup"], "--find", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    yield device
    subprocess.run([tools["losetup"], "--detach", device], check=False)


# Mounts the device in a private mount namespace, runs deploy.sh there, and lists the data volume
# before and after.
DEPLOY_RUNNER = r"""
set -euo pipefail
device=$1 mount_point=$2 deploy=$3 listing=$4
mount "$device" "$mount_point"
find "$mount_point" | sort >"$listing.before"
status=0
bash "$deploy" || status=$?
find "$mount_point" | sort >"$listing.after"
exit "$status"
"""


def test_deploy_grows_the_volume_before_it_changes_anything_else(ext4_device, tools, tmp_path):
    """deploy.sh runs the growth first: a volume that stays too small stops it before any service,
    directory or secret is touched."""
    bundle_dir, mount_point, tmp_dir = tmp_path / "bundle", tmp_path / "srv" / "gitea-stack", tmp_path / "tmp"
    mount_point.mkdir(parents=True)
    tmp_dir.mkdir()
    docker_calls = write_shims(tmp_path / "shims")
    with secrets_manager() as aws:
        write_host_bundle(bundle_dir, mount_point, aws, dataVolumeGiB=2)  # the device has 1 GiB
        bundle_before = tree(bundle_dir)
        result = subprocess.run(
            [tools["unshare"], "--mount", "bash", "-c", DEPLOY_RUNNER, "runner", ext4_device, str(mount_point),
             str(bundle_dir / "scripts" / "deploy.sh"), str(tmp_path / "listing")],
            check=False, capture_output=True, text=True, timeout=120,
            env=host_environment(tmp_path / "shims", tmp_dir, GROW_WAIT_SECONDS="2"))
    assert result.returncode == 1
    assert f"the data volume ({ext4_device}) still has 1.00 GiB after the 2s allowed, not the 2 GiB of " \
           "gitea-stack:dataVolumeGiB; nothing was changed" in result.stderr
    assert 'describe-volumes-modifications --volume-ids "$(pulumi stack output dataVolumeId)"' in result.stderr
    assert not docker_calls.exists()
    listing = tmp_path / "listing"
    assert Path(f"{listing}.after").read_text() == Path(f"{listing}.before").read_text()  # no directory prepared
    secrets_dir = bundle_dir / "secrets"
    assert tree(bundle_dir) == {**bundle_before, "secrets": tree(bundle_dir)["secrets"]}
    assert list(secrets_dir.iterdir()) == []  # nothing installed, nothing staged left


def test_on_ec2_the_message_names_the_volume_by_its_id(ext4_device, tools, tmp_path):
    """Nitro instances show the EBS volume id (without its dash) as the NVMe device's serial."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "lsblk").write_text(f"#!/bin/sh\necho {VOLUME_ID.replace('-', '')}\n")
    (shims / "lsblk").chmod(0o755)
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    result = subprocess.run(
        [tools["unshare"], "--mount", "bash", "-c", 'mount "$1" "$2" && bash "$3" "$2" 2', "runner", ext4_device,
         str(mount_point), str(SCRIPT)],
        check=False, capture_output=True, text=True, timeout=60,
        env={"PATH": f"{shims}:{SYSTEM_PATH}", "GROW_WAIT_SECONDS": "0"})
    assert result.returncode == 1
    assert f"the volume {VOLUME_ID} ({ext4_device}) still has 1.00 GiB after the 0s allowed" in result.stderr
    assert f"describe-volumes-modifications --volume-ids {VOLUME_ID})" in result.stderr


def test_a_mount_that_is_not_a_block_device_is_left_alone(tools, tmp_path):
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    result = subprocess.run(
        [tools["unshare"], "--mount", "bash", "-c",
         'mount -t tmpfs gitea-stack-test-data "$1" && bash "$2" "$1" 50', "runner", str(mount_point), str(SCRIPT)],
        check=False, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                         "GROW_WAIT_SECONDS": "0"})
    assert result.returncode == 0, result.stderr
    assert f"{mount_point} is tmpfs (gitea-stack-test-data), not on a block device: no size to manage, " \
           "nothing to grow" in result.stderr


def test_a_directory_that_is_not_mounted_fails_clearly(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "50"], check=False, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert f"{tmp_path} is not a mount point; mount the data volume first. Nothing was changed" in result.stderr


def test_a_filesystem_other_than_ext4_is_not_grown(tools, tmp_path):
    image = tmp_path / "ext2.img"
    with image.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run([tools["mkfs.ext2"], "-q", "-F", str(image)], check=True)
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    result = subprocess.run(
        [tools["unshare"], "--mount", "bash", "-c", 'mount -o loop "$1" "$2" && bash "$3" "$2"', "runner",
         str(image), str(mount_point), str(SCRIPT)],
        check=False, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 1
    assert f"{mount_point} holds ext2, not ext4" in result.stderr


@pytest.mark.parametrize("arguments", [[], ["/srv/gitea-stack", "fifty"], ["/srv/gitea-stack", "50", "extra"]])
def test_bad_usage_exits_2(arguments):
    result = subprocess.run(["bash", str(SCRIPT), *arguments], check=False, capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "Usage: grow-data-filesystem.sh [--help] MOUNT_POINT [EXPECTED_GIB]" in result.stderr
