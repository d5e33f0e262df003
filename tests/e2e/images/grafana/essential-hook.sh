#!/bin/sh
# mmdebstrap --essential-hook: the Grafana image's user, grafana with uid/gid 472 (compose runs it
# as 472:472; deploy.sh chowns the data directory and the secrets to 472).
# Usage: essential-hook.sh ROOTFS COMMON_DIR
set -eu
sh "$2/add-user.sh" "$1" grafana 472 /usr/share/grafana /usr/sbin/nologin "Grafana"
