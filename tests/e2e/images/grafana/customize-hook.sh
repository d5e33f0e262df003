#!/bin/sh
# mmdebstrap --customize-hook: the upstream image's directories (GF_PATHS_*), owned by grafana.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
install -d -o 472 -g 472 -m 0755 "$1/var/lib/grafana" "$1/var/log/grafana" "$1/var/lib/grafana/plugins"
install -d -m 0755 "$1/etc/grafana/provisioning" "$1/usr/share/grafana/bin"
