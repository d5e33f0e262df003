#!/usr/bin/env bash
# Converges the host to its bundle: secrets from Secrets Manager into 0600 files, images, services,
# the first certificate through the HTTP-01 webroot, HTTPS, the first admin user; then waits until
# every service is healthy. Run by `pulumi up` after it copies the bundle; safe to run by hand.
# Idempotent: a second run changes nothing. A change to one service's files recreates or reloads
# that service only (an nginx change never restarts gitea or postgres).
#
# Usage: deploy.sh [--help]
# Environment: AWS_ENDPOINT_URL (optional) another AWS API endpoint, as boto3 reads it;
#              HEALTH_TIMEOUT_SECONDS (default 600); MIN_FREE_MIB (default 1024).
# Exit codes: 0 converged and healthy; 1 a step failed: it is logged, and what runs keeps running.
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

# Owners of each service's secret files: the user each image runs as.
declare -A SECRET_OWNER=([postgres]=999 [gitea]=1000 [diun]=0 [host]=0)
declare -A SECRETS_OF=(
  [postgres]="postgres-password"
  [gitea]="postgres-password gitea-secret-key gitea-internal-token metrics-token smtp-host smtp-port smtp-username smtp-password"
  [diun]="smtp-username smtp-password"
  [host]="gitea-admin-password restic-password runner-registration-token"
)
RESTART_SERVICES=()
NGINX_CHANGED=false

check_free_space() {
  local free_mib
  free_mib=$(df --output=avail -m "$DATA_DIR" | tail -n 1 | tr -d ' ')
  if [ "$free_mib" -lt "${MIN_FREE_MIB:-1024}" ]; then
    die "only ${free_mib} MiB free on $DATA_DIR (need ${MIN_FREE_MIB:-1024}); nothing was changed"
  fi
}

prepare_directories() {
  install -d -m 0755 "$DATA_DIR/letsencrypt" "$DATA_DIR/acme-webroot" "$DATA_DIR/diun"
  install -d -m 0700 -o 999 -g 999 "$DATA_DIR/postgres"
  install -d -m 0750 -o 1000 -g 1000 "$DATA_DIR/gitea" "$DATA_DIR/gitea/data" "$DATA_DIR/gitea/config"
  install -d -m 0755 "$GITEA_STACK_DIR/runtime" "$GITEA_STACK_DIR/runtime/nginx"
  install -d -m 0711 "$GITEA_STACK_DIR/secrets"
}

# Installs $2 as $1 (owner $3, mode $4) when the content differs; returns 0 when it changed.
install_if_changed() {
  local target=$1 source=$2 owner=$3 mode=$4
  if [ -e "$target" ] && cmp -s "$source" "$target"; then
    return 1
  fi
  install -o "$owner" -g "$owner" -m "$mode" "$source" "$target"
}

install_secrets() {
  local staging service key changed
  staging=$(mktemp -d "$GITEA_STACK_DIR/secrets/.staging.XXXXXX")
  STAGING_DIR=$staging
  # Everything is fetched before anything is replaced: a missing secret changes nothing.
  python3 "$GITEA_STACK_DIR/scripts/fetch-secrets.py" "$GITEA_STACK_DIR/stack-facts.env" "$staging" \
    || die "could not fetch the stack's secrets; nothing was changed"
  for service in "${!SECRETS_OF[@]}"; do
    install -d -m 0700 -o "${SECRET_OWNER[$service]}" -g "${SECRET_OWNER[$service]}" \
      "$GITEA_STACK_DIR/secrets/$service"
    changed=false
    for key in ${SECRETS_OF[$service]}; do
      if install_if_changed "$GITEA_STACK_DIR/secrets/$service/$key" "$staging/$key" \
        "${SECRET_OWNER[$service]}" 0600; then
        changed=true
      fi
    done
    if [ "$changed" = true ] && [ "$service" != host ]; then RESTART_SERVICES+=("$service"); fi
  done
  local smtp_env="$staging/diun-smtp.env"
  printf 'DIUN_NOTIF_MAIL_HOST=%s\nDIUN_NOTIF_MAIL_PORT=%s\n' \
    "$(cat "$staging/smtp-host")" "$(cat "$staging/smtp-port")" >"$smtp_env"
  if install_if_changed "$GITEA_STACK_DIR/runtime/diun-smtp.env" "$smtp_env" 0 0600; then
    RESTART_SERVICES+=(diun)
  fi
}

certificate_exists() { [ -s "$DATA_DIR/letsencrypt/live/$DOMAIN/fullchain.pem" ]; }

# http.conf always; https.conf only once the certificate exists (bootstrap mode before that).
enable_nginx_configs() {
  local name
  for name in http https; do
    if [ "$name" = https ] && ! certificate_exists; then continue; fi
    if install_if_changed "$GITEA_STACK_DIR/runtime/nginx/$name.conf" "$GITEA_STACK_DIR/nginx/$name.conf" 0 0644; then
      NGINX_CHANGED=true
    fi
  done
}

# Pulls only when an image is not on the host yet: a converge with nothing new needs no registry.
pull_missing_images() {
  local image missing=()
  while read -r image; do
    docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
  done < <(compose --profile tools config | sed -n 's/^ *image: *//p' | sort -u)
  if [ ${#missing[@]} -gt 0 ]; then
    log "pulling ${missing[*]}"
    compose --profile tools pull --quiet || die "could not pull ${missing[*]}"
  fi
}

reload_nginx() {
  compose exec -T nginx nginx -t || die "nginx rejected its configuration; it keeps serving the previous one"
  compose exec -T nginx nginx -s reload
}

obtain_first_certificate() {
  certificate_exists && return 0
  log "requesting the first certificate for $DOMAIN"
  compose run --rm --no-deps certbot certonly --domain "$DOMAIN" --cert-name "$DOMAIN" \
    || die "certbot could not obtain a certificate for $DOMAIN (is its DNS pointing here?)"
  rm -f "$DATA_DIR/letsencrypt/renewed"
  enable_nginx_configs
  reload_nginx
}

create_admin_user() {
  local listed output temporary password
  listed=$(compose exec -T gitea gitea admin user list --admin) || die "could not list Gitea's administrators"
  if awk 'NR > 1 { print $2 }' <<<"$listed" | grep -qxF "$ADMIN_USERNAME"; then
    return 0
  fi
  log "creating the Gitea administrator $ADMIN_USERNAME"
  output=$(compose exec -T gitea gitea admin user create --admin --username "$ADMIN_USERNAME" \
    --email "$ADMIN_EMAIL" --random-password --must-change-password=false) \
    || die "Gitea refused to create $ADMIN_USERNAME"
  temporary=$(sed -n "s/^generated random password is '\(.*\)'\$/\1/p" <<<"$output")
  [ -n "$temporary" ] || die "Gitea did not report the temporary password of $ADMIN_USERNAME"
  password=$(<"$GITEA_STACK_DIR/secrets/host/gitea-admin-password")
  # The stack's password replaces the temporary one through the API. curl reads credentials and
  # body from its standard input, so no password ever stands on a command line.
  printf '%s\n' "user = \"$ADMIN_USERNAME:$temporary\"" 'request = "PATCH"' \
    'header = "Content-Type: application/json"' \
    "data = \"{\\\"login_name\\\":\\\"$ADMIN_USERNAME\\\",\\\"source_id\\\":0,\\\"password\\\":\\\"$password\\\",\\\"must_change_password\\\":false}\"" \
    "url = \"http://localhost:3000/api/v1/admin/users/$ADMIN_USERNAME\"" \
    'fail' 'silent' 'show-error' 'output = "/dev/null"' \
    | compose exec -T gitea curl --config - || die "could not set the password of $ADMIN_USERNAME"
}

install_systemd_units() {
  local unit changed=false
  for unit in "$GITEA_STACK_DIR"/systemd/*; do
    if install_if_changed "/etc/systemd/system/${unit##*/}" "$unit" 0 0644; then changed=true; fi
  done
  if [ "$changed" = true ]; then
    systemctl daemon-reload
    systemctl enable --now gitea-stack-certbot-renew.timer
  fi
}

service_state() {
  local container
  container=$(compose ps --quiet "$1")
  [ -n "$container" ] || { echo missing; return; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container"
}

wait_until_healthy() {
  local deadline=$((SECONDS + ${HEALTH_TIMEOUT_SECONDS:-600})) service state waiting
  while :; do
    waiting=()
    for service in postgres gitea nginx diun; do
      state=$(service_state "$service")
      [ "$state" = healthy ] || [ "$state" = running ] || waiting+=("$service=$state")
    done
    [ ${#waiting[@]} -eq 0 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then die "not healthy in time: ${waiting[*]}"; fi
    sleep 3
  done
}

# Fetched secrets are staged in a private directory that goes away however the script ends.
STAGING_DIR=""
trap 'if [ -n "$STAGING_DIR" ]; then rm -rf "$STAGING_DIR"; fi' EXIT

hold_lock
check_free_space
prepare_directories
install_secrets
enable_nginx_configs
pull_missing_images
# Compose recreates exactly the services whose definition changed; the rest keep running.
compose up --detach --remove-orphans postgres gitea nginx diun >/dev/null
for service in "${RESTART_SERVICES[@]}"; do
  log "secrets of $service changed: recreating it"
  compose up --detach --no-deps --force-recreate "$service" >/dev/null
done
if [ "$NGINX_CHANGED" = true ]; then reload_nginx; fi
obtain_first_certificate
install_systemd_units
wait_until_healthy
create_admin_user
log "converged: https://$DOMAIN/"
