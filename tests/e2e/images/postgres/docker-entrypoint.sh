#!/bin/bash
# Entrypoint of the testbed's postgres image, with the official image's contract:
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE  the superuser's password (required on first start)
#   POSTGRES_USER (default postgres)              the superuser initdb creates
#   POSTGRES_DB (default POSTGRES_USER)           a database created on first start
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256) for connections over the network
#   PGDATA                                        the data directory (/var/lib/postgresql/data)
# An empty PGDATA is initialised; an existing one is reused as it is. Started as root, it fixes
# the ownership of PGDATA and the socket directory, then runs as postgres (uid 999).
set -Eeuo pipefail

log() { printf '%s docker-entrypoint.sh: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE (not both).
file_env() {
  local var=$1 file_var="${1}_FILE" default=${2:-}
  if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
    die "both $var and $file_var are set (but are exclusive)"
  fi
  local value=$default
  if [ -n "${!var:-}" ]; then
    value=${!var}
  elif [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || die "$file_var names ${!file_var}, which $(id -un) (uid $(id -u)) cannot read"
    value=$(<"${!file_var}")
  fi
  export "$var=$value"
  unset "$file_var"
}

prepare_directories_as_root() {
  mkdir -p "$PGDATA"
  # Directories between /var/lib/postgresql and PGDATA (18/ of the 18 images' 18/docker) belong to
  # postgres as well.
  local dir=$PGDATA
  while [ "$dir" != /var/lib/postgresql ] && [ "$dir" != / ]; do
    chown postgres:postgres "$dir"
    dir=$(dirname "$dir")
  done
  chmod 0700 "$PGDATA"
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  mkdir -p /var/run/postgresql
  chown postgres:postgres /var/run/postgresql
  chmod 2775 /var/run/postgresql
}

initialise() {
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
    die "the database is uninitialised and no superuser password is set: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
  fi
  log "initialising $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
  local pwfile
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --pgdata="$PGDATA" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host="$auth" >/dev/null
  rm -f "$pwfile"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # A private server on the socket only, to create the database.
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -p 5432" --wait --silent start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql --quiet --no-psqlrc --no-password --set=ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
      --dbname=postgres --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  unset POSTGRES_PASSWORD
  log "initialised; starting the server"
}

if [ "${1:0:1}" = - ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
  if [ "$(id -u)" = 0 ]; then
    prepare_directories_as_root
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialise
  else
    log "reusing the database in $PGDATA (PostgreSQL $(<"$PGDATA/PG_VERSION"))"
    unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE
  fi
fi

exec "$@"
