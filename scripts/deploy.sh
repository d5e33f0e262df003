#!/usr/bin/env bash
# Converges the host to its bundle: secrets from Secrets Manager into 0600 files, images, services,
# the database role, the first certificate through the HTTP-01 webroot, HTTPS, the first admin user;
# then waits until every service is healthy. Run by `pulumi up` after it copies the bundle; safe to
# run by hand. Idempotent: a second run changes nothing. A change to one service's files recreates or
# reloads that service only (an nginx change never restarts gitea or postgres).
# Rotated secrets are applied where they live: the database password with ALTER ROLE, the admin
# password through Gitea's API. A changed Gitea secret key is refused: Gitea's encrypted data (2FA
# secrets, OAuth2 and push-mirror credentials) can only be read with the key it was written with. A
# PostgreSQL image of another major version than the data's is refused too. A changed acmeServer
# gets a certificate from the new ACME server. A grown data volume gets its filesystem grown first.
# With restoreFrom (RESTORE_FROM_* in stack-facts.env), a data volume that holds no forge yet gets
# the old stack's latest backup run (restore.sh) before Gitea first starts. A running service whose
# image the stack config changed is updated through update.sh (backup, health check, rollback): if
# the new image is not healthy, the service is rolled back and the converge fails.
#
# Usage: deploy.sh [--help] [--check]
#   --check  only the checks that refuse a converge, changing nothing (the PostgreSQL major, the
#            secret key). `pulumi up` runs it from the uploaded bundle before that replaces the
#            bundle in use, so a refused bundle never becomes the live one.
# Environment: AWS_ENDPOINT_URL (optional) another AWS API endpoint, as boto3 reads it;
#              HEALTH_TIMEOUT_SECONDS (default 600); MIN_FREE_MIB (default 1024);
#              GROW_WAIT_SECONDS (default 300) how long to wait for a grown data volume to show
#              its new size (grow-data-filesystem.sh).
# Exit codes: 0 converged and healthy (--check: the converge may go ahead); 1 a step failed or the
#             converge was refused: it is logged, and what runs keeps running; 2 bad usage.
set -euo pipefail
usage() { sed -n '2,26s/^# \{0,1\}//p' "$0"; }
mode=converge
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --check) mode=check ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"
load_env_file "$GITEA_STACK_DIR/stack-facts.env"

# Grafana comes up last (start_grafana): its sign-in needs Gitea's OAuth2 application.
SERVICES=(postgres gitea nginx docker-socket-proxy diun prometheus alertmanager node-exporter postgres-exporter
  blackbox-exporter cadvisor loki alloy)
# Owners of each service's secret files: the user each image runs as.
declare -A SECRET_OWNER=([postgres]=999 [gitea]=1000 [diun]=0 [host]=0 [prometheus]=65534 [alertmanager]=65534
  [postgres-exporter]=65534 [grafana]=472)
declare -A SECRETS_OF=(
  [postgres]="postgres-password"
  [gitea]="postgres-password gitea-secret-key gitea-internal-token metrics-token smtp-host smtp-port smtp-username smtp-password"
  [diun]="smtp-username smtp-password"
  [host]="restic-password runner-registration-token restore-from-password"
  [prometheus]="metrics-token"
  [alertmanager]="smtp-password"
  [postgres-exporter]="postgres-exporter-password"
  [grafana]="grafana-admin-password"
)
# Files this script makes in a service's secrets directory from the fetched ones; in its digest too.
declare -A MADE_SECRETS_OF=([alertmanager]="alertmanager.yml" [grafana]="grafana-oauth-client-id grafana-oauth-client-secret")
# Staged only when the stack config asks for them (restoreFrom); installed when there.
OPTIONAL_SECRETS=" restore-from-password "
# Services that read their secret files when they start. Each gets a digest of its files in an env
# file compose reads (runtime/<service>.env), so a changed secret changes the service's definition
# and `compose up` recreates it: in this run or, if this one fails half-way, in the next. PostgreSQL
# reads its password file only when it creates a cluster; sync_database_role applies a new one.
RECREATED_ON_SECRET_CHANGE=(gitea diun prometheus alertmanager postgres-exporter grafana)
ADMIN_PASSWORD_FILE="$GITEA_STACK_DIR/secrets/host/gitea-admin-password"
# Fingerprints of the secret key the forge's data was encrypted with and of the admin password last
# applied; on the data volume, so they outlive the instance.
SECRET_KEY_FINGERPRINT="$DATA_DIR/state/gitea-secret-key.sha256"
ADMIN_PASSWORD_FINGERPRINT="$DATA_DIR/state/gitea-admin-password.sha256"
DATA_BOUND_SECRETS="$DATA_DIR/state/gitea-secrets"
RESTORE_PENDING="$DATA_DIR/state/restore-from.pending"
# Grafana's OAuth2 client in Gitea (its id and secret, which Gitea shows only once) and the
# fingerprint of the Grafana admin password last applied: on the data volume, with Gitea's database.
GRAFANA_OAUTH_DIR="$DATA_DIR/state/grafana-oauth"
GRAFANA_OAUTH_APP="Grafana (gitea-stack)"
GRAFANA_PASSWORD_FINGERPRINT="$DATA_DIR/state/grafana-admin-password.sha256"
NGINX_CHANGED=false

check_free_space() {
  local free_mib
  free_mib=$(df --output=avail -m "$DATA_DIR" | tail -n 1 | tr -d ' ')
  if [ "$free_mib" -lt "${MIN_FREE_MIB:-1024}" ]; then
    die "only ${free_mib} MiB free on $DATA_DIR (need ${MIN_FREE_MIB:-1024}); nothing was changed"
  fi
}

prepare_directories() {
  install -d -m 0755 "$DATA_DIR/letsencrypt" "$DATA_DIR/acme-webroot" "$DATA_DIR/diun" "$CERTBOT_LOGS_DIR"
  install -d -m 0700 "$DATA_DIR/state"
  # 0755, not 0700: images whose postgres user is not 999 (Alpine's is 70) must reach PGDATA below
  # it, which the image's entrypoint makes 0700 and gives to its own postgres user.
  install -d -m 0755 -o 999 -g 999 "$DATA_DIR/postgres"
  # Before 18, the image's PGDATA itself is the mount (see docker-compose.yml); it must exist as a
  # directory of the data volume, not be created by Docker as root.
  if [ -n "${POSTGRES_MAJOR:-}" ] && [ "$POSTGRES_MAJOR" -lt 18 ]; then
    install -d -m 0700 -o 999 -g 999 "$DATA_DIR/postgres/data"
  fi
  install -d -m 0750 -o 1000 -g 1000 "$DATA_DIR/gitea" "$DATA_DIR/gitea/data"
  # app.ini holds the database and SMTP passwords: only Gitea's user may enter its directory.
  install -d -m 0700 -o 1000 -g 1000 "$DATA_DIR/gitea/config"
  # The observability plane's data, each owned by the user its image runs as.
  install -d -m 0750 -o 65534 -g 65534 "$DATA_DIR/prometheus" "$DATA_DIR/alertmanager"
  install -d -m 0750 -o 472 -g 472 "$DATA_DIR/grafana"
  install -d -m 0750 -o 10001 -g 10001 "$DATA_DIR/loki"
  install -d -m 0700 "$DATA_DIR/alloy" "$GRAFANA_OAUTH_DIR"
  # health-check.sh's metrics, which node_exporter (nobody) reads.
  install -d -m 0755 "$DATA_DIR/metrics"
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

fingerprint() { sha256sum <"$1" | cut -d ' ' -f 1; }

# Gitea cannot rotate its SECRET_KEY: data it encrypted with the old key would be unreadable.
refuse_a_changed_secret_key() {
  local staged=$STAGING_DIR/gitea-secret-key
  if [ -s "$SECRET_KEY_FINGERPRINT" ] && [ "$(fingerprint "$staged")" != "$(cat "$SECRET_KEY_FINGERPRINT")" ]; then
    die "gitea-secret-key in Secrets Manager ($SECRET_GITEA_SECRET_KEY) is not the key this forge's data" \
      "was encrypted with; Gitea cannot rotate it (2FA secrets and stored credentials would become" \
      "unreadable), so nothing was changed. Put the previous value back (it is the secret's AWSPREVIOUS" \
      "version: aws secretsmanager get-secret-value --version-stage AWSPREVIOUS) and run pulumi up again"
  fi
}

# PostgreSQL's files work only with the major version that wrote them, and an image of another major
# would not even look at them: from 18 on, each major keeps PGDATA in a directory of its own
# (postgres/<major>/docker; up to 17: postgres/data) and would start an empty cluster beside them.
# A newer major than the data's, while the old one runs, is an upgrade: update.sh dumps the
# database and restores it into a new cluster of the new major (update_changed_images below).
refuse_another_postgres_major() {
  local major found
  found=$(postgres_data_majors | paste -s -d / -)
  [ -n "$found" ] || return 0  # a new forge: the image creates its cluster
  for major in ${found//\// }; do
    if [ "$major" = "${POSTGRES_MAJOR:-}" ]; then return 0; fi
  done
  major=$found
  if [ -z "${POSTGRES_MAJOR:-}" ]; then
    die "the configured PostgreSQL image $POSTGRES_IMAGE names no major version in its tag, and the data" \
      "volume holds PostgreSQL $major data; nothing was changed. Give the postgres entry of" \
      "gitea-stack:images a $major.x tag, then run pulumi up again"
  fi
  if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt "$POSTGRES_MAJOR" ]; then
    # docker, not compose: --check runs from the uploaded bundle, which compose cannot load yet
    # (its runtime/ files are written by the converge).
    if [ -n "$(docker ps --quiet --filter label=com.docker.compose.project=gitea-stack \
      --filter label=com.docker.compose.service=postgres)" ]; then
      log "the data volume holds PostgreSQL $major data: it is upgraded to $POSTGRES_MAJOR by a dump and restore" \
        "into a new cluster (update.sh), keeping the old one until the new one is healthy"
      return 0
    fi
    die "the data volume holds PostgreSQL $major data and the configured image $POSTGRES_IMAGE is PostgreSQL" \
      "$POSTGRES_MAJOR, but no PostgreSQL runs to dump the data from; nothing was changed. Set the postgres" \
      "entry of gitea-stack:images back to the $major.x tag the data was last used with and run pulumi up, then" \
      "set the new tag and run pulumi up again (docs/runbooks/update.md, \"PostgreSQL major upgrade\")"
  fi
  die "the data volume holds PostgreSQL $major data, but the configured image $POSTGRES_IMAGE is PostgreSQL" \
    "$POSTGRES_MAJOR, an older major, which cannot read it; nothing was changed. Set the postgres entry of" \
    "gitea-stack:images back to a $major.x tag (or newer), then run pulumi up again"
}

# Fetches every secret into a private staging directory below $1; nothing is installed yet.
fetch_secrets() {
  STAGING_DIR=$(mktemp -d "$1/.staging.XXXXXX")
  python3 "$GITEA_STACK_DIR/scripts/fetch-secrets.py" "$GITEA_STACK_DIR/stack-facts.env" "$STAGING_DIR" \
    || die "could not fetch the stack's secrets; nothing was changed"
}

# A forge restored from another stack's backups keeps the secret key and internal token its data
# was made with (restore.sh puts them in DATA_DIR/state/gitea-secrets): they win over the stack's.
use_data_bound_secrets() {
  local name
  for name in gitea-secret-key gitea-internal-token; do
    if [ -s "$DATA_BOUND_SECRETS/$name" ]; then cp "$DATA_BOUND_SECRETS/$name" "$STAGING_DIR/$name"; fi
  done
}

# Everything that refuses a converge, before anything is changed; staging below $1.
check_before_changing() {
  refuse_another_postgres_major
  fetch_secrets "$1"
  use_data_bound_secrets
  refuse_a_changed_secret_key
}

# restoreFrom: a new forge (no secret key recorded yet) is marked for a restore from the old stack's
# bucket. The mark stays until a restore succeeds, so a converge that failed tries again.
mark_a_pending_restore() {
  if [ -n "${RESTORE_FROM_BUCKET:-}" ] && [ ! -s "$SECRET_KEY_FINGERPRINT" ]; then
    log "restoreFrom: this data volume holds no forge yet; the backups in $RESTORE_FROM_BUCKET will be restored"
    touch "$RESTORE_PENDING"
  fi
}

# The latest complete backup run of the old stack, restored before Gitea first starts.
restore_from_old_stack() {
  [ -e "$RESTORE_PENDING" ] || return 0
  log "restoreFrom: restoring the latest backup run of s3://$RESTORE_FROM_BUCKET before Gitea first starts"
  "$GITEA_STACK_DIR/scripts/restore.sh" --no-start --bucket "$RESTORE_FROM_BUCKET" \
    --region "${RESTORE_FROM_REGION:-$AWS_REGION}" --password-file "$GITEA_STACK_DIR/secrets/host/restore-from-password" \
    || die "gitea-stack:restoreFrom: could not restore from s3://$RESTORE_FROM_BUCKET (restore.sh says why above:" \
      "a wrong password, an empty or unreadable bucket); Gitea was not started and the data volume holds" \
      "no forge. Fix restoreFrom (bucket, passwordSecret, region), then run pulumi up again"
  rm -f "$RESTORE_PENDING"
  # The restored administrator keeps the old forge's password: the stack's is not applied to it.
  fingerprint "$STAGING_DIR/gitea-admin-password" >"$ADMIN_PASSWORD_FINGERPRINT"
  # Gitea starts with the restored forge's secret key and internal token (restore.sh installed them).
  use_data_bound_secrets
  write_service_env gitea
}

# Installs the secrets check_before_changing fetched and checked: a missing one changed nothing.
install_secrets() {
  local staging=$STAGING_DIR service key
  for service in "${!SECRETS_OF[@]}"; do
    install -d -m 0700 -o "${SECRET_OWNER[$service]}" -g "${SECRET_OWNER[$service]}" \
      "$GITEA_STACK_DIR/secrets/$service"
    for key in ${SECRETS_OF[$service]}; do
      if [[ ! -e $staging/$key && $OPTIONAL_SECRETS == *" $key "* ]]; then continue; fi
      install_if_changed "$GITEA_STACK_DIR/secrets/$service/$key" "$staging/$key" \
        "${SECRET_OWNER[$service]}" 0600 || true
    done
  done
  [ -s "$SECRET_KEY_FINGERPRINT" ] || fingerprint "$staging/gitea-secret-key" >"$SECRET_KEY_FINGERPRINT"
  install_alertmanager_config
  install_grafana_client
  for service in "${RECREATED_ON_SECRET_CHANGE[@]}"; do
    write_service_env "$service"
  done
}

# runtime/<service>.env: the digest of the service's secret files, and what else it needs at start.
write_service_env() {
  local service=$1 keys made key digest env_file="$STAGING_DIR/$1.env"
  read -ra keys <<<"${SECRETS_OF[$service]}"
  read -ra made <<<"${MADE_SECRETS_OF[$service]:-}"
  for key in "${made[@]}"; do
    if [ -e "$GITEA_STACK_DIR/secrets/$service/$key" ]; then keys+=("$key"); fi
  done
  digest=$(cd "$GITEA_STACK_DIR/secrets/$service" && cat -- "${keys[@]}" | sha256sum | cut -d ' ' -f 1)
  printf 'GITEA_STACK_SECRETS_DIGEST=%s\n' "$digest" >"$env_file"
  if [ "$service" = diun ]; then  # the SES SMTP endpoint, which depends on the region
    printf 'DIUN_NOTIF_MAIL_HOST=%s\nDIUN_NOTIF_MAIL_PORT=%s\n' \
      "$(cat "$STAGING_DIR/smtp-host")" "$(cat "$STAGING_DIR/smtp-port")" >>"$env_file"
  fi
  install_if_changed "$GITEA_STACK_DIR/runtime/$service.env" "$env_file" 0 0600 || true
}

# Alertmanager reads no variables in its config file: a private copy of the bundle's gets the SES
# SMTP endpoint and user name, which depend on the region and the SMTP user (the password stays in
# a file of its own).
install_alertmanager_config() {
  local text staged=$STAGING_DIR/alertmanager.yml
  text=$(<"$GITEA_STACK_DIR/alertmanager/alertmanager.yml")
  # Quoted replacements: taken literally, whatever they hold.
  text=${text//SMTP_SMARTHOST_FROM_SECRET/"$(<"$STAGING_DIR/smtp-host"):$(<"$STAGING_DIR/smtp-port")"}
  text=${text//SMTP_USERNAME_FROM_SECRET/"$(<"$STAGING_DIR/smtp-username")"}
  printf '%s\n' "$text" >"$staged"
  install_if_changed "$GITEA_STACK_DIR/secrets/alertmanager/alertmanager.yml" "$staged" 65534 0600 || true
}

# Grafana's OAuth2 client id and secret, where Grafana reads them (once ensure_grafana_sign_in made them).
install_grafana_client() {
  local key
  for key in client-id client-secret; do
    if [ -s "$GRAFANA_OAUTH_DIR/$key" ]; then
      install_if_changed "$GITEA_STACK_DIR/secrets/grafana/grafana-oauth-$key" "$GRAFANA_OAUTH_DIR/$key" 472 0600 || true
    fi
  done
}

# Calls Gitea's API as the administrator with a token: METHOD PATH [JSON BODY] on stdin of curl's
# config, never on a command line. Prints the answer; fails on an HTTP error.
gitea_api() {
  local token=$1 method=$2 path=$3 body=${4:-}
  {
    printf '%s\n' "header = \"Authorization: token $token\"" "request = \"$method\"" \
      "url = \"http://localhost:3000/api/v1$path\"" 'fail' 'silent' 'show-error'
    if [ -n "$body" ]; then
      printf '%s\n' 'header = "Content-Type: application/json"' "data = $(quoted "$body")"
    fi
  } | compose exec -T gitea curl --config -
}

# Sign-in to Grafana through the forge: an OAuth2 application of the administrator in Gitea, whose
# client id and secret Grafana reads. Gitea shows a client secret only when it makes one, so they are
# kept on the data volume; made (or, for an application of that name left by a restored forge, made
# anew) only when they are missing there or were made for another domain's redirect URI. The
# administrator's API token for it comes from Gitea's CLI, since the password may have changed or
# have a second factor; nobody keeps that token.
ensure_grafana_sign_in() {
  local redirect="https://$DOMAIN/grafana/login/generic_oauth"
  # Kept from before, or just restored with Gitea's database (restoreFrom): only installed.
  if ! [ -s "$GRAFANA_OAUTH_DIR/client-id" ] || ! [ -s "$GRAFANA_OAUTH_DIR/client-secret" ] \
    || [ "$(cat "$GRAFANA_OAUTH_DIR/redirect-uri" 2>/dev/null)" != "$redirect" ]; then
    register_grafana_client "$redirect"
  fi
  install_grafana_client
  write_service_env grafana
}

# Registers Grafana's OAuth2 application for redirect URI $1 and keeps its client in GRAFANA_OAUTH_DIR.
register_grafana_client() {
  local redirect=$1 token body listed app_id answer
  log "registering Grafana as an OAuth2 application of $ADMIN_USERNAME in Gitea (sign-in through the forge)"
  token=$(compose exec -T gitea gitea admin user generate-access-token --username "$ADMIN_USERNAME" \
    --token-name "gitea-stack-grafana-setup-$(date -u +%Y%m%dT%H%M%S)" --scopes write:user --raw 2>/dev/null) \
    || die "Gitea did not make an API token for $ADMIN_USERNAME; Grafana's sign-in could not be registered"
  body="{\"name\":$(quoted "$GRAFANA_OAUTH_APP"),\"redirect_uris\":[$(quoted "$redirect")],\"confidential_client\":true,\"skip_secondary_authorization\":true}"
  listed=$(gitea_api "$token" GET "/user/applications/oauth2?limit=50") || die "could not list the OAuth2 applications of $ADMIN_USERNAME"
  app_id=$(python3 -c 'import json, sys; print(next((str(a["id"]) for a in json.load(sys.stdin) if a["name"] == sys.argv[1]), ""))' \
    "$GRAFANA_OAUTH_APP" <<<"$listed")
  if [ -n "$app_id" ]; then
    answer=$(gitea_api "$token" PATCH "/user/applications/oauth2/$app_id" "$body") || die "could not renew Grafana's OAuth2 application in Gitea"
  else
    answer=$(gitea_api "$token" POST /user/applications/oauth2 "$body") || die "could not create Grafana's OAuth2 application in Gitea"
  fi
  python3 -c 'import json, os, sys
answer = json.load(sys.stdin)
for key, field in (("client-id", "client_id"), ("client-secret", "client_secret")):
    descriptor = os.open(os.path.join(sys.argv[1], key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(answer[field])' "$GRAFANA_OAUTH_DIR" <<<"$answer" || die "Gitea's answer held no OAuth2 client"
  # A new domain (a forge restored elsewhere) registers the application anew with its redirect.
  printf '%s\n' "$redirect" >"$GRAFANA_OAUTH_DIR/redirect-uri"
}

# Grafana applies its admin password only when it creates its database: a new or rotated
# grafana-admin-password is set with Grafana's CLI (the password on stdin).
apply_grafana_admin_password() {
  local file="$GITEA_STACK_DIR/secrets/grafana/grafana-admin-password"
  if [ "$(fingerprint "$file")" = "$(cat "$GRAFANA_PASSWORD_FINGERPRINT" 2>/dev/null)" ]; then return 0; fi
  compose exec -T grafana grafana cli --homepath /usr/share/grafana admin reset-admin-password --password-from-stdin \
    <"$file" >/dev/null || die "could not set Grafana's admin password"
  fingerprint "$file" >"$GRAFANA_PASSWORD_FINGERPRINT"
}

start_grafana() {
  ensure_grafana_sign_in
  compose up --detach grafana >/dev/null
  wait_until_healthy grafana
  apply_grafana_admin_password
}

certificate_exists() { [ -s "$DATA_DIR/letsencrypt/live/$DOMAIN/fullchain.pem" ]; }

# The ACME server the current certificate came from, as certbot recorded it.
certificate_server() {
  sed -n 's/^server *= *//p' "$DATA_DIR/letsencrypt/renewal/$DOMAIN.conf" 2>/dev/null || true
}

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

# Pulls only the images not on the host yet: a converge with nothing new needs no registry, and the
# tags of running images do not move (a rebuilt image of a running tag is update.sh's to apply).
pull_missing_images() {
  local image
  while read -r image; do
    if docker image inspect "$image" >/dev/null 2>&1; then continue; fi
    log "pulling $image"
    docker pull --quiet "$image" >/dev/null || die "could not pull $image (does the tag exist? does the host reach its registry?)"
  done < <(compose --profile tools config --images | sort -u)
}

reload_nginx() {
  compose exec -T nginx nginx -t || die "nginx rejected its configuration; it keeps serving the previous one"
  compose exec -T nginx nginx -s reload
}

# A value as a double-quoted string for a curl config file or JSON: backslashes and quotes escaped.
quoted() {
  local value=${1//\\/\\\\}
  printf '"%s"' "${value//\"/\\\"}"
}

# The database role (lib.sh's set_database_role), set on every converge, so a rotated secret or a
# cluster restored elsewhere always matches.
sync_database_role() {
  set_database_role && return 0
  if [ "$(compose exec -T postgres psql --no-psqlrc --tuples-only --no-align --username=gitea --dbname=gitea \
    --command='SELECT rolname FROM pg_roles WHERE oid = 10' 2>/dev/null)" = gitea ]; then
    die "the database cluster was created with gitea as its superuser (gitea-stack before 0.2), which" \
      "this version does not take over; nothing was changed. Move the data into a new cluster (dump and" \
      "restore) before running this version"
  fi
  die "could not set up the database role gitea"
}

obtain_certificate() {
  local previous renew=()
  if certificate_exists; then
    previous=$(certificate_server)
    if [ -z "$previous" ] || [ "$previous" = "$ACME_SERVER" ]; then return 0; fi
    log "the certificate for $DOMAIN comes from $previous; requesting one from $ACME_SERVER"
    renew=(--force-renewal)
  else
    log "requesting the first certificate for $DOMAIN"
  fi
  compose run --rm --no-deps certbot certonly --domain "$DOMAIN" --cert-name "$DOMAIN" "${renew[@]}" \
    || die "certbot could not obtain a certificate for $DOMAIN from $ACME_SERVER (is its DNS pointing" \
      "here? the log is in $CERTBOT_LOGS_DIR); nginx keeps serving what it served"
  rm -f "$DATA_DIR/letsencrypt/renewed"
  enable_nginx_configs
  reload_nginx
}

# Asks Gitea whether it accepts `password` for the administrator (credentials on stdin, never argv).
admin_accepts() {
  printf '%s\n' "user = $(quoted "$ADMIN_USERNAME:$1")" 'url = "http://localhost:3000/api/v1/user"' \
    'fail' 'silent' 'output = "/dev/null"' | compose exec -T gitea curl --config -
}

# Sets the administrator's password to $2, authenticating with $1, through the API: curl reads
# credentials and body from its standard input, so no password ever stands on a command line.
set_admin_password() {
  local body
  body="{\"login_name\":$(quoted "$ADMIN_USERNAME"),\"source_id\":0,\"password\":$(quoted "$2"),\"must_change_password\":false}"
  printf '%s\n' "user = $(quoted "$ADMIN_USERNAME:$1")" 'request = "PATCH"' \
    'header = "Content-Type: application/json"' "data = $(quoted "$body")" \
    "url = \"http://localhost:3000/api/v1/admin/users/$ADMIN_USERNAME\"" \
    'fail' 'silent' 'show-error' 'output = "/dev/null"' \
    | compose exec -T gitea curl --config -
}

create_admin_user() {
  local output temporary
  log "creating the Gitea administrator $ADMIN_USERNAME"
  output=$(compose exec -T gitea gitea admin user create --admin --username "$ADMIN_USERNAME" \
    --email "$ADMIN_EMAIL" --random-password --must-change-password=false) \
    || die "Gitea refused to create $ADMIN_USERNAME"
  temporary=$(sed -n "s/^generated random password is '\(.*\)'\$/\1/p" <<<"$output")
  if [ -z "$temporary" ] || ! set_admin_password "$temporary" "$1"; then
    # An administrator nobody knows the password of helps no one: start over at the next converge.
    compose exec -T gitea gitea admin user delete --username "$ADMIN_USERNAME" >/dev/null || true
    die "could not set the password of the new administrator $ADMIN_USERNAME; it was removed again" \
      "and the next converge creates it anew"
  fi
}

# The first administrator, once; afterwards a new gitea-admin-password is applied to it. Nothing
# else touches the account: a password changed in Gitea or 2FA stays as the administrator made it.
ensure_admin_user() {
  local listed staged=$STAGING_DIR/gitea-admin-password
  listed=$(compose exec -T gitea gitea admin user list --admin) || die "could not list Gitea's administrators"
  if ! awk 'NR > 1 { print $2 }' <<<"$listed" | grep -qxF "$ADMIN_USERNAME"; then
    create_admin_user "$(<"$staged")"
  elif [ "$(fingerprint "$staged")" = "$(cat "$ADMIN_PASSWORD_FINGERPRINT" 2>/dev/null)" ] \
    || { [ -e "$ADMIN_PASSWORD_FILE" ] && cmp -s "$staged" "$ADMIN_PASSWORD_FILE"; }; then
    :  # this value was applied before (also before this instance, if it is a new one)
  elif admin_accepts "$(<"$staged")"; then
    :  # already the stack's value (set by hand)
  elif [ -e "$ADMIN_PASSWORD_FILE" ] && admin_accepts "$(<"$ADMIN_PASSWORD_FILE")"; then
    log "gitea-admin-password changed: setting the new password of $ADMIN_USERNAME"
    set_admin_password "$(<"$ADMIN_PASSWORD_FILE")" "$(<"$staged")" \
      || die "could not set the new password of $ADMIN_USERNAME; the previous one still works"
  else
    die "gitea-admin-password changed, but Gitea accepts neither the new nor the previous value for" \
      "$ADMIN_USERNAME over its API (the password was changed in Gitea, or 2FA is on); nothing else" \
      "was changed. Either put the previous value back in Secrets Manager, or sign in and set the" \
      "password to the new value; then run pulumi up again"
  fi
  # Recorded only once applied, so an interrupted converge tries again with the previous value.
  install -o 0 -g 0 -m 0600 "$staged" "$ADMIN_PASSWORD_FILE"
  fingerprint "$staged" >"$ADMIN_PASSWORD_FINGERPRINT"
}

install_systemd_units() {
  local unit relative changed=false
  while read -r unit; do
    relative=${unit#"$GITEA_STACK_DIR/systemd/"}
    install -d -m 0755 "/etc/systemd/system/$(dirname "$relative")"
    if install_if_changed "/etc/systemd/system/$relative" "$unit" 0 0644; then changed=true; fi
  done < <(find "$GITEA_STACK_DIR/systemd" -type f | sort)
  if [ "$changed" = true ]; then
    systemctl daemon-reload
    systemctl enable --now gitea-stack-certbot-renew.timer
    systemctl enable --now gitea-stack-backup.timer
    systemctl enable --now gitea-stack-backup-check.timer
    systemctl enable --now gitea-stack-restore-drill.timer
    systemctl enable --now gitea-stack-update.timer
    systemctl enable --now gitea-stack-health-check.timer
  fi
}

# Gitea writes app.ini with its default mode at each start; its directory is private anyway.
protect_app_ini() {
  local app_ini="$DATA_DIR/gitea/config/app.ini"
  if [ -f "$app_ini" ]; then chmod 0600 "$app_ini"; fi
}

# An image update.sh applied on this host stays until the stack config names the same tag or a
# newer one: the config's tag is a floor, and a newer release applied here (Gitea's migrated
# database cannot go back) is never undone by a converge.
reconcile_applied_images() {
  local service applied configured newest
  while read -r service applied; do
    [ -n "$service" ] || continue
    configured=$(configured_image "$service")
    newest=$(printf '%s\n' "$(tag_of "$applied")" "$(tag_of "$configured")" | sort -V | tail -n 1)
    if [ -z "$configured" ] || [ "$newest" = "$(tag_of "$configured")" ]; then
      set_applied_image "$service" ""
    else
      log "warning: $service runs $applied (applied on this host by update.sh), newer than the stack config's" \
        "$configured; it keeps running it. Put $(tag_of "$applied") in gitea-stack:images to make the config say so"
    fi
  done < <(cat "$DATA_DIR/state/images.conf" 2>/dev/null || true)
  write_image_overrides
}

# A running service whose image is not the one compose would now give it (a new tag in the stack
# config) goes through update.sh: a backup first, then recreate, health check, and a rollback to
# what ran (for gitea with its database) if the new image is not healthy. Then the converge fails.
update_changed_images() {
  local service container running wanted code
  for service in "$@"; do
    container=$(compose ps --quiet "$service")
    [ -n "$container" ] || continue
    running=$(docker inspect --format '{{.Config.Image}}' "$container")
    wanted=$(effective_image "$service")
    if [ -z "$running" ] || [ "$running" = "$wanted" ]; then continue; fi
    log "$service runs $running and the stack config names $wanted: updating it through update.sh"
    code=0
    "$GITEA_STACK_DIR/scripts/update.sh" --yes --image "$wanted" "$service" || code=$?
    case $code in
      0) ;;
      1) die "$wanted was not healthy as $service; update.sh rolled $service back to $running, which serves" \
        "again (the log above and the mail say why). Nothing else was changed. Set the $service entry of" \
        "gitea-stack:images back or to a fixed release, then run pulumi up again" ;;
      6) die "$wanted was not healthy as $service and the rollback to $running failed too: $service is down." \
        "See docs/runbooks/update.md (\"Failed update\") first" ;;
      *) die "update.sh did not update $service to $wanted (exit code $code; the log above says why);" \
        "$service keeps running $running" ;;
    esac
  done
}

# Fetched secrets are staged in a private directory that goes away however the script ends.
STAGING_DIR=""
trap 'if [ -n "$STAGING_DIR" ]; then rm -rf "$STAGING_DIR"; fi' EXIT

if [ "$mode" = check ]; then
  check_before_changing "${TMPDIR:-/tmp}"
  log "checked $GITEA_STACK_DIR: nothing refuses this converge"
  exit 0
fi
hold_lock
install -d -m 0711 "$GITEA_STACK_DIR/secrets"
check_before_changing "$GITEA_STACK_DIR/secrets"
# Before anything else changes: a grown volume also gives check_free_space its new room.
"$GITEA_STACK_DIR/scripts/grow-data-filesystem.sh" "$DATA_DIR" "${DATA_VOLUME_GIB:-}"
check_free_space
prepare_directories
mark_a_pending_restore
install_secrets
enable_nginx_configs
install_systemd_units
reconcile_applied_images
pull_missing_images
update_changed_images postgres
# The database first: Gitea may only connect once its role has the current password.
compose up --detach postgres >/dev/null
wait_until_healthy postgres
sync_database_role
restore_from_old_stack
update_changed_images gitea nginx docker-socket-proxy diun prometheus alertmanager node-exporter postgres-exporter \
  blackbox-exporter cadvisor grafana loki alloy
gitea_before=$(compose ps --quiet gitea)
# Compose recreates exactly the services whose definition (secret digests included) changed; the
# rest keep running.
compose up --detach --remove-orphans "${SERVICES[@]}" >/dev/null
# A new gitea container may have a new address; a reload also drops nginx's cached lookup at once.
if [ "$NGINX_CHANGED" = true ] || [ "$(compose ps --quiet gitea)" != "$gitea_before" ]; then reload_nginx; fi
obtain_certificate
wait_until_healthy "${SERVICES[@]}"
ensure_admin_user
start_grafana
protect_app_ini
log "converged: https://$DOMAIN/ (dashboards: https://$DOMAIN/grafana/)"
