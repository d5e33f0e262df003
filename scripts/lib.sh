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
# A script run by one that holds it (GITEA_STACK_LOCK_HELD, exported here) goes on without waiting.
hold_lock() {
  try_lock "${LOCK_WAIT_SECONDS:-600}" || die "another gitea-stack job holds ${GITEA_STACK_LOCK:-/run/lock/gitea-stack.lock}"
}
# hold_lock's lock, waiting up to $1 seconds (0: not at all); returns 1 when another job holds it.
try_lock() {
  [ -z "${GITEA_STACK_LOCK_HELD:-}" ] || return 0
  exec {lock_fd}>"${GITEA_STACK_LOCK:-/run/lock/gitea-stack.lock}"
  flock --wait "$1" "$lock_fd" || return 1
  export GITEA_STACK_LOCK_HELD=$$
}

# Waits for a running backup to end and holds its lock (backup_lock_fd) for the rest of the script;
# $1 names what was not done when it waits longer than BACKUP_LOCK_WAIT_SECONDS (default 6 h): the
# caller's `fail` (which records and mails the failure) says so.
wait_for_backup_lock() {
  local lock_file=${BACKUP_LOCK:-/run/lock/gitea-stack-backup.lock}
  exec {backup_lock_fd}>"$lock_file"
  if ! flock --nonblock "$backup_lock_fd"; then
    log "a backup is running (it holds $lock_file): waiting for it to end"
    flock --wait "${BACKUP_LOCK_WAIT_SECONDS:-21600}" "$backup_lock_fd" \
      || fail "a backup held $lock_file for more than ${BACKUP_LOCK_WAIT_SECONDS:-21600}s; $1"
  fi
}

# Docker's compose plugin (v2 or later), on this stack's project and compose file, with the images
# update.sh applied on this host (runtime/images.yml, see write_image_overrides) when there are any.
compose() {
  local files=(--file "$GITEA_STACK_DIR/docker-compose.yml")
  if [ -s "$GITEA_STACK_DIR/runtime/images.yml" ]; then files+=(--file "$GITEA_STACK_DIR/runtime/images.yml"); fi
  docker compose --project-name gitea-stack --project-directory "$GITEA_STACK_DIR" "${files[@]}" "$@"
}

# images.conf (rendered from the stack config) has a line `service image policy include-tags` per
# service; DATA_DIR/state/images.conf (`service image`) the images update.sh applied on this host
# that differ from it: on the data volume, so a new instance runs what the data was last used with.
configured_image() { awk -v service="$1" '$1 == service { print $2 }' "$GITEA_STACK_DIR/images.conf"; }
applied_image() { awk -v service="$1" '$1 == service { print $2 }' "$DATA_DIR/state/images.conf" 2>/dev/null || true; }
# What compose runs for the service: the image applied on this host, else the configured one.
effective_image() {
  local applied
  applied=$(applied_image "$1")
  if [ -n "$applied" ]; then echo "$applied"; else configured_image "$1"; fi
}
# An image reference's repository (without tag or digest) and tag; a registry's port is not a tag.
repository_of() {
  local name=${1%%@*}
  if [[ ${name##*/} == *:* ]]; then echo "${name%:*}"; else echo "$name"; fi
}
tag_of() {
  local name=${1%%@*}
  if [[ ${name##*/} == *:* ]]; then echo "${name##*:}"; fi
}
# A PostgreSQL image of another major than the stack config's (one a failed major upgrade went back
# to) needs the data mount its major expects; compose merges mounts by their target.
postgres_volume_override() {
  local major
  [ "$1" = postgres ] || return 0
  major=$(tag_of "$2")
  major=${major%%[!0-9]*}
  if [ -z "$major" ] || [ "$major" = "${POSTGRES_MAJOR:-}" ]; then return 0; fi
  if [ "$major" -lt 18 ]; then
    printf '    volumes:\n      - %s/postgres/data:/var/lib/postgresql/data\n' "$DATA_DIR"
  else
    printf '    volumes:\n      - %s/postgres:/var/lib/postgresql\n' "$DATA_DIR"
  fi
}

# Records IMAGE ($2) as applied on this host for SERVICE ($1) (none: the configured image again),
# then writes runtime/images.yml, the compose override that makes compose run it.
set_applied_image() {
  local state=$DATA_DIR/state/images.conf kept
  kept=$(awk -v service="$1" '$1 != service' "$state" 2>/dev/null || true)
  { [ -z "$kept" ] || printf '%s\n' "$kept"
    if [ -n "${2:-}" ] && [ "$2" != "$(configured_image "$1")" ]; then printf '%s %s\n' "$1" "$2"; fi
  } >"$state.new"
  mv "$state.new" "$state"
  write_image_overrides
}
write_image_overrides() {
  local override=$GITEA_STACK_DIR/runtime/images.yml service image
  install -d -m 0755 "$GITEA_STACK_DIR/runtime"
  if [ ! -s "$DATA_DIR/state/images.conf" ]; then rm -f "$override"; return 0; fi
  {
    echo "# Written by update.sh from $DATA_DIR/state/images.conf: images applied on this host that"
    echo "# differ from the stack config's (gitea-stack:images)."
    echo "services:"
    while read -r service image; do
      [ -n "$service" ] || continue
      printf '  %s:\n    image: %s\n' "$service" "$image"
      postgres_volume_override "$service" "$image"
    done <"$DATA_DIR/state/images.conf"
  } >"$override.new"
  mv "$override.new" "$override"
}

# healthy, running, another state of the service's container, or missing.
service_state() {
  local container
  container=$(compose ps --quiet "$1")
  [ -n "$container" ] || { echo missing; return; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container"
}

# Waits up to $1 seconds until each further named service is healthy (or running, if it has no
# healthcheck); returns 1 when the time is up, with the others and their states in
# unhealthy_services.
healthy_within() {
  local deadline=$((SECONDS + $1)) service state
  shift
  while :; do
    unhealthy_services=()
    for service in "$@"; do
      state=$(service_state "$service")
      [ "$state" = healthy ] || [ "$state" = running ] || unhealthy_services+=("$service=$state")
    done
    [ ${#unhealthy_services[@]} -eq 0 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
    sleep "${HEALTH_POLL_SECONDS:-3}"
  done
}
wait_until_healthy() {
  healthy_within "${HEALTH_TIMEOUT_SECONDS:-600}" "$@" || die "not healthy in time: ${unhealthy_services[*]}"
}

# The PostgreSQL majors of the clusters on the data volume (their PG_VERSION), one per line: up to
# 17 the official images keep PGDATA in postgres/data, from 18 on in postgres/<major>/docker.
postgres_data_majors() {
  local file
  for file in "$DATA_DIR"/postgres/*/docker/PG_VERSION "$DATA_DIR/postgres/data/PG_VERSION"; do
    if [ -f "$file" ]; then tr -d '[:space:]' <"$file"; echo; fi
  done | sort -u -n
}
# Where a major's cluster lives on the data volume, as one directory to move aside and back.
postgres_data_dir() {
  if [ "$1" -lt 18 ]; then echo "$DATA_DIR/postgres/data"; else echo "$DATA_DIR/postgres/$1"; fi
}

# Gitea's `gitea` role: owner of the database, no superuser, the password of the stack's secret; and
# postgres_exporter's `gitea_stack_monitor`, once its secret is installed.
# The cluster's superuser keeps no password: it logs in through the container's local socket only.
set_database_role() {
  local password monitor_password monitor_sql=()
  local monitor_file="$GITEA_STACK_DIR/secrets/postgres-exporter/postgres-exporter-password"
  password=$(<"$GITEA_STACK_DIR/secrets/postgres/postgres-password")
  password=${password//"'"/"''"}  # an SQL string literal
  # postgres_exporter's role: pg_monitor (statistics and settings), no data, no writes.
  if [ -r "$monitor_file" ]; then
    monitor_password=$(<"$monitor_file")
    monitor_sql=("SELECT 'CREATE ROLE gitea_stack_monitor' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gitea_stack_monitor') \\gexec"
      "ALTER ROLE gitea_stack_monitor WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3 PASSWORD '${monitor_password//"'"/"''"}';"
      'GRANT pg_monitor TO gitea_stack_monitor;')
  fi
  # The SQL goes in on stdin; no statement with the password reaches the server log, even on error.
  printf '%s\n' 'SET log_min_error_statement = panic;' "SET log_statement = 'none';" \
    "SELECT 'CREATE ROLE gitea' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gitea') \\gexec" \
    "ALTER ROLE gitea WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$password';" \
    'ALTER DATABASE gitea OWNER TO gitea;' \
    'ALTER ROLE postgres PASSWORD NULL;' "${monitor_sql[@]}" \
    | compose exec -T postgres psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
    >/dev/null
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

# restic on a stack's repository, s3:<endpoint>/<bucket>/restic: use_restic_repository BUCKET
# [REGION] [PASSWORD_FILE] exports restic's settings; run_restic then runs restic on it. The
# endpoint is AWS_ENDPOINT_URL when set (tests), else S3 in REGION (default AWS_REGION).
use_restic_repository() {
  local bucket=$1 region=${2:-${AWS_REGION:-}} endpoint
  endpoint=${AWS_ENDPOINT_URL:-https://s3.${region:?no AWS region for the bucket $bucket}.amazonaws.com}
  export RESTIC_REPOSITORY="s3:${endpoint%/}/$bucket/restic"
  export RESTIC_PASSWORD_FILE=${3:-$GITEA_STACK_DIR/secrets/host/restic-password}
  export RESTIC_CACHE_DIR=${RESTIC_CACHE_DIR:-/var/cache/gitea-stack/restic}
  restic_options=()
  if [ -n "$region" ]; then restic_options+=(--option "s3.region=$region"); fi
}
run_restic() { restic "${restic_options[@]}" "$@"; }

# Bytes a snapshot ($1) takes restored (`restic stats --mode restore-size`).
restic_restore_size() {
  run_restic stats --json --mode restore-size "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["total_size"])'
}

# A progress line every PROGRESS_INTERVAL_SECONDS (default 30) while long work writes into a
# directory: start_progress WHAT DIRECTORY [TOTAL_BYTES], then stop_progress. The reporter ends its
# own sleep too, so nothing it started keeps the script's output open afterwards.
progress_pid=''
start_progress() {
  local what=$1 directory=$2 total=${3:-} interval=${PROGRESS_INTERVAL_SECONDS:-30} size
  [[ $interval =~ ^[1-9][0-9]*$ ]] || interval=1
  (
    trap 'kill "$!" 2>/dev/null; exit 0' TERM
    while :; do
      sleep "$interval" &
      wait "$!"
      size=$(du -sb "$directory" 2>/dev/null | cut -f1) || true
      log "$what: $((${size:-0} / 1048576)) MiB${total:+ of about $((total / 1048576)) MiB} so far in $directory"
    done
  ) &
  progress_pid=$!
}
stop_progress() {
  [ -n "$progress_pid" ] || return 0
  kill "$progress_pid" 2>/dev/null || true
  wait "$progress_pid" 2>/dev/null || true
  progress_pid=''
}

# Mails SUBJECT ($1) with the body on stdin to ALERT_EMAILS through SES (send-mail.py). A mail that
# cannot be sent is logged, never fatal: the caller's own failure is what matters.
send_alert() {
  python3 "$GITEA_STACK_DIR/scripts/send-mail.py" --subject "$1" \
    || log "error: could not mail '$1' to ${ALERT_EMAILS:-nobody}; see the message above"
}
