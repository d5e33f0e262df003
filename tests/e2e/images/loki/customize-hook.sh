#!/bin/sh
# mmdebstrap --customize-hook: the upstream image is distroless with busybox under /busybox; the
# healthcheck runs /busybox/wget. Debian's wget and sh take their place.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
root=$1
mkdir -p "$root/busybox" "$root/etc/loki"
ln -sfn /usr/bin/wget "$root/busybox/wget"
ln -sfn /bin/sh "$root/busybox/sh"
install -d -o 10001 -g 10001 -m 0755 "$root/loki"
