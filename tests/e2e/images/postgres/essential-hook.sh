#!/bin/sh
# mmdebstrap --essential-hook: runs before postgresql-common is installed, whose adduser keeps an
# existing system user. deploy.sh chowns the data directory and secrets to 999, the official
# images' postgres uid/gid.
# Usage: essential-hook.sh ROOTFS COMMON_DIR
set -eu
sh "$2/add-user.sh" "$1" postgres 999 /var/lib/postgresql /bin/bash "PostgreSQL administrator,,,"
