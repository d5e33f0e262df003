#!/usr/bin/env bash
# Restores the forge, or a part of it, from a backup run of backup.sh (restic in S3).
#
# Usage: restore.sh --list [--json] [SOURCE]
#        restore.sh [--snapshot RUN] [--force] [--no-start] [--json] [SOURCE]
#        restore.sh [--snapshot RUN] --extract PATH --to DIR [--force] [SOURCE]
#        restore.sh --verify-source [--json] [SOURCE]
#   --list           the runs in the repository, newest first (an incomplete run lacks a snapshot)
#   --snapshot RUN   latest (default: the newest complete run), a run id, or a snapshot id
#   (no mode)        the whole forge: files and database are restored into staging copies
#                    (DATA_DIR/.restore-<run>, database gitea_restore), then Gitea is stopped, the
#                    copies swapped in, Gitea started and waited for; what was there is KEPT as
#                    DATA_DIR/before-restore-<UTC>/ and database gitea_before_restore_<UTC>
#   --force          restore although the target holds data (what was there is kept, as above)
#   --no-start       leave Gitea stopped afterwards (deploy.sh, which starts it itself)
#   --extract PATH   only PATH (below Gitea's data directory, e.g. git/repositories/alice/x.git,
#   --to DIR         or absolute as backed up) into DIR; the live forge is not touched
#   --verify-source  only open the repository and name its latest complete run
#   --json           the report (or the list) as JSON on stdout
# SOURCE: another stack's repository (disaster recovery), read without locking it:
#   --bucket NAME [--region REGION] --password-file FILE
#   Default: this stack's (BACKUP_BUCKET, secrets/host/restic-password).
# Reads settings.env (DATA_DIR, AWS_ENDPOINT_URL) and stack-facts.env (AWS_REGION, BACKUP_BUCKET).
# Environment: RESTIC_CACHE_DIR; GITEA_STACK_LOCK, LOCK_WAIT_SECONDS (lib.sh: the lock shared with
#   deploy.sh and backup.sh); HEALTH_TIMEOUT_SECONDS (default 600); PROGRESS_INTERVAL_SECONDS
#   (default 30) between progress lines; RESTORE_SPACE_MARGIN_MIB (default 1024) kept free.
# Exit codes: 0 restored (or listed, extracted, verified); 1 a step failed: the live forge is as it
#   was (the message says what to do); 2 bad usage; 4 no such run (or no complete run at all);
#   5 the target holds data and --force was not given: nothing was changed.
set -euo pipefail
usage() { sed -n '2,33s/^# \{0,1\}//p' "$0"; }
bad_usage() {
  printf 'restore.sh: %s\n' "$*" >&2
  usage >&2
  exit 2
}

mode=restore json=false force=false start=true wanted=latest extract='' extract_to=''
source_bucket='' source_region='' source_password=''
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --list) mode=list ;;
    --verify-source) mode=verify ;;
    --json) json=true ;;
    --force) force=true ;;
    --no-start) start=false ;;
    --snapshot | --extract | --to | --bucket | --region | --password-file)
      if [ $# -lt 2 ] || [ -z "$2" ]; then bad_usage "$1 needs a value"; fi
      case $1 in
        --snapshot) wanted=$2 ;;
        --extract) extract=$2; mode=extract ;;
        --to) extract_to=$2 ;;
        --bucket) source_bucket=$2 ;;
        --region) source_region=$2 ;;
        --password-file) source_password=$2 ;;
      esac
      shift
      ;;
    *) bad_usage "unknown argument: $1" ;;
  esac
  shift
done
if [ "$mode" = extract ] && [ -z "$extract_to" ]; then bad_usage "--extract needs --to DIR"; fi
if [ -n "$extract_to" ] && [ "$mode" != extract ]; then bad_usage "--to goes with --extract"; fi
if [ -n "$source_bucket$source_region$source_password" ] && { [ -z "$source_bucket" ] || [ -z "$source_password" ]; }; then
  bad_usage "another stack's repository needs --bucket and --password-file"
fi

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"
SUPPORT="$GITEA_STACK_DIR/scripts/restore-support.py"
failure=''  # what went wrong, for the failure mail
die() {
  failure="$*"
  log "error: $*"
  exit 1
}
# Ends with exit code $1 (4 or 5) after logging the rest: nothing was changed.
refuse() {
  local code=$1
  shift
  failure="$*"
  log "$*"
  exit "$code"
}
GITEA_DATA="$DATA_DIR/gitea/data"
# The Gitea secrets the data depends on: what it encrypted (2FA, credentials) and the tokens it signed.
DATA_BOUND_SECRETS=(gitea-secret-key gitea-internal-token)
# Files of this host's own monitoring in DATA_DIR/state: the live ones stay, not the backed-up ones.
HOST_STATUS_FILES=(backup-status.json backup-check-status.json restore-drill-status.json)

if [ -n "$source_bucket" ]; then
  [ -r "$source_password" ] || die "cannot read the password file $source_password"
  use_restic_repository "$source_bucket" "$source_region" "$source_password"
  restic_options+=(--no-lock)  # another stack's bucket is read-only to this host
else
  [ -n "${BACKUP_BUCKET:-}" ] || die "stack-facts.env names no BACKUP_BUCKET"
  use_restic_repository "$BACKUP_BUCKET"
fi

# The run named by --snapshot: sets run_id, run_time, database_snapshot, files_snapshot.
resolve_run() {
  local snapshots status=0 picked
  snapshots=$(run_restic snapshots --json --tag gitea-stack) \
    || die "restic cannot read $RESTIC_REPOSITORY (see restic's message above: a wrong password, a missing" \
      "repository or no access to the bucket); nothing was changed"
  picked=$(python3 "$SUPPORT" pick "$wanted" <<<"$snapshots") || status=$?
  case $status in
    0) read -r run_id run_time database_snapshot files_snapshot _ <<<"$picked" ;;
    4) refuse 4 "no run '$wanted' in $RESTIC_REPOSITORY; nothing was changed (restore.sh --list shows its runs)" ;;
    *) die "run '$wanted' cannot be restored (see above); nothing was changed" ;;
  esac
}

# psql as the cluster's superuser in the postgres container; the query is $1, the database $2.
sql() {
  compose exec -T postgres psql --no-psqlrc --quiet --tuples-only --no-align --set=ON_ERROR_STOP=1 \
    --username=postgres --dbname="${2:-postgres}" --command="$1"
}

# Whether the target holds a forge: tables in the gitea database, or repositories on the volume.
target_holds_data() {
  local tables
  tables=$(sql "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'" gitea 2>/dev/null || echo 0)
  [ "${tables:-0}" -gt 0 ] && return 0
  [ -d "$GITEA_DATA/git/repositories" ] && [ -n "$(ls -A "$GITEA_DATA/git/repositories")" ]
}

# Fails unless the data volume has room for the run's files, the dump twice (the staged database
# and its indexes) and the margin, before anything is written.
check_room() {
  local sizes files_bytes dump_bytes free_bytes needed
  sizes=$(mktemp -d)
  # Both sizes at once: each restic start pays the key's KDF.
  restic_restore_size "$files_snapshot" >"$sizes/files" &
  restic_restore_size "$database_snapshot" >"$sizes/database" || true
  wait $! || true
  files_bytes=$(<"$sizes/files") dump_bytes=$(<"$sizes/database")
  rm -rf "$sizes"
  [ -n "$files_bytes" ] || die "restic could not size the files snapshot $files_snapshot; nothing was changed"
  [ -n "$dump_bytes" ] || die "restic could not size the database snapshot $database_snapshot; nothing was changed"
  free_bytes=$(($(df --output=avail -B1 "$DATA_DIR" | tail -n 1)))
  needed=$((files_bytes + 2 * dump_bytes + ${RESTORE_SPACE_MARGIN_MIB:-1024} * 1048576))
  if [ "$free_bytes" -lt "$needed" ]; then
    die "the data volume has $((free_bytes / 1048576)) MiB free, but restoring run $run_id needs about" \
      "$((needed / 1048576)) MiB (its files, twice its database dump, and a margin); nothing was changed." \
      "Grow the volume (gitea-stack:dataVolumeGiB, then pulumi up) or free space, then run restore.sh again"
  fi
}

# restic restore of the files snapshot into $1, with progress; $2... more restic arguments.
restore_files_into() {
  local target=$1 status=0
  shift
  mkdir -p "$target"
  start_progress "restoring files of run $run_id" "$target"
  run_restic restore "$files_snapshot" --target "$target" "$@" >&2 || status=$?
  stop_progress
  return "$status"
}

list_runs() {
  local snapshots arguments=()
  snapshots=$(run_restic snapshots --json --tag gitea-stack) \
    || die "restic cannot read $RESTIC_REPOSITORY (see restic's message above)"
  if [ "$json" = true ]; then arguments=(--json); fi
  if [ "$json" = false ]; then printf '%-31s %-20s %-9s %-9s %s\n' RUN TIME DATABASE FILES STATE; fi
  python3 "$SUPPORT" runs "${arguments[@]}" <<<"$snapshots" \
    | if [ "$json" = true ]; then cat; else awk '{ printf "%-31s %-20s %-9.8s %-9.8s %s\n", $1, $2, $3, $4, $5 }'; fi
}

extract_path() {
  local path=$extract inside found
  case $path in /*) ;; *) path="$GITEA_DATA/${path#./}" ;; esac
  path=${path%/}
  inside="${extract_to%/}$path"
  case "$(realpath -m "$extract_to")/" in
    "$(realpath -m "$DATA_DIR")"/gitea/* | "$(realpath -m "$DATA_DIR")"/state/*)
      die "--to $extract_to is inside the live forge's data; pick a directory outside $DATA_DIR/gitea and $DATA_DIR/state" ;;
  esac
  if [ -e "$inside" ] && [ "$force" = false ]; then
    refuse 5 "$inside already exists; nothing was changed (--force restores over it)"
  fi
  resolve_run
  found=$(run_restic ls "$files_snapshot" "$path" 2>/dev/null | grep -cxF "$path" || true)
  if [ "$found" -eq 0 ]; then
    refuse 4 "run $run_id has no $path (paths are below $GITEA_DATA, or absolute as backed up); nothing was changed"
  fi
  log "extracting $path of run $run_id ($run_time)"
  restore_files_into "$extract_to" --include "$path" || die "restic could not restore $path into $extract_to"
  log "done: $inside"
  if [ "$json" = true ]; then python3 "$SUPPORT" json "run_id=$run_id" "path=$path" "restored=$inside"; fi
}

# --- the whole forge ---------------------------------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
KEPT_DATABASE="gitea_before_restore_${STAMP,,}"
KEPT_DIR="$DATA_DIR/before-restore-$STAMP"
STAGE_DATABASE=gitea_restore
swapped=()  # what swap_in_staged changed, for undo_swap
kept_database=''  # set once the live database was renamed aside
files_pid=''  # the restic restore staging the files
gitea_stopped=false

stage_database() {
  local statuses
  sql "DROP DATABASE IF EXISTS $STAGE_DATABASE" >/dev/null
  sql "CREATE DATABASE $STAGE_DATABASE OWNER gitea" >/dev/null \
    || die "could not create the staging database $STAGE_DATABASE (does the role gitea exist? deploy.sh makes it)"
  log "restoring the database dump of run $run_id into $STAGE_DATABASE"
  set +e
  run_restic dump "$database_snapshot" /postgres/gitea.dump \
    | python3 "$SUPPORT" meter "restoring the database dump of run $run_id" \
    | compose exec -T postgres pg_restore --username=postgres --dbname="$STAGE_DATABASE" --role=gitea \
      --no-owner --no-privileges --exit-on-error
  statuses=("${PIPESTATUS[@]}")
  set -e
  if [ "${statuses[0]}" -ne 0 ] || [ "${statuses[1]}" -ne 0 ] || [ "${statuses[2]}" -ne 0 ]; then
    return 1
  fi
}

# The staged files, database and data-bound secrets take the live ones' places; the live ones are
# kept aside. Each step is recorded in `swapped`, so undo_swap can put everything back.
swap_in_staged() {
  local stage=$1 name
  mkdir -p "$KEPT_DIR"
  sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ('gitea', '$STAGE_DATABASE') AND pid <> pg_backend_pid()" >/dev/null
  if [ -n "$(sql "SELECT 1 FROM pg_database WHERE datname = 'gitea'")" ]; then
    sql "ALTER DATABASE gitea RENAME TO $KEPT_DATABASE" >/dev/null
    swapped+=(database-kept)
    kept_database=$KEPT_DATABASE
  fi
  sql "ALTER DATABASE $STAGE_DATABASE RENAME TO gitea" >/dev/null
  swapped+=(database-restored)
  for name in gitea state; do
    if [ -e "$DATA_DIR/$name" ]; then
      mv "$DATA_DIR/$name" "$KEPT_DIR/$name"
      swapped+=("kept:$name")
    fi
    mv "$stage$DATA_DIR/$name" "$DATA_DIR/$name"
    swapped+=("restored:$name")
  done
  # This host's own monitoring history and its state markers stay as they were.
  for name in "${HOST_STATUS_FILES[@]}"; do
    rm -f "$DATA_DIR/state/$name"
    if [ -e "$KEPT_DIR/state/$name" ]; then cp -p "$KEPT_DIR/state/$name" "$DATA_DIR/state/$name"; fi
  done
  install_data_bound_secrets "$stage"
}

# The restored forge's secret key and internal token: kept with its data (DATA_DIR/state/gitea-secrets,
# which deploy.sh prefers to the stack's own secrets) and put where Gitea reads them.
install_data_bound_secrets() {
  local stage=$1 name source
  install -d -m 0700 "$DATA_DIR/state/gitea-secrets"
  for name in "${DATA_BOUND_SECRETS[@]}"; do
    source="$stage$GITEA_STACK_DIR/secrets/gitea/$name"
    if [ ! -s "$source" ]; then
      log "warning: run $run_id holds no $name; Gitea keeps this stack's own"
      continue
    fi
    install -m 0600 "$source" "$DATA_DIR/state/gitea-secrets/$name"
    if [ -d "$GITEA_STACK_DIR/secrets/gitea" ]; then
      if [ ! -e "$KEPT_DIR/secrets-gitea-$name" ] && [ -e "$GITEA_STACK_DIR/secrets/gitea/$name" ]; then
        cp -p "$GITEA_STACK_DIR/secrets/gitea/$name" "$KEPT_DIR/secrets-gitea-$name"
        swapped+=("secret:$name")
      fi
      install -o 1000 -g 1000 -m 0600 "$source" "$GITEA_STACK_DIR/secrets/gitea/$name"
    fi
  done
  if [ -s "$DATA_DIR/state/gitea-secrets/gitea-secret-key" ]; then
    sha256sum <"$DATA_DIR/state/gitea-secrets/gitea-secret-key" | cut -d ' ' -f 1 >"$DATA_DIR/state/gitea-secret-key.sha256"
  fi
}

# Puts back what swap_in_staged changed, newest first.
undo_swap() {
  local index step
  sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ('gitea', '$KEPT_DATABASE') AND pid <> pg_backend_pid()" >/dev/null
  for ((index = ${#swapped[@]} - 1; index >= 0; index--)); do
    step=${swapped[index]}
    case $step in
      secret:*)
        install -o 1000 -g 1000 -m 0600 "$KEPT_DIR/secrets-gitea-${step#secret:}" \
          "$GITEA_STACK_DIR/secrets/gitea/${step#secret:}"
        rm -f "$KEPT_DIR/secrets-gitea-${step#secret:}"
        ;;
      restored:*) rm -rf "${DATA_DIR:?}/${step#restored:}" ;;
      kept:*) mv "$KEPT_DIR/${step#kept:}" "$DATA_DIR/${step#kept:}" ;;
      database-restored) sql "ALTER DATABASE gitea RENAME TO $STAGE_DATABASE" >/dev/null ;;
      database-kept)
        sql "ALTER DATABASE $KEPT_DATABASE RENAME TO gitea" >/dev/null
        kept_database=''
        ;;
    esac
  done
  swapped=()
  rmdir "$KEPT_DIR" 2>/dev/null || true
}

# On any failure: the staging copies go, a half-made swap is undone, Gitea runs again if it ran,
# and the alert addresses get a mail.
finish() {
  local code=$?
  set +e
  # A restic still staging files when the database failed stops before its directory goes.
  if [ -n "${files_pid:-}" ] && kill -0 "$files_pid" 2>/dev/null; then
    pkill -P "$files_pid" 2>/dev/null
    kill "$files_pid" 2>/dev/null
    wait "$files_pid" 2>/dev/null
  fi
  if [ "$code" -ne 0 ] && [ "$mode" = restore ]; then
    if [ ${#swapped[@]} -gt 0 ]; then
      log "putting the live forge back as it was"
      # Gitea may already run on the restored data: its connections would block the renames.
      compose stop gitea >/dev/null 2>&1
      undo_swap || log "error: could not undo the swap; the previous forge is in $KEPT_DIR and database $KEPT_DATABASE"
    fi
    sql "DROP DATABASE IF EXISTS $STAGE_DATABASE" >/dev/null 2>&1
    if [ "$gitea_stopped" = true ]; then compose up --detach gitea >/dev/null 2>&1; fi
  fi
  if [ -n "${stage:-}" ]; then rm -rf "$stage"; fi
  if [ "$code" -ne 0 ]; then mail_failure "$code"; fi
  exit "$code"
}

mail_failure() {
  local what="restore of run ${run_id:-$wanted}" kept=''
  if [ "$mode" = extract ]; then what="extract of $extract from run ${run_id:-$wanted}"; fi
  if [ ${#swapped[@]} -gt 0 ]; then kept="The previous forge is in $KEPT_DIR and database $KEPT_DATABASE."; fi
  send_alert "$what FAILED: ${failure:-restore.sh stopped with exit code $1}" <<MAIL
The $what on $DOMAIN from $RESTIC_REPOSITORY failed (exit code $1):
  ${failure:-restore.sh stopped at an unexpected error; see its output}
${kept:-The live forge is as it was: nothing of it was changed.}

What to do first: read the message above and restore.sh's output; restore.sh --list shows the runs
it can restore. Fix what it names (the run, free space, the password, --force for a target that
holds data), then run restore.sh again. The runbook: docs/runbooks/restore.md.
MAIL
}

count_repositories() {
  if [ -d "$GITEA_DATA/git/repositories" ]; then
    find "$GITEA_DATA/git/repositories" -mindepth 2 -maxdepth 2 -type d -name '*.git' | wc -l
  else
    echo 0
  fi
}

# "TABLES ROWS" of the gitea database, rows counted exactly.
count_tables_and_rows() {
  sql "SELECT count(*), coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, tablename), false, true, '')))[1]::text::bigint), 0) FROM pg_tables WHERE schemaname = 'public'" gitea \
    | tr '|' ' '
}

restore_forge() {
  local started=$SECONDS tables rows repositories database_status files_status
  hold_lock
  resolve_run
  if target_holds_data && [ "$force" = false ]; then
    refuse 5 "the target holds a forge (tables in the gitea database or repositories in $GITEA_DATA);" \
      "nothing was changed. restore.sh --force restores over it and keeps what is there aside"
  fi
  check_room
  stage="$DATA_DIR/.restore-$run_id"
  rm -rf "$stage"
  log "restoring run $run_id ($run_time) from $RESTIC_REPOSITORY"
  # Files and database are staged side by side: restic writes files while PostgreSQL loads the dump.
  restore_files_into "$stage" --include "$DATA_DIR/gitea" --include "$DATA_DIR/state" \
    --include "$GITEA_STACK_DIR/secrets/gitea" &
  files_pid=$!
  database_status=0 files_status=0
  stage_database || database_status=$?
  wait "$files_pid" || files_status=$?
  if [ "$files_status" -ne 0 ]; then
    die "restic could not restore the files of run $run_id (see its message above); the live forge is as it was"
  fi
  if [ ! -d "$stage$DATA_DIR/gitea" ] || [ ! -d "$stage$DATA_DIR/state" ]; then
    die "run $run_id holds no $DATA_DIR/gitea or $DATA_DIR/state (was it backed up with another DATA_DIR?);" \
      "the live forge is as it was"
  fi
  if [ "$database_status" -ne 0 ]; then
    die "the database dump of run $run_id could not be restored (see the message above); the live forge is as it was"
  fi
  if [ -n "$(compose ps --quiet gitea 2>/dev/null)" ]; then
    log "stopping Gitea"
    gitea_stopped=true
    compose stop gitea >/dev/null || die "could not stop Gitea; the live forge is as it was"
  fi
  swap_in_staged "$stage"
  if [ "$start" = true ]; then
    log "starting Gitea on the restored data"
    compose up --detach gitea >/dev/null || die "could not start Gitea on the restored data"
    wait_until_healthy gitea
  fi
  swapped=()  # done: nothing to undo any more
  gitea_stopped=false
  read -r tables rows <<<"$(count_tables_and_rows)"
  repositories=$(count_repositories)
  log "done: run $run_id restored: $repositories repositories, $tables tables, $rows rows."
  if [ -n "$kept_database" ] || [ -d "$KEPT_DIR" ]; then
    log "what was there is kept: database ${kept_database:-(none)} and $KEPT_DIR; remove them when satisfied"
  fi
  if [ "$start" = true ]; then
    log "next: in Site Administration, run 'Sync missed branches from git data to databases' and" \
      "'Sync tags from git data to database', then take a fresh backup (backup.sh)"
  fi
  if [ "$json" = true ]; then
    python3 "$SUPPORT" json "run_id=$run_id" "run_time=$run_time" "database_snapshot=$database_snapshot" \
      "files_snapshot=$files_snapshot" "repositories=$repositories" "tables=$tables" "rows=$rows" \
      "kept_database=$kept_database" "kept_directory=$([ -d "$KEPT_DIR" ] && echo "$KEPT_DIR")" \
      "started=$([ "$start" = true ] && echo true || echo false)" "duration_s=$((SECONDS - started))"
  fi
}

if [ "$mode" = restore ] || [ "$mode" = extract ]; then trap finish EXIT; fi
case $mode in
  list) list_runs ;;
  verify)
    resolve_run
    log "$RESTIC_REPOSITORY opens; its latest complete run is $run_id ($run_time)"
    if [ "$json" = true ]; then python3 "$SUPPORT" json "run_id=$run_id" "run_time=$run_time"; fi
    ;;
  extract) extract_path ;;
  restore) restore_forge ;;
esac
