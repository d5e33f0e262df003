#!/usr/bin/env bash
# Proves the backups restore: the latest complete run in the stack's restic repository (a run is
# two snapshots tagged gitea-stack and run:<RUN_ID>, host <STACK>: `database` and `files`; complete
# when both exist) is restored into scratch space and checked, then the scratch space is removed.
#   database  a scratch PostgreSQL container of the stack's own image (POSTGRES_IMAGE), no network,
#             its data in the scratch directory; the dump is streamed from restic into pg_restore
#             (--no-owner --no-privileges --exit-on-error), then every table's rows are counted;
#   files     `restic restore` into the scratch directory, then `git fsck --full` on every bare
#             repository below the restored DATA_DIR/gitea/data/git/repositories (<owner>/<name>.git).
# Before anything is restored, the scratch location's free space is checked: a drill that would
# leave less than the reserve (1 GiB or 10% of the filesystem, whichever is more) is refused, so it
# can never fill the live data volume. The live forge is never touched: no compose command, no
# connection to the live database. backup.sh's lock (BACKUP_LOCK) is held while restic reads, so a
# backup's prune never runs beside the restore. Every result, passed or failed, is mailed to
# alertEmails and written to DATA_DIR/state/restore-drill-status.json.
#
# Usage: restore-drill.sh [--help] [--json] [--keep]
#   --json  print the status JSON on stdout at the end (also when the drill failed)
#   --keep  leave the scratch directory and the PostgreSQL container for inspection (their names
#           are logged); remove them by hand afterwards
# Reads settings.env (DATA_DIR, STACK, DOMAIN, ALERT_EMAILS, POSTGRES_IMAGE, POSTGRES_MAJOR,
# AWS_ENDPOINT_URL) and stack-facts.env (AWS_REGION, BACKUP_BUCKET); the restic password from
# secrets/host/restic-password; AWS credentials from the instance role.
# Environment: RESTORE_DRILL_DIR (default DATA_DIR): where the scratch directory
#   .restore-drill-<RUN_ID> is made; RESTORE_DRILL_RESERVE_BYTES (default 1 GiB): free space to
#   leave at the least; BACKUP_LOCK, BACKUP_LOCK_WAIT_SECONDS (default 21600);
#   DRILL_POSTGRES_TIMEOUT_SECONDS (default 300); RESTIC_CACHE_DIR;
#   DRILL_STATUS_FILE (default DATA_DIR/state/restore-drill-status.json).
# Exit codes: 0 the drill passed; 1 it failed or was refused (logged, in the status, mailed);
#   2 bad usage; 4 the repository holds no complete run (mailed).
set -euo pipefail
usage() { sed -n '2,34s/^# \{0,1\}//p' "$0"; }
json=false
keep=false
for argument in "$@"; do
  case $argument in
    -h | --help) usage; exit 0 ;;
    --json) json=true ;;
    --keep) keep=true ;;
    *) usage >&2; exit 2 ;;
  esac
done
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

SUPPORT="$GITEA_STACK_DIR/scripts/backup-support.py"
STATUS_FILE=${DRILL_STATUS_FILE:-$DATA_DIR/state/restore-drill-status.json}
SNAPSHOT_HOST=${STACK:-$(hostname)}
CONTAINER=gitea-stack-restore-drill-$$
started=$(date +%s)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d)
failure=''
advice=''
log_advice="read the drill's log on the host: journalctl -u gitea-stack-restore-drill.service -n 200"
recorded=false
status_json=''
container_started=false
scratch=''
run_id='' database_id='' files_id='' age_s=0
repositories_checked=0 failed_repositories=() tables=0 rows=0 table_pairs=() restore_bytes=0

# Writes the status file and keeps the JSON for --json. $1: ok or failed.
record_status() {
  local state=$1 message=$2 name pairs=()
  recorded=true
  pairs=("state=$state" "message=$message" "host=$SNAPSHOT_HOST" "repository=${RESTIC_REPOSITORY:-}"
    "started=$started_at" "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "duration_s=$(($(date +%s) - started))"
    "backup_run_id=$run_id" "database_snapshot=$database_id" "files_snapshot=$files_id"
    "snapshot_age_s=$age_s" "restore_bytes=$restore_bytes" "repositories_checked=$repositories_checked"
    "tables=$tables" "rows=$rows" "kept=$keep" "list.failed_repositories=")
  for name in "${failed_repositories[@]}"; do pairs+=("list.failed_repositories=$name"); done
  pairs+=("${table_pairs[@]}")
  install -d -m 0700 "$(dirname "$STATUS_FILE")"
  status_json=$(python3 "$SUPPORT" write-status "$STATUS_FILE" "${pairs[@]}")
}

age_text() {
  local seconds=$1
  if [ "$seconds" -ge 86400 ]; then echo "$((seconds / 86400))d $((seconds % 86400 / 3600))h"
  elif [ "$seconds" -ge 3600 ]; then echo "$((seconds / 3600))h $((seconds % 3600 / 60))min"
  else echo "$((seconds / 60))min"; fi
}

remove_scratch() {
  if [ "$keep" = true ]; then
    if [ "$container_started" = true ]; then log "kept the PostgreSQL container $CONTAINER (docker rm -f $CONTAINER)"; fi
    if [ -n "$scratch" ]; then log "kept the scratch directory $scratch (rm -rf it when done)"; fi
    return 0
  fi
  if [ "$container_started" = true ]; then
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || log "error: could not remove the container $CONTAINER; docker rm -f it"
    container_started=false
  fi
  if [ -n "$scratch" ] && [ -d "$scratch" ]; then
    rm -rf -- "$scratch" || log "error: could not remove $scratch; remove it by hand"
  fi
}

mail_result() {
  local code=$1 subject summary repositories
  repositories="$repositories_checked checked, ${#failed_repositories[@]} failed${failed_repositories[*]:+: ${failed_repositories[*]}}"
  summary="Backup run:        ${run_id:-none}${run_id:+ (snapshots database ${database_id:0:8}, files ${files_id:0:8})}
Snapshot age:      ${run_id:+$(age_text "$age_s") when the drill started}
Repositories:      $repositories (git fsck --full)
Database:          $tables tables, $rows rows in total (pg_restore into $POSTGRES_IMAGE)
Duration:          $(($(date +%s) - started))s"
  if [ "$code" -eq 0 ]; then
    subject="restore drill passed: run:$run_id, $repositories_checked repositories, $tables tables, $rows rows"
    send_alert "$subject" <<MAIL || true
The monthly restore drill of $DOMAIN passed: the latest complete backup run was restored into
scratch space and checked, and the scratch copy was $([ "$keep" = true ] && echo kept || echo removed).

$summary
MAIL
  else
    subject="restore drill FAILED: ${failure:-restore-drill.sh stopped with exit code $code}"
    send_alert "$subject" <<MAIL || true
The monthly restore drill of $DOMAIN FAILED:
  ${failure:-restore-drill.sh stopped with exit code $code}

$summary

What to do first: ${advice:-$log_advice}
The live forge was not touched. Once fixed, run $GITEA_STACK_DIR/scripts/restore-drill.sh by hand.
MAIL
  fi
}

finish() {
  local code=$?
  stop_progress
  remove_scratch
  if [ "$recorded" = false ]; then
    if [ "$code" -eq 0 ]; then
      record_status ok "run:$run_id restores: $tables tables ($rows rows), $repositories_checked repositories sound" \
        || log "error: could not write $STATUS_FILE"
    else
      record_status failed "${failure:-restore-drill.sh stopped at an unexpected error (exit code $code); see its log}" \
        || log "error: could not write $STATUS_FILE"
    fi
  fi
  mail_result "$code"
  if [ "$json" = true ] && [ -n "$status_json" ]; then printf '%s\n' "$status_json"; fi
  rm -rf "$work"
}
trap finish EXIT
# Stopped (systemctl stop, Ctrl-C): still remove the container and the scratch directory.
trap 'exit 143' TERM
trap 'exit 130' INT

# fail [--exit CODE] [--advice TEXT] MESSAGE...
fail() {
  local code=1
  while :; do
    case $1 in
      --exit) code=$2; shift 2 ;;
      --advice) advice=$2; shift 2 ;;
      *) break ;;
    esac
  done
  failure="$*"
  log "error: $*"
  exit "$code"
}

[ -n "${BACKUP_BUCKET:-}" ] || fail "stack-facts.env names no BACKUP_BUCKET"
[ -n "${POSTGRES_IMAGE:-}" ] || fail "settings.env names no POSTGRES_IMAGE (the stack's PostgreSQL image)"
use_restic_repository "$BACKUP_BUCKET"

# No backup (and its prune) beside the restore: wait for a running one, hold its lock while restic reads.
wait_for_backup_lock "nothing was restored"

# The latest complete run.
repository_status=0
python3 "$SUPPORT" has-repository "$BACKUP_BUCKET" restic || repository_status=$?
case $repository_status in
  0) ;;
  4) fail --exit 4 --advice "check that backups run: systemctl status gitea-stack-backup.timer; journalctl -u gitea-stack-backup.service -n 200" \
       "the bucket $BACKUP_BUCKET holds no restic repository yet (no backup was ever made); nothing to restore" ;;
  *) fail "cannot reach the backup bucket $BACKUP_BUCKET; nothing was restored" ;;
esac
run_restic cat config >/dev/null \
  || fail --advice "$log_advice; fix what restic names (the bucket, the restic password secret)" \
    "restic cannot open $RESTIC_REPOSITORY (see restic's message above); nothing was restored"
run_restic snapshots --json --host "$SNAPSHOT_HOST" --tag gitea-stack >"$work/snapshots.json" \
  || fail "restic could not list the snapshots in $RESTIC_REPOSITORY"
latest_status=0
latest=$(python3 "$GITEA_STACK_DIR/scripts/restore-support.py" pick latest <"$work/snapshots.json") \
  || latest_status=$?
case $latest_status in
  0) read -r run_id _ database_id files_id age_s <<<"$latest" ;;
  4) fail --exit 4 --advice "check that backups run: systemctl status gitea-stack-backup.timer; journalctl -u gitea-stack-backup.service -n 200" \
       "$RESTIC_REPOSITORY holds no complete backup run (database and files snapshots of host $SNAPSHOT_HOST); nothing to restore" ;;
  *) fail "could not read the snapshot list of $RESTIC_REPOSITORY" ;;
esac
log "drilling run:$run_id (database ${database_id:0:8}, files ${files_id:0:8}), $(age_text "$age_s") old"

# Room for the restore, and the reserve left over, or no drill at all.
files_bytes=$(restic_restore_size "$files_id") || fail "restic could not size the files snapshot $files_id"
dump_bytes=$(restic_restore_size "$database_id") || fail "restic could not size the database snapshot $database_id"
# A restored database takes more than its dump (indexes are rebuilt, WAL is written): count it thrice.
restore_bytes=$((files_bytes + 3 * dump_bytes))
parent=${RESTORE_DRILL_DIR:-$DATA_DIR}
[ -d "$parent" ] || fail "the scratch location $parent does not exist"
available=$(df --output=avail -B1 "$parent" | tail -n 1 | tr -d ' ')
filesystem=$(df --output=size -B1 "$parent" | tail -n 1 | tr -d ' ')
reserve=${RESTORE_DRILL_RESERVE_BYTES:-1073741824}
if [ $((filesystem / 10)) -gt "$reserve" ]; then reserve=$((filesystem / 10)); fi
if [ $((restore_bytes + reserve)) -gt "$available" ]; then
  fail --advice "give the drill a filesystem with room: set RESTORE_DRILL_DIR (systemctl edit gitea-stack-restore-drill.service) to a directory with at least $(((restore_bytes + reserve) / 1048576)) MiB free, or grow the data volume (gitea-stack:dataVolumeGiB)" \
    "not enough free space in $parent for the drill: it needs $((restore_bytes / 1048576)) MiB and leaves" \
    "$((reserve / 1048576)) MiB free at the least, but only $((available / 1048576)) MiB are free; nothing was restored"
fi
log "restoring about $((restore_bytes / 1048576)) MiB into $parent ($((available / 1048576)) MiB free)"

scratch="$parent/.restore-drill-$run_id"
[ ! -e "$scratch" ] || { scratch=''; fail "$parent/.restore-drill-$run_id already exists (a kept drill?); remove it first"; }
install -d -m 0700 "$scratch" "$scratch/files" "$scratch/postgres"

# The database: a scratch container of the stack's own PostgreSQL image, no network, data in scratch.
if [ "${POSTGRES_MAJOR:-0}" -ge 18 ] 2>/dev/null; then
  mount="$scratch/postgres:/var/lib/postgresql"
else
  mount="$scratch/postgres/data:/var/lib/postgresql/data"
fi
log "starting the scratch PostgreSQL container $CONTAINER ($POSTGRES_IMAGE, no network)"
docker run --detach --rm --network none --name "$CONTAINER" --shm-size 256m \
  --security-opt no-new-privileges:true --env POSTGRES_HOST_AUTH_METHOD=trust --env POSTGRES_USER=postgres \
  --volume "$mount" "$POSTGRES_IMAGE" >/dev/null \
  || fail "could not start a PostgreSQL container of $POSTGRES_IMAGE"
container_started=true
in_postgres() { docker exec "$CONTAINER" "$@" --host=127.0.0.1 --port=5432 --username=postgres; }
deadline=$((SECONDS + ${DRILL_POSTGRES_TIMEOUT_SECONDS:-300}))
# Over TCP on its own loopback: during the image's first-start initdb only the socket is up.
until in_postgres pg_isready --quiet 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    docker logs --tail 30 "$CONTAINER" >&2 || true
    fail "the scratch PostgreSQL did not accept connections within ${DRILL_POSTGRES_TIMEOUT_SECONDS:-300}s"
  fi
  sleep 2
done
in_postgres createdb gitea || fail "could not create the database in the scratch PostgreSQL"
log "restoring the database dump of snapshot ${database_id:0:8} into the scratch PostgreSQL"
start_progress "restoring the database" "$scratch" "$restore_bytes"
set +e
run_restic dump "$database_id" /postgres/gitea.dump \
  | docker exec -i "$CONTAINER" pg_restore --host=127.0.0.1 --port=5432 --username=postgres --dbname=gitea \
    --no-owner --no-privileges --exit-on-error
statuses=("${PIPESTATUS[@]}")
set -e
stop_progress
if [ "${statuses[0]}" -ne 0 ]; then
  fail --advice "$log_advice; run check-backups.sh --subset 100 to see whether the repository is damaged" \
    "restic could not read the database dump of snapshot $database_id (exit code ${statuses[0]})"
fi
if [ "${statuses[1]}" -ne 0 ]; then
  fail --advice "$log_advice; restore the dump by hand (docs/runbooks) to see pg_restore's error in full, and compare POSTGRES_IMAGE with the image the forge ran when run:$run_id was made" \
    "pg_restore could not load the database dump of run:$run_id (exit code ${statuses[1]})"
fi

# The files: every byte of them through restic, then git's own check of every repository.
log "restoring the files snapshot ${files_id:0:8} into $scratch/files"
start_progress "restoring the files" "$scratch" "$restore_bytes"
run_restic restore "$files_id" --target "$scratch/files" >&2 \
  || fail --advice "$log_advice; run check-backups.sh --subset 100 to see whether the repository is damaged" \
    "restic could not restore the files snapshot $files_id"
stop_progress
exec {backup_lock_fd}>&-  # restic is done: backups may run again

log "counting the rows of every table"
# One exact count(*) a table, in one query (query_to_xml runs each count).
in_postgres psql --dbname=gitea --no-psqlrc --tuples-only --no-align --field-separator=$'\t' --command "
  SELECT format('%I.%I', table_schema, table_name),
         (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name),
                                             false, true, '')))[1]::text::bigint
    FROM information_schema.tables
   WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
   ORDER BY 1" >"$work/counts" || fail "could not count the rows of the restored database"
while IFS=$'\t' read -r table count; do
  [ -n "$table" ] || continue
  tables=$((tables + 1))
  rows=$((rows + count))
  table_pairs+=("table.$table=$count")
done <"$work/counts"
log "database: $tables tables, $rows rows"
[ "$tables" -gt 0 ] || fail --advice "$log_advice; check that backup.sh dumps the gitea database" \
  "the restored database of run:$run_id has no tables"

repositories="$scratch/files$DATA_DIR/gitea/data/git/repositories"
printf '[safe]\n\tdirectory = *\n' >"$work/gitconfig"  # the restored repositories belong to Gitea's user
if [ -d "$repositories" ]; then
  while IFS= read -r -d '' repository; do
    name=${repository#"$repositories/"}
    repositories_checked=$((repositories_checked + 1))
    if ! GIT_CONFIG_GLOBAL="$work/gitconfig" GIT_CONFIG_NOSYSTEM=1 \
      git -C "$repository" fsck --full --no-progress --no-dangling >"$work/fsck.log" 2>&1; then
      failed_repositories+=("$name")
      log "error: git fsck --full failed on $name:"
      head -n 20 "$work/fsck.log" >&2
    fi
    if [ $((repositories_checked % 100)) -eq 0 ]; then log "checked $repositories_checked repositories"; fi
  done < <(find "$repositories" -mindepth 2 -maxdepth 2 -type d -name '*.git' -print0 | sort -z)
else
  log "the restored files hold no $DATA_DIR/gitea/data/git/repositories (a forge without repositories?)"
fi
log "repositories: $repositories_checked checked, ${#failed_repositories[@]} failed"
if [ ${#failed_repositories[@]} -gt 0 ]; then
  fail --advice "run git fsck --full on the live copy of each named repository (cd $GITEA_STACK_DIR && docker compose -p gitea-stack exec gitea git -C /var/lib/gitea/git/repositories/<owner>/<name>.git fsck --full); if the live one is sound, make a fresh backup (systemctl start gitea-stack-backup.service): the damage is only in that run; if not, restore the repository from an older run (docs/runbooks)" \
    "git fsck --full failed on ${#failed_repositories[@]} of $repositories_checked restored repositories:" \
    "${failed_repositories[*]}"
fi
log "done: run:$run_id restores: $tables tables ($rows rows), $repositories_checked repositories sound"
