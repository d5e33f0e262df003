#!/usr/bin/env bash
# Shared helpers for the gitea-stack host scripts: logging, a global lock, the compose command.
# Sourced, not run: `. "$(dirname "$0")/lib.sh"`.

# Where the bundle lives on the host; scripts run from its scripts/ directory.
GITEA_STACK_DIR=${GITEA_STACK_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export GITEA_STACK_DIR

log() { printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${0##*/}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Holds an exclusive lock for the rest of the script, so deploy, renewal, backup and update never
# run at the same time. Waits up to LOCK_WAIT_SECONDS (default 600).
hold_lock() {
  local lock_file=${GITEA_STACK_LOCK:-/run/lock/gitea-stack.lock}
  exec {lock_fd}>"$lock_file"
  flock --wait "${LOCK_WAIT_SECONDS:-600}" "$lock_fd" || die "another gitea-stack job holds $lock_file"
}

# Docker's compose plugin (v2 or later), on this stack's project and compose file.
compose() {
  docker compose --project-name gitea-stack --project-directory "$GITEA_STACK_DIR" \
    --file "$GITEA_STACK_DIR/docker-compose.yml" "$@"
}

# Loads KEY=value lines (no shell evaluation) from a file into the environment.
load_env_file() {
  local file=$1 key value
  [ -r "$file" ] || die "cannot read $file"
  while IFS='=' read -r key value; do
    case $key in '' | \#*) continue ;; esac
    export "$key=$value"
  done <"$file"
}
