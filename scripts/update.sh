#!/usr/bin/env bash
# Applies a new image to one service of the forge so that no update can leave the team without it:
# under the global lock, pull the image (nothing changes if that fails); a backup first (backup.sh;
# the update is abandoned if it fails) and, for gitea, a dump of its database and a copy of app.ini;
# record the running image; recreate that service alone; wait for it to be healthy. If it is not
# healthy in time, roll back to the recorded image and, for gitea, restore the database from the
# dump (Gitea migrates its schema on start, one way). The outcome is mailed: failures and rollbacks
# always, updates an operator asked for always, the weekly automatic ones only when they fail.
#
# Policy (images.conf, from versions.UPDATE_POLICY): auto services (nginx, certbot, diun,
# docker-socket-proxy) may be updated by the weekly timer (--auto) and, with --to, to any tag of
# their update line (the tags Diun reports); gitea and postgres only with --yes or by a new tag in
# the stack config (deploy.sh runs this script for it). An image applied here that differs from the
# stack config's is kept in DATA_DIR/state/images.conf (the data volume) until the stack config
# names the same or a newer tag.
#
# Usage: update.sh [--help] [--dry-run] [--yes] [--json] [--to TAG | --image REFERENCE] SERVICE
#        update.sh [--dry-run] [--json] --auto
#   SERVICE        postgres, gitea, nginx, certbot, diun or docker-socket-proxy
#   --to TAG       the tag to move to (same repository); without it, the service's current tag is
#                  pulled again and applied if it now names another image (a rebuilt base image)
#   --image REF    a full image reference instead (deploy.sh passes the stack config's new image)
#   --yes          needed for gitea and postgres, and for a tag outside an auto service's line
#   --auto         every auto service, its current tag pulled again (the weekly timer)
#   --dry-run      print what would happen and change nothing
#   --json         print the outcome as JSON on stdout (--auto: one line per service)
# Environment: UPDATE_HEALTH_TIMEOUT_SECONDS (default 300) how long the new image has to become
#   healthy; UPDATE_SETTLE_SECONDS (default 10) how long a service without a healthcheck must keep
#   running; UPDATE_LOCK_WAIT_SECONDS (default 0; --auto: 600) how long to wait for another job;
#   UPDATE_STATUS_FILE (default DATA_DIR/state/update-status.json).
# Exit codes: 0 updated, or nothing new to apply; 1 the new image was not healthy: rolled back, the
#   previous image serves again; 2 bad usage or input: nothing changed; 3 another gitea-stack job
#   is running: nothing changed; 4 the image could not be pulled: nothing changed; 5 the
#   pre-update backup or dump failed: nothing changed; 6 the rollback failed too: the service is
#   down (the mail says what to do first). With --auto, the highest of the services' codes.
set -euo pipefail
usage() { sed -n '2,37s/^# \{0,1\}//p' "$0"; }
bad_usage() {
  printf 'update.sh: %s\n' "$1" >&2
  echo "Run update.sh --help for the usage." >&2
  exit 2
}

dry_run=false yes=false json=false auto=false to_tag='' to_image='' service=''
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=true ;;
    --yes) yes=true ;;
    --json) json=true ;;
    --auto) auto=true ;;
    --to) [ $# -ge 2 ] || bad_usage "--to needs a tag"; to_tag=$2; shift ;;
    --image) [ $# -ge 2 ] || bad_usage "--image needs an image reference"; to_image=$2; shift ;;
    -*) bad_usage "unknown option $1" ;;
    *) [ -z "$service" ] || bad_usage "one service at a time (got $service and $1)"; service=$1 ;;
  esac
  shift
done
if [ "$auto" = true ]; then
  [ -z "$service$to_tag$to_image" ] || bad_usage "--auto takes no service, --to or --image"
else
  [ -n "$service" ] || bad_usage "name the service to update"
  [ -z "$to_tag" ] || [ -z "$to_image" ] || bad_usage "--to and --image are two ways to say the same: give one"
fi

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

STATUS_FILE=${UPDATE_STATUS_FILE:-$DATA_DIR/state/update-status.json}
PRE_UPDATE_DIR=$DATA_DIR/state/pre-update
HEALTH_TIMEOUT=${UPDATE_HEALTH_TIMEOUT_SECONDS:-300}
SETTLE_SECONDS=${UPDATE_SETTLE_SECONDS:-10}
# Exit codes, as documented above.
ROLLED_BACK=1 BAD_INPUT=2 BUSY=3 PULL_FAILED=4 BACKUP_FAILED=5 ROLLBACK_FAILED=6

services_in_config() { awk '!/^#/ && NF { print $1 }' "$GITEA_STACK_DIR/images.conf"; }
policy_of() { awk -v service="$1" '$1 == service { print $3 }' "$GITEA_STACK_DIR/images.conf"; }
update_line_of() { awk -v service="$1" '$1 == service { print $4 }' "$GITEA_STACK_DIR/images.conf"; }
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# Services that run as a container (certbot runs only on demand: `compose run --rm`).
is_daemon() { [ "$1" != certbot ]; }

# The checks that refuse an update, before anything is done: exit BAD_INPUT with what is wrong.
validate() {
  local service=$1 known policy line tag
  known=$(services_in_config | paste -s -d ' ' -)
  [[ " $known " == *" $service "* ]] || refuse "unknown service '$service'; expected one of: $known"
  policy=$(policy_of "$service")
  if [ -n "$to_tag" ]; then
    # Docker's tag grammar; `latest` names no release, so nothing could tell what runs.
    [[ $to_tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
      || refuse "'$to_tag' is not an image tag (letters, digits, '_', '.', '-'; at most 128)"
    [ "$to_tag" != latest ] || refuse "'latest' names no release; give an exact tag such as $(tag_of "$(effective_image "$service")")"
  fi
  if [ -n "$to_image" ]; then
    tag=$(tag_of "$to_image")
    if [ -z "$tag" ] || [ "$tag" = latest ]; then refuse "--image $to_image names no exact tag"; fi
  fi
  if [ "$policy" = manual ] && [ "$yes" != true ]; then
    refuse "$service is updated only on an operator's word: add --yes (a backup and a database dump are" \
      "taken first, and the previous image and database are put back if the new one is not healthy)," \
      "or put the new tag in the stack config's images and run pulumi up"
  fi
  line=$(update_line_of "$service")
  tag=${to_tag:-$(tag_of "${to_image:-}")}
  if [ "$policy" = auto ] && [ -n "$tag" ] && [ "$yes" != true ] && ! [[ $tag =~ $line ]]; then
    refuse "$tag is outside $service's update line ($line), the tags automatic updates may move to;" \
      "add --yes to apply it anyway"
  fi
  if [ "$service" = postgres ] && [ -n "$tag" ]; then
    local major=${tag%%[!0-9]*}
    if [ -n "$major" ] && [ -n "${POSTGRES_MAJOR:-}" ] && [ "$major" != "$POSTGRES_MAJOR" ]; then
      refuse "$tag is PostgreSQL $major and the stack config names PostgreSQL $POSTGRES_MAJOR: a major upgrade" \
        "goes through the stack config (docs/runbooks/update.md, \"PostgreSQL major upgrade\"), not update.sh --to"
    fi
  fi
}
refuse() {
  log "error: $*; nothing was changed"
  finish "$BAD_INPUT" refused "$*"
}

# The outcome: the status file (for the health check and monitoring; not for what changed nothing
# at all), --json, the exit code.
finish() {
  local code=$1 outcome=$2 detail=$3
  case $outcome in refused | busy | dry-run) ;; *)
    python3 "$GITEA_STACK_DIR/scripts/update-support.py" record "$STATUS_FILE" "$service" "$outcome" "$detail" \
      "${from_image:-}" "${target:-}" "$code" "${rollback_seconds:-}" "${settled_seconds:-}" \
      || log "error: could not write $STATUS_FILE" ;;
  esac
  if [ "$json" = true ]; then
    python3 "$GITEA_STACK_DIR/scripts/update-support.py" outcome "$service" "$outcome" "$detail" \
      "${from_image:-}" "${target:-}" "$code" "${rollback_seconds:-}" "${settled_seconds:-}"
  fi
  exit "$code"
}

# Mails SUBJECT ($2, body on stdin) when an operator asked for the update, or when it did not go
# well ($1 is not ok): the weekly timer's successful updates are not news.
mail_outcome() {
  if [ -n "${UPDATE_BY_TIMER:-}" ] && [ "$1" = ok ]; then return 0; fi
  send_alert "$2"
}

# The service's running image: from_image (reference), from_id; empty when it does not run.
record_running_image() {
  local container
  from_image='' from_id=''
  if is_daemon "$service"; then
    container=$(compose ps --quiet "$service")
    if [ -n "$container" ]; then
      from_image=$(docker inspect --format '{{.Config.Image}}' "$container")
      from_id=$(docker inspect --format '{{.Image}}' "$container")
      return 0
    fi
  fi
  from_image=$(effective_image "$service")
  from_id=$(image_id "$from_image")
}

# Runs the container's own healthcheck command now: Docker runs it only every `interval` (nginx:
# 30 s), which would keep a healthy service waiting, and a rollback longer, for no reason.
healthcheck_passes() {
  local test=()
  mapfile -t test < <(docker inspect --format '{{range .Config.Healthcheck.Test}}{{println .}}{{end}}' "$1")
  if [ ${#test[@]} -gt 0 ] && [ -z "${test[-1]}" ]; then unset 'test[-1]'; fi  # docker's closing newline
  case ${test[0]:-} in
    CMD) docker exec "$1" "${test[@]:1}" >/dev/null 2>&1 ;;
    CMD-SHELL) docker exec "$1" sh -c "${test[1]}" >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# Waits until Docker says the recreated service is healthy (or, without a healthcheck, it keeps
# running for SETTLE_SECONDS), so nothing that follows (the health timer, a converge) sees it
# starting. serving_at is when it first answered its own healthcheck (run at once, see above), that
# is when it served again. Fails at once when it is unhealthy, stopped or restarting.
new_image_healthy() {
  serving_at=''
  if ! is_daemon "$service"; then
    # certbot: the new image must run and read the certificates it will renew.
    compose run --rm --no-deps "$service" certificates >/dev/null || return 1
    serving_at=$EPOCHREALTIME
    return 0
  fi
  local deadline=$((SECONDS + HEALTH_TIMEOUT)) running_since='' container state restarts
  while [ "$SECONDS" -lt "$deadline" ]; do
    container=$(compose ps --all --quiet "$service")
    state=$(service_state "$service")
    restarts=$(docker inspect --format '{{.RestartCount}}' "$container" 2>/dev/null || echo 0)
    # A container that restarted since it was created crashed, whatever its state says now.
    if [ "$restarts" -gt 0 ]; then health_problem="$service exited and was restarted $restarts times"; return 1; fi
    case $state in
      healthy)
        serving_at=${serving_at:-$EPOCHREALTIME}
        return 0 ;;
      unhealthy | exited | dead | restarting | missing)
        health_problem="$service is $state"
        return 1 ;;
      starting)
        if [ -z "$serving_at" ] && healthcheck_passes "$container"; then serving_at=$EPOCHREALTIME; fi ;;
      running)
        serving_at=${serving_at:-$EPOCHREALTIME}
        running_since=${running_since:-$SECONDS}
        if [ $((SECONDS - running_since)) -ge "$SETTLE_SECONDS" ]; then return 0; fi ;;
    esac
    sleep "${HEALTH_POLL_SECONDS:-2}"
  done
  health_problem="$service was not healthy within ${HEALTH_TIMEOUT}s (state: $(service_state "$service"))"
  return 1
}

seconds_since() { awk -v from="$1" -v to="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.1f", to - from }'; }

# Whether DATA_DIR has room for $1 times the gitea database's size: 0 yes, 1 no, 2 PostgreSQL did
# not say its size. Sets need_kib and free_kib.
room_for_database() {
  local size_kib
  size_kib=$(compose exec -T postgres psql --no-psqlrc --tuples-only --no-align --username=postgres \
    --dbname=gitea --command="SELECT pg_database_size('gitea') / 1024") || return 2
  need_kib=$((size_kib * $1))
  free_kib=$(df --output=avail -k "$DATA_DIR" | tail -n 1 | tr -d ' ')
  [ "$free_kib" -ge "$need_kib" ]
}

# gitea only: its database (pg_dump, custom format) and app.ini, kept until the update is done.
dump_gitea() {
  umask 077
  install -d -m 0700 "$PRE_UPDATE_DIR"
  local room=0
  room_for_database 1 || room=$?
  if [ "$room" -eq 2 ]; then return 1; fi
  if [ "$room" -ne 0 ]; then
    log "error: the database takes ${need_kib} KiB and $DATA_DIR has ${free_kib} KiB free: no room for its dump"
    return 1
  fi
  log "dumping the gitea database to $PRE_UPDATE_DIR/gitea.dump"
  compose exec -T postgres pg_dump --format=custom --username=postgres gitea >"$PRE_UPDATE_DIR/gitea.dump.new" \
    || return 1
  mv "$PRE_UPDATE_DIR/gitea.dump.new" "$PRE_UPDATE_DIR/gitea.dump"
  if [ -f "$DATA_DIR/gitea/config/app.ini" ]; then
    cp -p "$DATA_DIR/gitea/config/app.ini" "$PRE_UPDATE_DIR/app.ini"
  fi
}

# gitea only: the database as the dump has it, in a new empty database (a failed migration may
# have added tables the dump does not know), and the previous app.ini.
restore_gitea_database() {
  log "restoring the gitea database from the pre-update dump"
  printf '%s\n' 'DROP DATABASE IF EXISTS gitea WITH (FORCE);' 'CREATE DATABASE gitea OWNER gitea;' \
    | compose exec -T postgres psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
    || return 1
  compose exec -T postgres pg_restore --exit-on-error --single-transaction --username=postgres --dbname=gitea \
    <"$PRE_UPDATE_DIR/gitea.dump" || return 1
  if [ -f "$PRE_UPDATE_DIR/app.ini" ]; then cp -p "$PRE_UPDATE_DIR/app.ini" "$DATA_DIR/gitea/config/app.ini"; fi
}

# nginx resolves gitea once; a new or restarted gitea container may have a new address.
point_nginx_at_gitea() {
  if [ -n "$(compose ps --quiet nginx)" ]; then compose exec -T nginx nginx -s reload >/dev/null 2>&1 || true; fi
}

recreate() {
  compose up --detach --no-deps --force-recreate "$service" >/dev/null || return 1
  if [ "$service" = gitea ]; then point_nginx_at_gitea; fi
}

# The recorded image under its reference again (a pull of the same tag moved the tag), and compose
# told to run it.
put_back_recorded_image() {
  docker tag "$from_id" "$from_image" || return 1
  set_applied_image "$service" "$from_image"
}

# Puts back the recorded image (and gitea's database); sets rollback_seconds.
roll_back() {
  local started=$EPOCHREALTIME
  log "rolling $service back to $from_image"
  if is_daemon "$service"; then compose stop "$service" >/dev/null 2>&1 || true; fi
  if [ "$service" = gitea ]; then restore_gitea_database || return 1; fi
  put_back_recorded_image || return 1
  if is_daemon "$service"; then recreate || return 1; fi
  new_image_healthy || return 1
  rollback_seconds=$(seconds_since "$started" "$serving_at") settled_seconds=$(seconds_since "$started")
}

# The new image for the service, recreated alone and checked.
switch_image() {
  set_applied_image "$service" "$target"
  { ! is_daemon "$service" || recreate; } && new_image_healthy
}

# Rows per table of the gitea database (`schema.table=rows` lines), to compare after the restore.
table_row_counts() {
  compose exec -T postgres psql --no-psqlrc --tuples-only --no-align --quiet --username=postgres --dbname=gitea <<'SQL'
SELECT format('SELECT %L || ''='' || count(*) FROM %I.%I', schemaname || '.' || tablename, schemaname, tablename)
  FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \gexec
SQL
}

# gitea waits for postgres: healthy again after a restart of either, and nginx pointed at it.
restart_gitea() {
  compose up --detach --no-deps gitea >/dev/null || return 1
  service=gitea new_image_healthy || return 1
  point_nginx_at_gitea
}

# postgres, new major: a dump of the gitea database (Gitea stopped, so nothing is written after
# it), the old cluster moved aside, a new cluster of the new major made by its image and the dump
# restored into it; the rows of every table compared. The old cluster is removed once Gitea runs
# healthy on the new one, and put back by undo_postgres_major_upgrade if anything fails.
upgrade_postgres_major() {
  local rows_before rows_after
  log "upgrading PostgreSQL $data_major to $target_major by dump and restore; Gitea is stopped meanwhile"
  rows_before=$(table_row_counts) || return 1
  compose stop gitea >/dev/null || return 1
  install -d -m 0700 "$PRE_UPDATE_DIR"
  (umask 077; compose exec -T postgres pg_dump --format=custom --username=postgres gitea >"$PRE_UPDATE_DIR/postgres.dump") \
    || { health_problem="pg_dump of the gitea database failed"; return 1; }
  compose stop postgres >/dev/null || return 1
  mv "$old_cluster" "$kept_cluster"
  moved_aside=true
  # Up to 17 the mount is PGDATA itself: a directory of the data volume, not one Docker makes as root.
  if [ "$target_major" -lt 18 ]; then install -d -m 0700 -o 999 -g 999 "$DATA_DIR/postgres/data"; fi
  set_applied_image postgres "$target"
  compose up --detach --no-deps --force-recreate postgres >/dev/null || return 1
  new_image_healthy || return 1
  set_database_role || { health_problem="could not create the gitea role in the new cluster"; return 1; }
  log "restoring the gitea database into PostgreSQL $target_major"
  compose exec -T postgres pg_restore --exit-on-error --single-transaction --username=postgres --dbname=gitea \
    <"$PRE_UPDATE_DIR/postgres.dump" || { health_problem="pg_restore into PostgreSQL $target_major failed"; return 1; }
  rows_after=$(table_row_counts) || return 1
  if [ "$rows_after" != "$rows_before" ]; then
    health_problem="the restored database does not have the rows the old one had: $(diff <(echo "$rows_before") <(echo "$rows_after") | grep '^[<>]' | head -n 5 | paste -s -d ' ' -)"
    return 1
  fi
  restart_gitea || { health_problem="gitea was not healthy on PostgreSQL $target_major: $health_problem"; return 1; }
  log "PostgreSQL $target_major serves Gitea with every row; removing the PostgreSQL $data_major cluster ($kept_cluster)"
  rm -rf "$kept_cluster"
}

undo_postgres_major_upgrade() {
  local started=$EPOCHREALTIME
  log "putting PostgreSQL $data_major back"
  compose stop postgres >/dev/null 2>&1 || true
  if [ "${moved_aside:-}" = true ]; then
    rm -rf "$(postgres_data_dir "$target_major")"  # the new cluster, made from the dump
    mv "$kept_cluster" "$old_cluster" || return 1
  fi
  put_back_recorded_image || return 1
  compose up --detach --no-deps --force-recreate postgres >/dev/null || return 1
  new_image_healthy || return 1
  restart_gitea || return 1
  rollback_seconds=$(seconds_since "$started" "$serving_at") settled_seconds=$(seconds_since "$started")
}

apply_update() { if [ -n "$major_upgrade" ]; then upgrade_postgres_major; else switch_image; fi; }
undo_update() { if [ -n "$major_upgrade" ]; then undo_postgres_major_upgrade; else roll_back; fi; }

# postgres: whether the target is another major than the data's (major_upgrade), and if so,
# whether it can be done: a newer major, no earlier upgrade's cluster left aside, room for the
# dump and the new cluster. Refused before anything is pulled or changed.
plan_postgres_major_upgrade() {
  major_upgrade=''
  [ "$service" = postgres ] || return 0
  data_major=$(postgres_data_majors | tail -n 1)
  target_major=$(tag_of "$target")
  target_major=${target_major%%[!0-9]*}
  if [ -z "$data_major" ] || [ -z "$target_major" ] || [ "$data_major" = "$target_major" ]; then return 0; fi
  if [ "$target_major" -lt "$data_major" ]; then
    refuse "$target is PostgreSQL $target_major and the data is PostgreSQL $data_major: a cluster cannot go back to an older major"
  fi
  old_cluster=$(postgres_data_dir "$data_major")
  kept_cluster="$DATA_DIR/postgres-$data_major.before-upgrade"
  if [ -e "$kept_cluster" ]; then
    refuse "$kept_cluster is left from an earlier upgrade of PostgreSQL $data_major; look at it and remove it first"
  fi
  local room=0
  room_for_database 2 || room=$?
  if [ "$room" -eq 2 ]; then refuse "cannot ask PostgreSQL for the database's size"; fi
  if [ "$room" -ne 0 ]; then
    refuse "a PostgreSQL major upgrade needs room for a dump and a new cluster, about ${need_kib} KiB, and $DATA_DIR has ${free_kib} KiB free"
  fi
  major_upgrade=true
}

# Applies `target` to `service`; ends the script through finish, with the exit codes above.
update_service() {
  record_running_image
  [ -n "$from_image" ] || refuse "$service has no image in images.conf"
  if [ -n "$to_image" ]; then target=$to_image
  elif [ -n "$to_tag" ]; then target="$(repository_of "$(effective_image "$service")"):$to_tag"
  else target=$(effective_image "$service"); fi
  plan_postgres_major_upgrade

  if [ "$dry_run" = true ]; then
    {
      echo "update.sh --dry-run: $service ($(policy_of "$service") updates)"
      echo "  runs now:   $from_image (${from_id:-not on this host})"
      echo "  would pull: $target"
      echo "  then, if that is another image: a backup (backup.sh)$([ "$service" = gitea ] && echo ", a dump of the gitea database and app.ini"),"
      echo "  recreate $service alone, wait up to ${HEALTH_TIMEOUT}s for it to be healthy, and roll back to"
      echo "  $from_image$([ "$service" = gitea ] && echo " with the database from the dump") if it is not."
      echo "  Nothing was changed."
    } >&2
    finish 0 dry-run "would update $service from $from_image to $target"
  fi

  log "pulling $target"
  if ! docker pull --quiet "$target" >/dev/null; then
    mail_outcome failed "update of $service failed: could not pull $target" <<MAIL
update.sh could not pull $target on $DOMAIN. Nothing was changed: $service keeps running $from_image.

What to do first: check that the tag exists (Diun's mail names the tags it saw) and that the host
reaches the registry: docker pull $target
MAIL
    log "error: could not pull $target (does the tag exist? can the host reach its registry?); nothing was changed"
    finish "$PULL_FAILED" pull-failed "could not pull $target"
  fi
  target_id=$(image_id "$target")
  if [ "$target_id" = "$from_id" ]; then
    log "$service already runs $target ($target_id): nothing to do"
    if [ "$target" != "$(effective_image "$service")" ]; then set_applied_image "$service" "$target"; fi
    finish 0 up-to-date "$service already runs $target"
  fi

  log "backing up before updating $service"
  if ! "$GITEA_STACK_DIR/scripts/backup.sh" >&2 || { [ "$service" = gitea ] && ! dump_gitea; }; then
    # A pull of the running tag moved it to the new image: point it back, so nothing runs it later.
    if [ -n "$from_id" ]; then docker tag "$from_id" "$from_image"; fi
    mail_outcome failed "update of $service abandoned: the pre-update backup failed" <<MAIL
update.sh did not update $service on $DOMAIN to $target: the backup taken before every update
failed$([ "$service" = gitea ] && echo " (or the dump of the gitea database did)"). Nothing was changed: $service keeps running $from_image.

What to do first: read why the backup failed (journalctl -u gitea-stack-backup.service, or run
$GITEA_STACK_DIR/scripts/backup.sh by hand), fix that, then run the update again.
MAIL
    log "error: the pre-update backup failed; $service was not updated and keeps running $from_image"
    finish "$BACKUP_FAILED" backup-failed "the pre-update backup failed"
  fi

  log "updating $service: $from_image ($from_id) -> $target ($target_id)"
  health_problem=''
  if apply_update; then
    rm -rf "$PRE_UPDATE_DIR"
    log "$service runs $target and is healthy"
    mail_outcome ok "$service updated to $(tag_of "$target") on $DOMAIN" <<MAIL
$service on $DOMAIN was updated from $from_image to $target and is healthy.
A backup was taken before the update. If something is wrong with the new version, see
docs/runbooks/update.md ("Failed update") to go back.
MAIL
    finish 0 updated "$service updated from $from_image to $target"
  fi

  log "error: $target is not healthy (${health_problem:-its container did not start}); rolling back"
  # The failed container goes with the rollback: its last words go into the mail.
  failed_log=$(compose logs --no-color --tail 20 "$service" 2>&1 | tail -n 20 || true)
  if undo_update; then
    log "$service runs $from_image again and is healthy: serving ${rollback_seconds}s after the failed health check," \
      "healthy to Docker after ${settled_seconds}s"
    rm -rf "$PRE_UPDATE_DIR"
    mail_outcome failed "update of $service to $(tag_of "$target") rolled back on $DOMAIN" <<MAIL
update.sh tried $target for $service on $DOMAIN, and it was not healthy: ${health_problem:-its container did not start}.
It was rolled back: $service runs $from_image again and is healthy$([ "$service" = gitea ] && echo ", with its database as it was before the update").

The failed container's last log lines:
${failed_log:-  (none)}

What to do first: find out why the new version failed (the lines above, its release notes) before
trying it again; this run's full output is in journalctl -u gitea-stack-update.service when the
timer ran it.
MAIL
    finish "$ROLLED_BACK" rolled-back "$target was not healthy (${health_problem:-}); $from_image serves again"
  fi
  mail_outcome failed "URGENT: $service is down on $DOMAIN: update and rollback both failed" <<MAIL
update.sh tried $target for $service on $DOMAIN; it was not healthy (${health_problem:-}), and the
rollback to $from_image failed too. $service is not serving.

What to do first:
  cd $GITEA_STACK_DIR && docker compose ps; docker compose logs --tail 100 $service
$([ "$service" = gitea ] && echo "  The pre-update database dump is $PRE_UPDATE_DIR/gitea.dump; a backup was taken before the update
  (scripts/restore.sh --list). See docs/runbooks/update.md, \"Failed update\".")
MAIL
  log "error: the rollback of $service failed too; it is down. See docs/runbooks/update.md"
  finish "$ROLLBACK_FAILED" rollback-failed "$target was not healthy and the rollback to $from_image failed"
}

if [ "$auto" = true ]; then
  # Each auto service in a process of its own (finish exits), under this run's lock; the worst
  # code wins. With --json, one line per service.
  if [ "$dry_run" != true ] && ! try_lock "${UPDATE_LOCK_WAIT_SECONDS:-600}"; then
    log "error: another gitea-stack job is running; nothing was updated"
    exit "$BUSY"
  fi
  worst=0
  for each in $(services_in_config); do
    [ "$(policy_of "$each")" = auto ] || continue
    options=()
    if [ "$dry_run" = true ]; then options+=(--dry-run); fi
    if [ "$json" = true ]; then options+=(--json); fi
    code=0
    UPDATE_BY_TIMER=true "$0" "${options[@]}" "$each" || code=$?
    if [ "$code" -gt "$worst" ]; then worst=$code; fi
  done
  exit "$worst"
fi

validate "$service"
if [ "$dry_run" != true ] && ! try_lock "${UPDATE_LOCK_WAIT_SECONDS:-0}"; then
  log "error: another gitea-stack job (deploy, backup, restore, renewal or update) is running; nothing was changed"
  finish "$BUSY" busy "another gitea-stack job is running"
fi
update_service
