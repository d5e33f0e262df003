#!/usr/bin/env bash
# Checks that the forge works as its users and operators need it to, one named check at a time:
#   containers   postgres, gitea, nginx and docker-socket-proxy running, and healthy where they
#                have a healthcheck (Diun has a check of its own: diun)
#   https        https://DOMAIN/api/healthz through nginx on this host, verifying the real certificate
#   git-ssh      git over SSH answers on gitSshPort: an SSH banner from 127.0.0.1:GIT_SSH_PORT
#   database     pg_isready in the postgres container
#   certificate  the certificate nginx serves (if it does not answer: the one in
#                DATA_DIR/letsencrypt/live/DOMAIN) valid for HEALTH_CERT_MIN_DAYS more days
#   disk         DATA_DIR's filesystem has HEALTH_MIN_FREE_PERCENT of its bytes and inodes free
#   backup       the last successful backup (DATA_DIR/state/backup-status.json) is younger than
#                twice the backup schedule (BACKUP_SCHEDULE, gitea-stack:backupSchedule); on a new
#                forge, the first one is awaited as long after the backup timer's install
#   diun         Diun's container running, not restarting in a loop
#   monitoring   prometheus and alertmanager healthy: without them no alert is mailed, and this
#                check (mailed through SES's API, not through them) is what says so
# Each check is ok or failed, with a detail and, when it failed, what to do first
# (docs/runbooks/health.md says more).
#
# Usage: health-check.sh [--help] [--json] [--notify]
#   --json    print one JSON document on stdout instead of the lines for people:
#             {"checks": [{"name", "status", "detail", "action"}], "failed": [names], "ok", "checked_at"}
#   --notify  what the timer runs: mail alertEmails when the set of failed checks changes (failing,
#             recovered) and once every HEALTH_REMINDER_HOURS while it stays broken, never on every
#             failing run; the state is kept in HEALTH_STATE_FILE. While another gitea-stack job
#             (deploy, update, restore, backup) holds GITEA_STACK_LOCK, it checks nothing, changes
#             nothing and exits 0: planned work is no outage.
# Reads settings.env (DOMAIN, DATA_DIR, GIT_SSH_PORT, BACKUP_SCHEDULE, STACK, ALERT_EMAILS) and
# stack-facts.env (AWS_REGION, for the mail).
# Environment: HEALTH_HTTPS_PORT (default 443); HEALTH_CA_FILE (default: the system's CAs);
#   HEALTH_CERT_MIN_DAYS (default 14); HEALTH_MIN_FREE_PERCENT (default 15);
#   HEALTH_REMINDER_HOURS (default 24); HEALTH_STATE_FILE (default DATA_DIR/state/health-state.json);
#   BACKUP_STATUS_FILE (default DATA_DIR/state/backup-status.json); BACKUP_TIMER_UNIT (default
#   /etc/systemd/system/gitea-stack-backup.timer: a new forge's first backup is awaited from its install);
#   GITEA_STACK_LOCK (default /run/lock/gitea-stack.lock); METRICS_DIR (default DATA_DIR/metrics):
#   every run writes the checks and the state of backups, restore drills and updates there as
#   metrics for Prometheus (gitea-stack.prom, read by node_exporter's textfile collector).
# Exit codes: 0 every check passed (--notify: also when it skipped for another job); 1 at least one
#   check failed: each failed one is named on stderr; 2 bad usage.
set -euo pipefail
usage() { sed -n '2,40s/^# \{0,1\}//p' "$0"; }
output=human
notify=false
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --json) output=json ;;
    --notify) notify=true ;;
    *)
      echo "health-check.sh: unknown argument '$1' (usage: health-check.sh [--help] [--json] [--notify])" >&2
      exit 2
      ;;
  esac
  shift
done
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
if [ -r "$GITEA_STACK_DIR/stack-facts.env" ]; then load_env_file "$GITEA_STACK_DIR/stack-facts.env"; fi

SUPPORT="$GITEA_STACK_DIR/scripts/health-support.py"
HTTPS_PORT=${HEALTH_HTTPS_PORT:-443}
CERT_MIN_DAYS=${HEALTH_CERT_MIN_DAYS:-14}
MIN_FREE_PERCENT=${HEALTH_MIN_FREE_PERCENT:-15}
STATE_FILE=${HEALTH_STATE_FILE:-$DATA_DIR/state/health-state.json}
BACKUP_STATUS=${BACKUP_STATUS_FILE:-$DATA_DIR/state/backup-status.json}
# Docker restarts a crashing container again and again (restart: unless-stopped); a restart this
# recent counts as a crash loop.
RESTART_LOOP_WINDOW_SECONDS=900
COMPOSE_HINT="cd $GITEA_STACK_DIR && docker compose --project-name gitea-stack"
for number in "$HTTPS_PORT" "$CERT_MIN_DAYS" "$MIN_FREE_PERCENT" "${HEALTH_REMINDER_HOURS:-24}"; do
  [[ $number =~ ^[0-9]+$ ]] || { echo "health-check.sh: HEALTH_* settings take whole numbers, got '$number'" >&2; exit 2; }
done

# True while another gitea-stack job holds the global lock. Only asks: the lock is released at once,
# so the check never holds up a deploy.
another_job_running() {
  local lock_file=${GITEA_STACK_LOCK:-/run/lock/gitea-stack.lock} lock_fd
  exec {lock_fd}>"$lock_file"
  if flock --nonblock "$lock_fd"; then
    exec {lock_fd}>&-
    return 1
  fi
  exec {lock_fd}>&-
  return 0
}

skip_for_other_job() {
  log "another gitea-stack job holds ${GITEA_STACK_LOCK:-/run/lock/gitea-stack.lock} (deploy, update, restore or backup): skipping this run, no mail, state unchanged"
  exit 0
}

if [ "$notify" = true ] && another_job_running; then skip_for_other_job; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results="$work/results.tsv"
: >"$results"

# One result line: name, ok|failed, detail[, what to do first]. Tabs and newlines become spaces.
record() {
  local fields=("$@") index
  for index in "${!fields[@]}"; do fields[index]=$(printf '%s' "${fields[index]}" | tr '\t\n\r' '   '); done
  printf '%s\t%s\t%s\t%s\n' "${fields[0]}" "${fields[1]}" "${fields[2]}" "${fields[3]:-}" >>"$results"
}

join_comma() {
  local first=$1
  shift
  printf '%s' "$first" "${@/#/, }"
}

check_containers() {
  local service state states=() problems=()
  for service in postgres gitea nginx docker-socket-proxy; do
    state=$(service_state "$service" 2>"$work/containers.err") || state="unknown ($(tail -n 1 "$work/containers.err"))"
    [ "$state" != missing ] || state="not running"
    states+=("$service $state")
    case $state in healthy | running) ;; *) problems+=("$service is $state") ;; esac
  done
  if [ ${#problems[@]} -eq 0 ]; then
    record containers ok "$(join_comma "${states[@]}")"
  else
    record containers failed "$(join_comma "${problems[@]}") ($(join_comma "${states[@]}"))" \
      "see why: $COMPOSE_HINT ps --all; docker logs --tail 100 gitea-stack-<service>-1; start what is missing: $COMPOSE_HINT up --detach <service> (or run $GITEA_STACK_DIR/scripts/deploy.sh)"
  fi
}

check_https() {
  local url="https://$DOMAIN/api/healthz" code options body
  [ "$HTTPS_PORT" = 443 ] || url="https://$DOMAIN:$HTTPS_PORT/api/healthz"
  options=(--silent --show-error --max-time 20 --resolve "$DOMAIN:$HTTPS_PORT:127.0.0.1"
    --output "$work/healthz" --write-out '%{http_code}')
  if [ -n "${HEALTH_CA_FILE:-}" ]; then options+=(--cacert "$HEALTH_CA_FILE"); fi
  local action="ask it yourself: curl -v --resolve $DOMAIN:$HTTPS_PORT:127.0.0.1 $url; read docker logs --tail 100 gitea-stack-nginx-1 and gitea-stack-gitea-1; a certificate error: see the certificate check and $DATA_DIR/letsencrypt/live/$DOMAIN"
  if ! code=$(curl "${options[@]}" "$url" 2>"$work/curl.err"); then
    record https failed "$url through nginx on 127.0.0.1:$HTTPS_PORT: $(head -n 1 "$work/curl.err")" "$action"
    return
  fi
  body=$(head -c 300 "$work/healthz" 2>/dev/null | tr -s ' \t\n\r' ' ') || body=''
  if [ "$code" = 200 ]; then
    record https ok "$url answered 200 with a trusted certificate for $DOMAIN: $body"
  else
    record https failed "$url answered HTTP $code: $body" "$action"
  fi
}

# The first line the server at 127.0.0.1:$1 sends (an SSH server sends its banner at once).
read_banner() {
  local line='' banner_fd
  exec {banner_fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  IFS= read -r -t 10 line <&"$banner_fd" || true
  exec {banner_fd}>&-
  printf '%s' "${line%$'\r'}"
}

check_git_ssh() {
  local port=${GIT_SSH_PORT:-22} banner
  local action="ask it yourself: ssh-keyscan -p $port 127.0.0.1; is Gitea up and publishing the port (docker port gitea-stack-gitea-1)? read docker logs --tail 100 gitea-stack-gitea-1"
  if ! banner=$(read_banner "$port" 2>"$work/ssh.err"); then
    record git-ssh failed "nothing answers on 127.0.0.1:$port: $(tail -n 1 "$work/ssh.err" | sed 's/^.*: //')" "$action"
  elif [[ $banner == SSH-2.0-* ]]; then
    record git-ssh ok "127.0.0.1:$port answers $banner"
  else
    record git-ssh failed "127.0.0.1:$port answered no SSH banner within 10s (got '${banner:0:80}')" "$action"
  fi
}

check_database() {
  local answer
  if answer=$(compose exec -T postgres pg_isready --username=postgres --dbname=gitea --timeout=10 2>&1); then
    record database ok "pg_isready: $answer"
  else
    record database failed "pg_isready in the postgres container: ${answer:-no answer}" \
      "read docker logs --tail 100 gitea-stack-postgres-1 (a full disk? see the disk check); restart it: $COMPOSE_HINT restart postgres"
  fi
}

check_certificate() {
  local file="$DATA_DIR/letsencrypt/live/$DOMAIN/fullchain.pem" pem where end end_epoch days_left expiry
  local action="renew it now: systemctl start gitea-stack-certbot-renew.service; then read journalctl -u gitea-stack-certbot-renew.service -n 100 and ${CERTBOT_LOGS_DIR:-/var/log/gitea-stack/letsencrypt}/letsencrypt.log"
  pem=$(timeout 20 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$DOMAIN" </dev/null 2>/dev/null \
    | openssl x509 2>/dev/null) || pem=''
  where="served on 127.0.0.1:$HTTPS_PORT"
  if [ -z "$pem" ]; then
    if ! pem=$(openssl x509 <"$file" 2>/dev/null); then
      record certificate failed "nginx serves no certificate on 127.0.0.1:$HTTPS_PORT and $file cannot be read" "$action"
      return
    fi
    where="in $file (nginx did not answer on 127.0.0.1:$HTTPS_PORT)"
  fi
  end=$(openssl x509 -noout -enddate <<<"$pem")
  end=${end#notAfter=}
  end_epoch=$(date -u -d "$end" +%s)
  expiry=$(date -u -d "$end" '+%Y-%m-%d %H:%M UTC')
  days_left=$(((end_epoch - $(date +%s)) / 86400))
  if openssl x509 -noout -checkend $((CERT_MIN_DAYS * 86400)) <<<"$pem" >/dev/null; then
    record certificate ok "the certificate $where is valid until $expiry ($days_left days left; at least $CERT_MIN_DAYS wanted)"
  elif [ "$end_epoch" -le "$(date +%s)" ]; then
    record certificate failed "the certificate $where expired on $expiry" "$action"
  else
    record certificate failed "the certificate $where expires on $expiry: $days_left days left, fewer than $CERT_MIN_DAYS (renewal should have replaced it 30 days before)" "$action"
  fi
}

check_disk() {
  local size avail itotal iavail bytes_free inodes_free inodes problems=()
  if ! read -r size avail itotal iavail < <(df --block-size=1 --output=size,avail,itotal,iavail "$DATA_DIR" 2>/dev/null | tail -n 1) \
    || ! [[ ${size:-} =~ ^[1-9][0-9]*$ ]]; then
    record disk failed "cannot read the filesystem of $DATA_DIR (df failed)" "is the data volume mounted? findmnt $DATA_DIR"
    return
  fi
  bytes_free=$((avail * 100 / size))
  [ "$bytes_free" -ge "$MIN_FREE_PERCENT" ] || problems+=("only $bytes_free% of the bytes free")
  if [[ $itotal =~ ^[1-9][0-9]*$ ]]; then
    inodes_free=$((iavail * 100 / itotal))
    inodes="$inodes_free% of $itotal inodes free"
    [ "$inodes_free" -ge "$MIN_FREE_PERCENT" ] || problems+=("only $inodes_free% of the inodes free")
  else
    inodes="no inode limit"
  fi
  local detail
  detail="$DATA_DIR: $bytes_free% of $(numfmt --to=iec "$size")B free ($(numfmt --to=iec "$avail")B), $inodes; at least $MIN_FREE_PERCENT% wanted"
  if [ ${#problems[@]} -eq 0 ]; then
    record disk ok "$detail"
  else
    record disk failed "$(join_comma "${problems[@]}"): $detail" \
      "see what grew: du -xh --max-depth=3 $DATA_DIR | sort -h | tail -n 20; docker system df; then grow the data volume (gitea-stack:dataVolumeGiB, pulumi up) or remove what is not needed"
  fi
}

check_backup() {
  local status detail
  IFS=$'\t' read -r status detail < <(python3 "$SUPPORT" check-backup "$BACKUP_STATUS" "${BACKUP_SCHEDULE:-hourly}" \
    "${BACKUP_TIMER_UNIT:-/etc/systemd/system/gitea-stack-backup.timer}" 2>&1) \
    || status=failed
  if [ "$status" = ok ]; then
    record backup ok "$detail"
  else
    record backup failed "${detail:-could not work out the age of the last backup}" \
      "see why the backups stopped: systemctl list-timers gitea-stack-backup.timer; journalctl -u gitea-stack-backup.service -n 200; then run $GITEA_STACK_DIR/scripts/backup.sh by hand"
  fi
}

check_monitoring() {
  local service state states=() problems=()
  for service in prometheus alertmanager; do
    state=$(service_state "$service" 2>"$work/monitoring.err") || state="unknown ($(tail -n 1 "$work/monitoring.err"))"
    [ "$state" != missing ] || state="not running"
    states+=("$service $state")
    [ "$state" = healthy ] || problems+=("$service is $state")
  done
  if [ ${#problems[@]} -eq 0 ]; then
    record monitoring ok "$(join_comma "${states[@]}"): alerts are evaluated and mailed"
  else
    record monitoring failed "$(join_comma "${problems[@]}"): no alert is mailed until they are back" \
      "see why: docker logs --tail 100 gitea-stack-prometheus-1 and gitea-stack-alertmanager-1 (a config or SMTP problem?); start them: $COMPOSE_HINT up --detach prometheus alertmanager (or run $GITEA_STACK_DIR/scripts/deploy.sh)"
  fi
}

check_diun() {
  local container status restarting restarts started exit_code started_epoch ago
  local action="read docker logs --tail 100 gitea-stack-diun-1 (its SMTP secrets? the docker-socket-proxy?); start it again: $COMPOSE_HINT up --detach diun"
  container=$(compose ps --all --quiet diun 2>/dev/null | head -n 1) || container=''
  if [ -z "$container" ]; then
    record diun failed "there is no Diun container" "$action"
    return
  fi
  if ! read -r status restarting restarts exit_code started < <(docker inspect --format \
    '{{.State.Status}} {{.State.Restarting}} {{.RestartCount}} {{.State.ExitCode}} {{.State.StartedAt}}' "$container" 2>/dev/null); then
    record diun failed "docker inspect $container failed" "$action"
    return
  fi
  started_epoch=$(date -u -d "$started" +%s 2>/dev/null) || started_epoch=0
  ago=$(($(date +%s) - started_epoch))
  if [ "$restarting" = true ] || [ "$status" = restarting ]; then
    record diun failed "Diun keeps crashing: Docker is restarting it (restarted $restarts times, exit code $exit_code)" "$action"
  elif [ "$status" != running ]; then
    record diun failed "Diun's container is $status (exit code $exit_code)" "$action"
  elif [ "${restarts:-0}" -gt 0 ] && [ "$ago" -lt "$RESTART_LOOP_WINDOW_SECONDS" ]; then
    record diun failed "Diun crashed and was restarted by Docker $restarts times, the last time $((ago / 60)) min ago: a crash loop?" "$action"
  else
    record diun ok "Diun is running since $started (restarted by Docker $restarts times)"
  fi
}

check_containers
check_https
check_git_ssh
check_database
check_certificate
check_disk
check_backup
check_diun
check_monitoring

status=0
if [ "$output" = json ]; then
  python3 "$SUPPORT" report "$results" --json || status=$?
else
  python3 "$SUPPORT" report "$results" || status=$?
fi
[ "$status" -le 1 ] || die "health-support.py report failed (exit code $status)"

# Prometheus alerts on these (docs/monitoring.md); a failure here must not hide the checks' result.
metrics_dir=${METRICS_DIR:-$DATA_DIR/metrics}
if ! { install -d -m 0755 "$metrics_dir" && python3 "$SUPPORT" metrics "$metrics_dir/gitea-stack.prom" "$results" \
  "${BACKUP_SCHEDULE:-hourly}" "$BACKUP_STATUS" "$DATA_DIR/state/restore-drill-status.json" \
  "$DATA_DIR/state/update-status.json"; }; then
  log "warning: could not write the metrics in $metrics_dir"
fi

if [ "$notify" = true ]; then
  # A deploy that started while we checked made the failures we saw: they are no news either.
  if another_job_running; then skip_for_other_job; fi
  mail=$(python3 "$SUPPORT" notify "$results" "$STATE_FILE" "${HEALTH_REMINDER_HOURS:-24}") \
    || die "could not update $STATE_FILE"
  if [ -n "$mail" ]; then
    log "mailing: ${mail%%$'\n'*}"
    send_alert "${mail%%$'\n'*}" <<<"${mail#*$'\n\n'}"
  fi
fi
exit "$status"
