#!/bin/sh
# The upstream image's entrypoint, /run.sh: starts the server with the GF_PATHS_* of the image.
set -eu
exec grafana server --homepath="$GF_PATHS_HOME" --config="$GF_PATHS_CONFIG" --packaging=docker "$@"
