#!/bin/sh
# mmdebstrap --customize-hook: runs after the packages are installed.
# Usage: customize-hook.sh ROOTFS COMMON_DIR
set -eu
root=$1
# Only /etc/nginx/conf.d/*.conf is served (compose mounts the bundle's files there), as in the
# official image: no Debian default site.
rm -rf "$root/etc/nginx/sites-enabled" "$root/etc/nginx/sites-available"
find "$root/etc/nginx/conf.d" -mindepth 1 -delete
rm -rf "$root/var/www/html"
# Logs go to the container's output.
ln -sf /dev/stdout "$root/var/log/nginx/access.log"
ln -sf /dev/stderr "$root/var/log/nginx/error.log"
mkdir -p "$root/var/www/certbot" "$root/etc/letsencrypt"
