#!/bin/sh
# mmdebstrap --customize-hook: the rootless image's directories, owned by git.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
install -d -o 1000 -g 1000 -m 0750 "$1/var/lib/gitea" "$1/var/lib/gitea/git" "$1/etc/gitea"
install -d -o 1000 -g 1000 -m 0700 "$1/tmp/gitea"
