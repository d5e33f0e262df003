#!/bin/sh
# mmdebstrap --essential-hook: the rootless Gitea image's user, git with uid/gid 1000 (deploy.sh
# chowns the data, config and secrets directories to 1000).
# Usage: essential-hook.sh ROOTFS COMMON_DIR
set -eu
sh "$2/add-user.sh" "$1" git 1000 /var/lib/gitea/git /bin/bash "Gitea"
