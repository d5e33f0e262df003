#!/bin/sh
# Adds a user and its group with fixed ids to a root filesystem that mmdebstrap is building.
# Runs on the build host as an mmdebstrap hook, before the packages that would otherwise create
# the user with a dynamic id (postgresql-common's adduser keeps an existing system user).
# The apt variant has no useradd (passwd is not Essential), so this edits the files directly.
#
# Usage: add-user.sh ROOTFS NAME ID HOME SHELL GECOS
set -eu
root=$1 name=$2 id=$3 home=$4 shell=$5 gecos=$6

if grep -q "^$name:" "$root/etc/passwd" || grep -q "^[^:]*:[^:]*:$id:" "$root/etc/passwd"; then
  echo "add-user.sh: user $name or uid $id already exists in $root" >&2
  exit 1
fi
if grep -q "^$name:" "$root/etc/group" || grep -q "^[^:]*:[^:]*:$id:" "$root/etc/group"; then
  echo "add-user.sh: group $name or gid $id already exists in $root" >&2
  exit 1
fi
echo "$name:x:$id:" >>"$root/etc/group"
echo "$name:!::" >>"$root/etc/gshadow"
echo "$name:x:$id:$id:$gecos:$home:$shell" >>"$root/etc/passwd"
echo "$name:!:$(($(date +%s) / 86400)):0:99999:7:::" >>"$root/etc/shadow"
mkdir -p "$root$home"
chown "$id:$id" "$root$home"
