#!/usr/bin/env bash
# Runs every test tier of gitea-stack, setting up what the tests need first:
#   - a virtualenv (.venv) with the project and its test extras;
#   - the Debian packages the host tier uses (installed with apt-get when run as root; otherwise
#     the tests that need a missing tool fail and name it).
#
# Usage: tests/run.sh [--help] [PYTEST ARGUMENTS...]
#   tests/run.sh                      every tier
#   tests/run.sh tests/unit           one tier
#   tests/run.sh -k settings          a selection
# Environment: PYTHON (default python3) builds the virtualenv.
# Exit codes: those of pytest (0 all passed, 1 some failed, 2+ usage or internal errors).
set -euo pipefail

usage() { sed -n '2,13s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

project_dir=$(cd "$(dirname "$0")/.." && pwd)
cd "$project_dir"

# Debian packages of the host tier, one per tool the tests call (user-mode-linux and kmod: a kernel
# of the tests' own for online resize2fs, which needs a capability this sandbox's root lacks;
# patchelf: Debian unstable's UML, on CPUs whose XSAVE area Debian 12's cannot take, see
# tests/harness/uml.py; docker-registry: the image registry of the update tests;
# restic and postgresql: backup.sh's real restic against a real PostgreSQL cluster; git: a real
# repository to back up and fsck after the restore; prometheus (with promtool),
# prometheus-alertmanager (with amtool) and the node, postgres and blackbox exporters: the
# monitoring plane's configs, alert rules and mail, run for real).
debian_packages=(shellcheck e2fsprogs util-linux mount nginx pebble certbot openssl curl
  docker.io openssh-server openssh-client sudo iproute2 mmdebstrap dpkg-dev haproxy systemd cloud-init
  user-mode-linux kmod patchelf restic postgresql git docker-registry
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter
  prometheus-blackbox-exporter)

missing_packages() {
  local package
  for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}

if command -v dpkg-query >/dev/null && [ "$(id -u)" -eq 0 ]; then
  mapfile -t missing < <(missing_packages)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing Debian packages: ${missing[*]}"
    # Packages such as nginx start their service on install; tests start their own on loopback only.
    created_policy=false
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      created_policy=true
    fi
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$created_policy" = true ]; then rm -f /usr/sbin/policy-rc.d; fi
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable '.[test]'

started=$(date +%s)
status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "tests/run.sh: finished in $(($(date +%s) - started))s with exit code $status"
exit "$status"
