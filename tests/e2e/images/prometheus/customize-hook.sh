#!/bin/sh
# mmdebstrap --customize-hook: the upstream image's data directory, owned by nobody (65534).
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
install -d -o 65534 -g 65534 -m 0755 "$1/prometheus"
test -x "$1/usr/bin/prometheus"
