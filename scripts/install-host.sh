#!/usr/bin/env bash
# Installs what the forge needs on an Ubuntu 24.04 host, at pinned versions: Docker Engine and the
# compose plugin from Docker's apt repository, and python3-boto3 for fetch-secrets.py.
# Packages already installed at the pinned version are left alone, so a re-run changes nothing.
#
# Usage: install-host.sh PACKAGE=VERSION...   (e.g. docker-ce=5:29.8.1-1~ubuntu.24.04~noble)
# Exit codes: 0 installed; 1 an install step failed; 2 bad usage.
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;; "") sed -n '2,7s/^# \{0,1\}//p' "$0" >&2; exit 2 ;; esac

missing=()
for pin in "$@"; do
  package=${pin%%=*} version=${pin#*=}
  installed=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)
  [ "$installed" = "$version" ] || missing+=("$pin")
done
dpkg-query -W -f='${Status}' python3-boto3 2>/dev/null | grep -q "install ok installed" || missing+=(python3-boto3)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-host: everything is installed at its pinned version"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ ! -s /etc/apt/sources.list.d/docker.list ]; then
  apt-get update -q
  apt-get install -y -q ca-certificates curl
  install -m 0755 -d /etc/apt/keyrings
  curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
  chmod a+r /etc/apt/keyrings/docker.asc
  # shellcheck disable=SC1091 # /etc/os-release exists on every Ubuntu host
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu $codename stable" \
    >/etc/apt/sources.list.d/docker.list
fi
apt-get update -q
apt-get install -y -q --allow-downgrades "${missing[@]}"
# Unattended upgrades must not move Docker under a running forge; updates go through pulumi up.
apt-mark hold "${@%%=*}" >/dev/null
systemctl enable --now docker
echo "install-host: installed ${missing[*]}"
