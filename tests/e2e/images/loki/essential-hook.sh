#!/bin/sh
# mmdebstrap --essential-hook: the Loki image's user, loki with uid/gid 10001 (compose runs it as
# 10001:10001; deploy.sh chowns the data directory to 10001).
# Usage: essential-hook.sh ROOTFS COMMON_DIR
set -eu
sh "$2/add-user.sh" "$1" loki 10001 /loki /usr/sbin/nologin "Loki"
