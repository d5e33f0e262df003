#!/bin/sh
# mmdebstrap --customize-hook: runs after the packages are installed.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
root=$1

# The package created and registered a cluster (17/main); the image keeps its data in PGDATA.
chroot "$root" pg_lsclusters --no-header | while read -r version name _; do
  chroot "$root" pg_dropcluster --stop "$version" "$name"
done
sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*$/create_main_cluster = false/' \
  "$root/etc/postgresql-common/createcluster.conf"
find "$root/var/lib/postgresql" -mindepth 1 -delete

# One stable PATH entry for the server binaries (postgres, initdb, pg_ctl), whatever the major.
major=$(find "$root/usr/lib/postgresql" -mindepth 1 -maxdepth 1 -type d -printf "%f\n" | sort -n | tail -n 1)
ln -sfn "$major" "$root/usr/lib/postgresql/current"
test -x "$root/usr/lib/postgresql/current/bin/postgres"

owner=$(chroot "$root" id -u postgres):$(chroot "$root" id -g postgres)
if [ "$owner" != 999:999 ]; then
  echo "customize-hook.sh: postgres is $owner, not 999:999" >&2
  exit 1
fi
