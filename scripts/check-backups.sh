#!/usr/bin/env bash
# Checks the stack's restic repository (s3:<endpoint>/<BACKUP_BUCKET>/restic) with
# `restic check --read-data-subset <PERCENT>%`: the repository's structure (index, snapshots, trees)
# in full, and the contents of a random PERCENT of the pack files, downloaded and verified against
# their hashes. Weekly runs read a new random subset each time, so damage in the bucket is found
# while older snapshots still hold the same data. Holds backup.sh's lock (BACKUP_LOCK) for the
# whole check, waiting for a running backup to end, so the two never run side by side.
# Writes DATA_DIR/state/backup-check-status.json (state ok|failed, message, started, finished,
# duration_s, subset; last_success is kept from the previous file when a check fails; a failed
# check adds damaged_packs and affected_snapshots). A failed check mails alertEmails: what broke,
# which snapshots use the damaged pack files, and what to do first.
#
# Usage: check-backups.sh [--help] [--json] [--subset PERCENT]
#   --json            print the status JSON on stdout at the end (also when the check failed)
#   --subset PERCENT  share of the pack files to read and verify, 1-100 (default 10)
# Reads settings.env (DATA_DIR, STACK, AWS_ENDPOINT_URL, ALERT_EMAILS) and stack-facts.env
# (AWS_REGION, BACKUP_BUCKET) as backup.sh does; the restic password from
# secrets/host/restic-password; AWS credentials from the instance role.
# Environment: RESTIC_CACHE_DIR (default /var/cache/gitea-stack/restic);
#   BACKUP_LOCK (default /run/lock/gitea-stack-backup.lock), waited for up to
#   BACKUP_LOCK_WAIT_SECONDS (default 21600);
#   CHECK_STATUS_FILE (default DATA_DIR/state/backup-check-status.json).
# Exit codes: 0 the repository is sound; 1 the check found damage or could not run (logged, in the
#   status file and mailed); 2 bad usage.
set -euo pipefail
usage() { sed -n '2,28s/^# \{0,1\}//p' "$0"; }
json=false
subset=10
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --json) json=true ;;
    --subset)
      [ $# -ge 2 ] || { usage >&2; exit 2; }
      subset=$2
      shift
      ;;
    --subset=*) subset=${1#--subset=} ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
subset=${subset%\%}
if ! [[ $subset =~ ^[1-9][0-9]*$ ]] || [ "$subset" -gt 100 ]; then
  echo "check-backups.sh: --subset takes a whole percentage from 1 to 100, got '$subset'" >&2
  usage >&2
  exit 2
fi
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

SUPPORT="$GITEA_STACK_DIR/scripts/backup-support.py"
STATUS_FILE=${CHECK_STATUS_FILE:-$DATA_DIR/state/backup-check-status.json}
started=$(date +%s)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d)
failure=''
damage=''
recorded=false
status_json=''

# Writes the status file and keeps the JSON for --json. $1: ok or failed; then extra KEY=VALUE pairs.
record_status() {
  local state=$1 message=$2
  shift 2
  recorded=true
  install -d -m 0700 "$(dirname "$STATUS_FILE")"
  status_json=$(python3 "$SUPPORT" write-status "$STATUS_FILE" "state=$state" "message=$message" \
    "subset=$subset%" "host=${STACK:-$(hostname)}" "repository=${RESTIC_REPOSITORY:-}" \
    "started=$started_at" "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "duration_s=$(($(date +%s) - started))" "$@")
}

mail_failure() {
  send_alert "backup check FAILED: ${failure:-check-backups.sh stopped with exit code $1}" <<MAIL || true
The weekly check of the backups of $DOMAIN failed:
  ${failure:-check-backups.sh stopped with exit code $1}
Repository: ${RESTIC_REPOSITORY:-s3 bucket ${BACKUP_BUCKET:-?}}; pack files read: $subset%.
${damage:+
What it means: restic found damaged or missing pack files. Every snapshot named below uses
data from them and cannot be restored in full; the snapshots not named are unaffected.
$damage
}
What to do first: read the check's log on the host:
  journalctl -u gitea-stack-backup-check.service -n 200
If restic names damaged or missing pack files (new backups do not store that data again: restic's
index says it has it), repair the repository:
  1. put the pack's previous version back if the bucket kept one (versioning keeps overwritten and
     deleted objects for backupRetentionDays): aws s3api list-object-versions --bucket $BACKUP_BUCKET
     --prefix restic/data/<first two characters>/<pack id>; copy the last good version over it and
     run this check again with --subset 100;
  2. if there is none: delete the damaged pack object, run \`restic repair index\` (restic 0.14:
     \`restic rebuild-index\`), then a backup
     (systemctl start gitea-stack-backup.service): it stores again whatever the live forge still
     has; forget the snapshots that \`restic check\` still finds incomplete (restic forget <id>).
docs/runbooks/restore.md restores from a run that is still whole. If the check could not run
(bucket, password, lock), fix that and run $GITEA_STACK_DIR/scripts/check-backups.sh by hand.
MAIL
}

finish() {
  local code=$?
  if [ "$recorded" = false ] && [ "$code" -ne 0 ]; then
    record_status failed "${failure:-check-backups.sh stopped at an unexpected error (exit code $code); see its log}" \
      || log "error: could not write $STATUS_FILE"
  fi
  if [ "$code" -ne 0 ]; then mail_failure "$code"; fi
  if [ "$json" = true ] && [ -n "$status_json" ]; then printf '%s\n' "$status_json"; fi
  rm -rf "$work"
}
trap finish EXIT

fail() {
  failure="$*"
  log "error: $*"
  exit 1
}

[ -n "${BACKUP_BUCKET:-}" ] || fail "stack-facts.env names no BACKUP_BUCKET"
use_restic_repository "$BACKUP_BUCKET"

# Never beside a backup: wait for a running one to end (a check that skipped would check nothing).
wait_for_backup_lock "nothing was checked"

log "checking $RESTIC_REPOSITORY, reading $subset% of the pack files"
run_restic cat config >/dev/null \
  || fail "restic cannot open $RESTIC_REPOSITORY (see restic's message above); nothing was checked"
# A run killed half-way leaves its restic lock in the bucket; no backup runs now (we hold its lock).
run_restic unlock >&2 || fail "restic could not remove stale locks from $RESTIC_REPOSITORY"

# restic's own progress (one line a pack read, at most every PROGRESS_INTERVAL_SECONDS) goes to
# stderr as it comes; its messages are kept to name what is damaged.
status=0
RESTIC_PROGRESS_FPS=$(python3 -c 'import sys; print(1 / max(float(sys.argv[1]), 1))' \
  "${PROGRESS_INTERVAL_SECONDS:-30}") \
  run_restic check --read-data-subset "$subset%" 2>&1 | tee "$work/check.log" >&2 || status=$?
if [ "$status" -ne 0 ]; then
  pairs=()
  # restic ends a check that found damage so; any other failure means it could not check.
  if grep -q 'repository contains errors' "$work/check.log"; then
    failure="restic check found errors in $RESTIC_REPOSITORY (exit code $status)"
    damage=$(python3 "$SUPPORT" describe-damage "$work/check.log" "$work/damage.pairs" -- \
      restic "${restic_options[@]}") || damage="(could not work out which snapshots are affected)"
    if [ -f "$work/damage.pairs" ]; then mapfile -t pairs <"$work/damage.pairs"; fi
  else
    failure="restic check could not check $RESTIC_REPOSITORY (exit code $status; see its message above)"
  fi
  log "error: $failure"
  if [ -n "$damage" ]; then printf '%s\n' "$damage" >&2; fi
  record_status failed "$failure" "${pairs[@]}"
  exit 1
fi
record_status ok "read $subset% of the pack files in $(($(date +%s) - started))s: no errors"
log "done: no errors ($subset% of the pack files read); status in $STATUS_FILE"
