#!/usr/bin/env bash
# Installs what the forge needs on an Ubuntu 24.04 host, at pinned versions: Docker Engine and the
# compose plugin from Docker's apt repository; python3-boto3 (fetch-secrets.py) and restic
# (backup.sh) from Ubuntu's, at the release's version.
# Packages already installed at the pinned version are left alone, so a re-run changes nothing.
# A fresh host runs apt-daily and unattended-upgrades at first boot: every apt-get waits for the
# dpkg lock, and the steps that cannot wait (apt-get update, apt-mark hold) are retried.
#
# Usage: install-host.sh PACKAGE=VERSION...   (e.g. docker-ce=5:29.8.1-1~ubuntu.24.04~noble)
# Environment: APT_LOCK_TIMEOUT_SECONDS (default 600) how long each apt-get waits for the dpkg lock;
#   APT_RETRY_ATTEMPTS (default 5) and APT_RETRY_PAUSE_SECONDS (default 15) for the retried steps.
# Exit codes: 0 installed; 1 an install step failed; 2 bad usage.
set -euo pipefail
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; "") usage >&2; exit 2 ;; esac

log() { echo "install-host: $*"; }
fail() { echo "install-host: $*" >&2; exit 1; }
bad_usage() { echo "install-host: $*" >&2; exit 2; }
# Any other failing step: name it, and exit 1 as documented (not with the step's own code).
on_error() { echo "install-host: \`$1\` failed with exit code $2" >&2; exit 1; }
trap 'on_error "$BASH_COMMAND" "$?"' ERR

lock_timeout=${APT_LOCK_TIMEOUT_SECONDS:-600}
attempts=${APT_RETRY_ATTEMPTS:-5}
pause=${APT_RETRY_PAUSE_SECONDS:-15}
for setting in "APT_LOCK_TIMEOUT_SECONDS=$lock_timeout" "APT_RETRY_ATTEMPTS=$attempts" \
  "APT_RETRY_PAUSE_SECONDS=$pause"; do
  [[ ${setting#*=} =~ ^[0-9]+$ ]] || bad_usage "expected a whole number of seconds or attempts, got $setting"
done
[ "$attempts" -ge 1 ] || bad_usage "expected at least 1 attempt, got APT_RETRY_ATTEMPTS=$attempts"
for pin in "$@"; do
  [[ $pin == ?*=?* ]] || bad_usage "expected PACKAGE=VERSION, got '$pin'"
done

missing=()
for pin in "$@"; do
  package=${pin%%=*} version=${pin#*=}
  installed=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)
  [ "$installed" = "$version" ] || missing+=("$pin")
done
# Ubuntu's own packages, at the version of the host's release (no pin beyond the distribution; the
# host's unattended upgrades keep them patched): python3-boto3 for fetch-secrets.py and
# backup-support.py, restic for backup.sh (Ubuntu 24.04: 0.16).
for package in python3-boto3 restic; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
  log "everything is installed at its pinned version"
  exit 0
fi

# apt-get fails at once (exit 100) when another apt or dpkg holds the lock; this waits for it instead.
apt_get() { apt-get -o DPkg::Lock::Timeout="$lock_timeout" "$@"; }

# Runs a step that fails transiently (a mirror, or a lock it cannot wait for) up to $attempts times.
retry() {
  local what=$1 attempt=1
  shift
  until "$@"; do
    [ "$attempt" -lt "$attempts" ] || fail "$what failed $attempts times; giving up (see apt's messages above)"
    log "$what failed (attempt $attempt of $attempts); retrying in ${pause}s"
    sleep "$pause"
    attempt=$((attempt + 1))
  done
}

export DEBIAN_FRONTEND=noninteractive
log "to install: ${missing[*]}"
log "each apt-get waits up to ${lock_timeout}s for the dpkg lock (held by unattended-upgrades on a fresh host)"
if [ ! -s /etc/apt/sources.list.d/docker.list ]; then
  log "adding Docker's apt repository"
  log "updating the package lists"
  retry "apt-get update" apt_get update -q
  log "installing ca-certificates curl"
  apt_get install -y -q --no-install-recommends ca-certificates curl \
    || fail "apt-get install ca-certificates curl failed"
  install -m 0755 -d /etc/apt/keyrings
  curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
  chmod a+r /etc/apt/keyrings/docker.asc
  # shellcheck disable=SC1091 # /etc/os-release exists on every Ubuntu host
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu $codename stable" \
    >/etc/apt/sources.list.d/docker.list
else
  log "Docker's apt repository is already configured"
fi
log "updating the package lists"
retry "apt-get update" apt_get update -q
# Pins only, no Recommends (docker-ce-rootless-extras and more would come in unpinned and unheld);
# a changed pin moves a package this script held before, up or down.
log "installing ${missing[*]}"
apt_get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages "${missing[@]}" \
  || fail "apt-get install ${missing[*]} failed"
# Unattended upgrades must not move Docker under a running forge; updates go through pulumi up.
log "holding ${*%%=*} at their pinned versions"
retry "apt-mark hold" apt-mark hold "${@%%=*}"
log "enabling and starting docker"
systemctl enable --now docker
log "installed ${missing[*]}"
