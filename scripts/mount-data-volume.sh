#!/usr/bin/env bash
# Mounts the stack's data volume at its mount point, formatting it only when it is blank.
# cloud-init runs it once per instance; the /etc/fstab entry it adds (nofail) mounts the volume
# on every later boot. A volume that already holds data (a replaced instance) is never formatted.
#
# Usage: mount-data-volume.sh VOLUME_ID MOUNT_POINT
# Environment: MOUNT_WAIT_SECONDS (default 600) how long to wait for the volume to be attached.
# Exit codes: 0 mounted; 1 the volume did not appear, holds something else, or did not mount;
#             2 bad usage.
set -euo pipefail

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
if [ $# -ne 2 ]; then usage >&2; exit 2; fi
volume_id=$1
mount_point=$2
wait_seconds=${MOUNT_WAIT_SECONDS:-600}

find_device() {
  # Nitro instances show EBS volumes as NVMe devices whose serial is the volume id without its dash;
  # Xen instances keep the requested device name.
  local candidate
  for candidate in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume_id/-/}" /dev/xvdf /dev/sdf; do
    if [ -b "$candidate" ]; then
      readlink -f "$candidate"
      return 0
    fi
  done
  return 1
}

device=""
for ((waited = 0; waited < wait_seconds; waited += 2)); do
  if device=$(find_device); then break; fi
  sleep 2
done
if [ -z "$device" ]; then
  echo "data volume $volume_id did not appear within ${wait_seconds}s" >&2
  exit 1
fi

# blkid -p exits 2 only when the device carries no signature at all: the one case we format.
probe=0
blkid -p "$device" >/dev/null 2>&1 || probe=$?
case $probe in
  0) ;;
  2)
    echo "formatting blank data volume $volume_id ($device)"
    mkfs.ext4 -q -L gitea-data "$device"
    ;;
  *)
    echo "cannot probe $device (blkid exit $probe)" >&2
    exit 1
    ;;
esac
fs_type=$(blkid -o value -s TYPE "$device" || true)
if [ "$fs_type" != ext4 ]; then
  echo "data volume $volume_id holds '${fs_type:-no filesystem}', not ext4; leaving it untouched" >&2
  exit 1
fi

uuid=$(blkid -o value -s UUID "$device")
mkdir -p "$mount_point"
if ! grep -q "^UUID=$uuid " /etc/fstab; then
  echo "UUID=$uuid $mount_point ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2" >>/etc/fstab
fi
mountpoint -q "$mount_point" || mount "$mount_point"
echo "data volume $volume_id mounted at $mount_point"
