#!/bin/sh
# mmdebstrap --customize-hook: runs after the packages are installed.
# The official haproxy images run as haproxy, uid/gid 99 (USER haproxy), so the proxy's access to
# the Docker socket is tested as that user. Debian's adduser refuses to keep an existing system
# user below uid 100 (which an essential hook would create), so the haproxy package creates its
# user with a dynamic id and this hook moves it to 99:99 afterwards.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
root=$1
id=99

old_uid=$(chroot "$root" id -u haproxy)
old_gid=$(chroot "$root" id -g haproxy)
if grep -q "^[^:]*:[^:]*:$id:" "$root/etc/passwd" || grep -q "^[^:]*:[^:]*:$id:" "$root/etc/group"; then
  echo "customize-hook.sh: uid or gid $id is taken in $root" >&2
  exit 1
fi
sed -i "s/^haproxy:\([^:]*\):$old_uid:$old_gid:/haproxy:\1:$id:$id:/" "$root/etc/passwd"
sed -i "s/^haproxy:\([^:]*\):$old_gid:/haproxy:\1:$id:/" "$root/etc/group"
# Whatever the package gave the old ids (nothing in trixie's 3.0, but a later one might).
find "$root" -xdev \( -uid "$old_uid" -o -gid "$old_gid" \) -exec chown -h "$id:$id" {} +
# The official image's home and working directory, owned by haproxy; its config directory.
mkdir -p "$root/var/lib/haproxy" "$root/usr/local/etc/haproxy"
chown "$id:$id" "$root/var/lib/haproxy"

owner=$(chroot "$root" id -u haproxy):$(chroot "$root" id -g haproxy)
if [ "$owner" != "$id:$id" ]; then
  echo "customize-hook.sh: haproxy is $owner, not $id:$id" >&2
  exit 1
fi
