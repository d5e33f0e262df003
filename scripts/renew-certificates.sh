#!/usr/bin/env bash
# Renews the TLS certificate when due and makes nginx serve the renewed one.
# certbot's deploy hook (in certbot/cli.ini) leaves a marker only when a certificate was really
# renewed; this script turns that marker into an nginx reload. Run by gitea-stack-certbot-renew.timer.
#
# Usage: renew-certificates.sh [--help]
# Exit codes: 0 nothing due or renewed and reloaded; 1 renewal or reload failed.
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
load_env_file "$GITEA_STACK_DIR/settings.env"

hold_lock
marker="$DATA_DIR/letsencrypt/renewed"
# The timer already spreads runs (RandomizedDelaySec); certbot need not sleep again while we hold the lock.
compose run --rm --no-deps certbot renew --no-random-sleep-on-renew
if [ -e "$marker" ]; then
  compose exec -T nginx nginx -t
  compose exec -T nginx nginx -s reload
  rm -f "$marker"
  log "certificate renewed; nginx reloaded"
else
  log "no certificate was due for renewal"
fi
