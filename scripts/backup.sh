#!/usr/bin/env bash
# Backs the forge up with restic into the stack's bucket (s3:<endpoint>/<BACKUP_BUCKET>/restic).
# One run is a set of two snapshots tagged gitea-stack and run:<UTC time, ns>, host <STACK>:
#   database  pg_dump --format=custom of the gitea database, streamed from the postgres container
#             into restic (no temporary file) as postgres/gitea.dump; uncompressed (restic
#             compresses), so restic's chunks find what did not change; a dump that fails is never
#             kept: the run's snapshots are forgotten and the run fails;
#   files     DATA_DIR/gitea (repositories, LFS, attachments, avatars, packages, Actions logs and
#             artifacts, SSH host keys, jwt/private.pem, custom/, app.ini), DATA_DIR/state and the
#             Gitea secret files (secrets/gitea: SECRET_KEY, INTERNAL_TOKEN, ...). Left out, as
#             Gitea rebuilds them: indexers, repo-archive, sessions and tmp.
# Then, once a day (BACKUP_PRUNE_INTERVAL_HOURS, default 24), `restic forget --prune`: each kind
# keeps what is within BACKUP_RETENTION_DAYS of its newest snapshot, and always the last run. The repository is initialised on first use only. Each run
# writes a status file and puts the same JSON in the bucket as status/backup.json.
#
# Usage: backup.sh [--help] [--json]
#   --json  print the status JSON on stdout at the end (also when the run failed)
# Reads settings.env (DATA_DIR, STACK, BACKUP_RETENTION_DAYS, AWS_ENDPOINT_URL) and stack-facts.env
# (AWS_REGION, BACKUP_BUCKET); the restic password from secrets/host/restic-password (deploy.sh
# puts it there), AWS credentials from the instance role (restic's and boto3's own chains).
# Environment: RESTIC_CACHE_DIR (default /var/cache/gitea-stack/restic);
#   BACKUP_LOCK (default /run/lock/gitea-stack-backup.lock) held so runs never overlap;
#   BACKUP_STATUS_FILE (default DATA_DIR/state/backup-status.json);
#   GITEA_STACK_LOCK, LOCK_WAIT_SECONDS: the lock shared with deploy.sh (see lib.sh), waited for;
#   PROGRESS_INTERVAL_SECONDS (default 30) between progress lines while restic reads;
#   BACKUP_PRUNE_INTERVAL_HOURS (default 24), BACKUP_PRUNE_STATE (default DATA_DIR/state/backup-last-prune).
# Exit codes: 0 backed up; 1 a step failed (dump, restic, bucket, retention, status upload): it is
#   logged and recorded in the status; 2 bad usage; 3 another backup is running: nothing was done.
set -euo pipefail
usage() { sed -n '2,30s/^# \{0,1\}//p' "$0"; }
json=false
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --json) json=true ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac
[ $# -le 1 ] || { usage >&2; exit 2; }
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

SUPPORT="$GITEA_STACK_DIR/scripts/backup-support.py"
STATUS_FILE=${BACKUP_STATUS_FILE:-$DATA_DIR/state/backup-status.json}
STATUS_KEY=status/backup.json
PRUNE_STATE=${BACKUP_PRUNE_STATE:-$DATA_DIR/state/backup-last-prune}
PRUNE_INTERVAL_HOURS=${BACKUP_PRUNE_INTERVAL_HOURS:-24}
SNAPSHOT_HOST=${STACK:-$(hostname)}
RUN_ID=$(date -u +%Y%m%dT%H%M%S.%NZ)  # unique: a failed run forgets the snapshots tagged with it
TAGS="gitea-stack,run:$RUN_ID"

[ -n "${BACKUP_BUCKET:-}" ] || die "stack-facts.env names no BACKUP_BUCKET"
[[ ${BACKUP_RETENTION_DAYS:-} =~ ^[1-9][0-9]*$ ]] \
  || die "settings.env: BACKUP_RETENTION_DAYS must be a whole number of days, got '${BACKUP_RETENTION_DAYS:-}'"
use_restic_repository "$BACKUP_BUCKET"

# One backup at a time; a second one leaves at once, changing nothing.
lock_file=${BACKUP_LOCK:-/run/lock/gitea-stack-backup.lock}
exec {backup_lock_fd}>"$lock_file"
if ! flock --nonblock "$backup_lock_fd"; then
  log "another backup is running (it holds $lock_file); this one did nothing"
  send_alert "backup skipped: the previous run is still going" <<MAIL || true
A scheduled backup of $DOMAIN found the previous run still going (it holds $lock_file) and did
nothing. Runs that take longer than the schedule (gitea-stack:backupSchedule) leave gaps.

What to do first: see what the running backup is doing:
  systemctl status gitea-stack-backup.service; journalctl -u gitea-stack-backup.service -n 100
If it is stuck, stop it (systemctl stop gitea-stack-backup.service) and run $0 by hand.
MAIL
  exit 3
fi
# Never beside a deploy, renewal or update (it may be recreating the database's container).
hold_lock

started=$(date +%s)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d)
failure=''
recorded=false

# Writes the status file, puts it in the bucket, keeps the JSON for --json. $1: ok or failed.
record_status() {
  local state=$1 message=$2 kind id
  shift 2
  local pairs=("state=$state" "message=$message" "run_id=$RUN_ID" "host=$SNAPSHOT_HOST"
    "repository=$RESTIC_REPOSITORY" "started=$started_at" "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "duration_s=$(($(date +%s) - started))" "$@")
  if [ -f "$work/snapshots" ]; then
    while read -r kind id; do pairs+=("snapshot.$kind=$id"); done <"$work/snapshots"
  fi
  recorded=true
  install -d -m 0700 "$(dirname "$STATUS_FILE")"
  status_json=$(python3 "$SUPPORT" write-status "$STATUS_FILE" "${pairs[@]}")
  python3 "$SUPPORT" upload-status "$BACKUP_BUCKET" "$STATUS_KEY" "$STATUS_FILE"
}

finish() {
  local code=$?
  if [ "$recorded" = false ] && [ "$code" -ne 0 ]; then
    record_status failed "${failure:-backup.sh stopped at an unexpected error (exit code $code); see its log}" \
      || log "error: could not record the failure in the bucket"
  fi
  if [ "$code" -ne 0 ]; then mail_failure "$code"; fi
  if [ "$json" = true ] && [ -n "${status_json:-}" ]; then printf '%s\n' "$status_json"; fi
  rm -rf "$work"
}
trap finish EXIT

# The failure mail: what broke, what was kept, what to do first.
mail_failure() {
  local last_success
  last_success=$(python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1])).get("last_success") or "never")
except (OSError, ValueError):
    print("unknown (no status file)")' "$STATUS_FILE")
  send_alert "backup FAILED: ${failure:-backup.sh stopped with exit code $1}" <<MAIL || true
The backup of $DOMAIN (run:$RUN_ID) failed:
  ${failure:-backup.sh stopped with exit code $1}
Nothing of this run was kept; earlier snapshots in $RESTIC_REPOSITORY are untouched.
The last successful backup finished at $last_success.

What to do first: read the run's log on the host:
  journalctl -u gitea-stack-backup.service -n 200
fix what it names (the bucket, the restic password secret, the database container, free space),
then run $GITEA_STACK_DIR/scripts/backup.sh by hand and check that it ends with "done".
MAIL
}

fail() {
  failure="$*"
  log "error: $*"
  exit 1
}

# The ids of this run's snapshots, one "<kind> <id>" line each, into $work/snapshots.
list_run_snapshots() {
  run_restic snapshots --json --tag "run:$RUN_ID" | python3 -c '
import json, sys
for snapshot in json.load(sys.stdin) or []:
    kind = next((tag for tag in snapshot.get("tags", []) if tag in ("database", "files")), "other")
    print(kind, snapshot["id"])' >"$work/snapshots"
}

# A failed run keeps nothing: every snapshot tagged with its run id is forgotten.
forget_this_run() {
  local kind id ids=()
  if ! list_run_snapshots; then
    log "error: could not list this run's snapshots (run:$RUN_ID); forget them by hand"
    return 0
  fi
  while read -r kind id; do ids+=("$id"); done <"$work/snapshots"
  rm -f "$work/snapshots"
  [ ${#ids[@]} -gt 0 ] || return 0
  log "forgetting this run's snapshots: ${ids[*]}"
  run_restic forget "${ids[@]}" >&2 || log "error: could not forget ${ids[*]}; forget them by hand"
}

# restic's summary field $2 from the summary file $1 (0 when there is none).
summary_field() {
  python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))
except OSError:
    print(0)' "$1" "$2"
}

open_repository() {
  local status=0
  python3 "$SUPPORT" has-repository "$BACKUP_BUCKET" restic || status=$?
  case $status in
    0) ;;
    4)
      log "no restic repository at $RESTIC_REPOSITORY yet: initialising it"
      run_restic init >&2 || fail "restic could not initialise $RESTIC_REPOSITORY"
      repository_created=true
      ;;
    *) fail "cannot reach the backup bucket $BACKUP_BUCKET; nothing was backed up" ;;
  esac
  # Opens the repository (a wrong password fails here) and removes the lock a run killed half-way
  # left in the bucket; no other run holds one now. One restic start, not two: each pays the key's KDF.
  run_restic unlock >&2 \
    || fail "restic cannot open $RESTIC_REPOSITORY (see restic's message above); nothing was backed up"
}

backup_database() {
  local statuses
  log "streaming pg_dump of the gitea database into restic (run:$RUN_ID)"
  set +e
  compose exec -T postgres pg_dump --format=custom --compress=0 --username=postgres gitea \
    | run_restic backup --json --stdin --stdin-filename postgres/gitea.dump --tag "$TAGS,database" \
      --host "$SNAPSHOT_HOST" \
    | python3 "$SUPPORT" follow-restic "$work/database.json"
  statuses=("${PIPESTATUS[@]}")
  set -e
  if [ "${statuses[0]}" -ne 0 ]; then
    forget_this_run
    fail "pg_dump failed (exit code ${statuses[0]}); the database was not backed up and this run's" \
      "snapshots were forgotten"
  fi
  if [ "${statuses[1]}" -ne 0 ]; then
    forget_this_run
    fail "restic could not store the database dump (exit code ${statuses[1]}); this run's snapshots were forgotten"
  fi
  log "database: $(summary_field "$work/database.json" data_added) bytes added"
}

backup_files() {
  local path status=0 paths=("$DATA_DIR/gitea" "$DATA_DIR/state" "$GITEA_STACK_DIR/secrets/gitea") excludes=()
  for path in "${paths[@]}"; do
    [ -d "$path" ] || { forget_this_run; fail "$path is missing; this run's snapshots were forgotten"; }
  done
  # Gitea rebuilds these (its data directory is gitea/data, or gitea/data/data in some layouts).
  for path in "$DATA_DIR/gitea/data" "$DATA_DIR/gitea/data/data"; do
    excludes+=(--exclude "$path/indexers" --exclude "$path/repo-archive" --exclude "$path/sessions"
      --exclude "$path/tmp")
  done
  excludes+=(--exclude "$STATUS_FILE" --exclude "$(dirname "$STATUS_FILE")/.$(basename "$STATUS_FILE").tmp")
  log "backing up ${paths[*]}"
  run_restic backup --json --tag "$TAGS,files" --host "$SNAPSHOT_HOST" "${excludes[@]}" "${paths[@]}" \
    | python3 "$SUPPORT" follow-restic "$work/files.json" || status=$?
  # 3: the snapshot was made, but some files could not be read (restic named them above).
  case $status in
    0) ;;
    3) partial="some files could not be read (see the log); " ;;
    *)
      forget_this_run
      fail "restic could not back up the files (exit code $status); this run's snapshots were forgotten"
      ;;
  esac
  log "files: $(summary_field "$work/files.json" data_added) bytes added"
}

# Retention once a day, not every run: forget and prune read the whole index and rewrite packs, and
# what they free is days old anyway. PRUNE_STATE records the last one (a new repository starts it).
apply_retention() {
  local last now
  now=$(date +%s)
  last=$(cat "$PRUNE_STATE" 2>/dev/null || echo 0)
  if [ "$repository_created" = true ] || [ $((now - ${last:-0})) -lt $((PRUNE_INTERVAL_HOURS * 3600)) ]; then
    [ "$repository_created" = false ] || echo "$now" >"$PRUNE_STATE"
    return 0
  fi
  log "forgetting snapshots older than ${BACKUP_RETENTION_DAYS} days (the last run is always kept), then pruning"
  run_restic forget --prune --host "$SNAPSHOT_HOST" --tag gitea-stack --group-by host,paths \
    --keep-within "${BACKUP_RETENTION_DAYS}d" --keep-last 1 >&2 \
    || fail "this run's snapshots were made, but restic forget --prune failed"
  echo "$now" >"$PRUNE_STATE"
}

# "<kind> <id>" of this run's snapshots, from restic's summaries (no extra restic start).
record_run_snapshots() {
  local kind
  for kind in database files; do
    printf '%s %s\n' "$kind" "$(summary_field "$work/$kind.json" snapshot_id)"
  done >"$work/snapshots"
}

partial=''
repository_created=false
log "backing up to $RESTIC_REPOSITORY as run:$RUN_ID"
open_repository
backup_database
backup_files
record_run_snapshots
apply_retention
bytes_added=$(($(summary_field "$work/database.json" data_added) + $(summary_field "$work/files.json" data_added)))
record_status ok "${partial}backed up in $(($(date +%s) - started))s" "bytes_added=$bytes_added" \
  || fail "the backup was made, but its status could not be put in the bucket"
log "done: run:$RUN_ID, $bytes_added bytes added, status in $STATUS_FILE and s3://$BACKUP_BUCKET/$STATUS_KEY"
