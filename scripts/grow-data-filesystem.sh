#!/usr/bin/env bash
# Grows the data volume's ext4 filesystem to fill its block device while it stays mounted (online
# resize2fs). After gitea-stack:dataVolumeGiB grows, EC2 enlarges the volume in the background and
# the instance can see the new size a little later: with EXPECTED_GIB this first waits until the
# device has at least that size; if it never gets there, it fails and changes nothing. deploy.sh
# runs it before it touches any service; after resizing the volume outside Pulumi, run it by hand.
# Idempotent: a filesystem that already fills its device is left alone. A mount that is not on a
# block device (a tmpfs, say) has no size to manage here and is left alone too.
#
# Usage: grow-data-filesystem.sh [--help] MOUNT_POINT [EXPECTED_GIB]
#   EXPECTED_GIB  the size in GiB the device must reach first; empty or 0: whatever it is, no waiting
# Environment: GROW_WAIT_SECONDS (default 300) how long to wait for the device to reach EXPECTED_GIB.
# Exit codes: 0 the filesystem fills its device, or there is nothing to grow; 1 the device did not
#             reach EXPECTED_GIB in time (nothing was changed), MOUNT_POINT is not a mount point or
#             not ext4, or resize2fs failed; 2 bad usage.
set -euo pipefail

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
if [ $# -lt 1 ] || [ $# -gt 2 ] || ! [[ ${2:-} =~ ^[0-9]*$ ]]; then usage >&2; exit 2; fi
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

mount_point=$1
expected_gib=$((10#${2:-0}))
wait_seconds=${GROW_WAIT_SECONDS:-300}
GIB=$((1024 * 1024 * 1024))

# A byte count in GiB with two decimals, for people.
gib() { awk -v bytes="$1" 'BEGIN { printf "%.2f GiB", bytes / 1073741824 }'; }

# The EBS volume id of an NVMe device (its serial is the id without the dash), for messages;
# `pulumi stack output dataVolumeId` names it too.
volume_id() {
  local serial
  serial=$(lsblk --nodeps --noheadings --output SERIAL "$device" 2>/dev/null | tr -d ' ' || true)
  if [[ $serial =~ ^vol([0-9a-f]+)$ ]]; then echo "vol-${BASH_REMATCH[1]}"; fi
}
volume_id_or_output() {
  local id
  id=$(volume_id)
  echo "${id:-\"\$(pulumi stack output dataVolumeId)\"}"
}
volume_name() {
  local id
  id=$(volume_id)
  if [ -n "$id" ]; then echo "volume $id ($device)"; else echo "data volume ($device)"; fi
}

# The filesystem's size in bytes and its block size, from its superblock.
filesystem_blocks() { dumpe2fs -h "$device" 2>/dev/null | sed -n 's/^Block count: *//p'; }
filesystem_block_size() { dumpe2fs -h "$device" 2>/dev/null | sed -n 's/^Block size: *//p'; }

mountpoint -q "$mount_point" || die "$mount_point is not a mount point; mount the data volume first. Nothing was changed"
# The filesystem mounted there last (the one in use), without a bind mount's [/subdirectory].
mounted=$(findmnt --noheadings --raw --nofsroot --output SOURCE,FSTYPE --target "$mount_point" | tail -n 1)
read -r device fs_type <<<"$mounted"
if [ ! -b "$device" ]; then
  log "$mount_point is $fs_type ($device), not on a block device: no size to manage, nothing to grow"
  exit 0
fi
if [ "$fs_type" != ext4 ]; then
  die "$mount_point holds $fs_type, not ext4 (what mount-data-volume.sh creates); it is not grown here"
fi

device_bytes=$(blockdev --getsize64 "$device")
if [ "$expected_gib" -gt 0 ] && [ "$device_bytes" -lt $((expected_gib * GIB)) ]; then
  started=$SECONDS
  next_report=$SECONDS
  while :; do
    device_bytes=$(blockdev --getsize64 "$device")
    if [ "$device_bytes" -ge $((expected_gib * GIB)) ]; then break; fi
    waited=$((SECONDS - started))
    if [ "$waited" -ge "$wait_seconds" ]; then
      die "the $(volume_name) still has $(gib "$device_bytes") after the ${wait_seconds}s allowed, not the ${expected_gib} GiB of" \
        "gitea-stack:dataVolumeGiB; nothing was changed. Check the volume's modification in EC2 (console, or" \
        "aws ec2 describe-volumes-modifications --volume-ids $(volume_id_or_output)): 'optimizing' or" \
        "'completed' means the instance should see the new size, 'failed' says why; then run pulumi up again"
    fi
    if [ "$SECONDS" -ge "$next_report" ]; then
      log "waiting for the $(volume_name) to grow to ${expected_gib} GiB: it has $(gib "$device_bytes")" \
        "(EC2 applies a volume modification in the background; ${waited}s of ${wait_seconds}s)"
      next_report=$((SECONDS + 15))
    fi
    sleep 1
  done
fi

block_size=$(filesystem_block_size)
before=$(($(filesystem_blocks) * block_size))
if [ $((before + block_size)) -gt "$device_bytes" ]; then
  log "the filesystem on $mount_point fills the $(volume_name): $(gib "$before"); nothing to grow"
  exit 0
fi
log "growing the filesystem on $mount_point from $(gib "$before") to fill the $(volume_name) of $(gib "$device_bytes")"
resize2fs "$device" >&2 || die "resize2fs could not grow the filesystem on $device; it is still $(gib "$before")"
after=$(($(filesystem_blocks) * block_size))
log "grew the filesystem on $mount_point from $(gib "$before") to $(gib "$after")"
