#!/usr/bin/env bash
# relay-config.sh - the relay's benchmark config on stdout (shared by the bench scripts).
#
#   bench/relay-config.sh LISTEN_PORT SINK_PORT DATA_DIR [PROFILE]
#                         (the DSN comes from $RELAY_DSN; empty: the embedded PostgreSQL)
#
# PROFILE "shipped" (the default): the shipped config.toml's settings and the built-in
# defaults, except what a benchmark must change: the listener, a static route to the sink
# (the shipped route looks up MX records), TLS off (the sink offers none; "opportunistic"
# would send in clear all the same) and the admin listener on a free port. These are the
# headline numbers: what a user who installs the relay gets.
# PROFILE "tuned": shipped, plus wide delivery limits for a single upstream (200 in flight,
# 100 connections to it, connections kept for the whole run), 20 queue connections to
# PostgreSQL per process and logs at warning. Labelled
# "tuned" wherever it is reported.
set -euo pipefail
PROFILE=${4:-shipped}
case $PROFILE in shipped | tuned) ;; *) echo "relay-config.sh: PROFILE is shipped or tuned, not '$PROFILE'" >&2; exit 2 ;; esac
POOL=""
[[ $PROFILE == tuned ]] && POOL="pool_max_size = 20"
cat <<TOML
[smtp]
listen = "127.0.0.1:$1"
hostname = "relay.bench"
[store]
dsn = "${RELAY_DSN:-}"
data_dir = "$3"
$POOL
[[pools]]
name = "default"
source_ips = ["127.0.0.1"]
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:$2"]
tls = "off"
[admin]
listen = "127.0.0.1:0"
TOML
if [[ $PROFILE == tuned ]]; then
    cat <<TOML
[delivery]
concurrency = 200
connections_per_destination = 100
messages_per_connection = 100000
[shaping]
connections = 200
[log]
level = "warning"
TOML
else
    cat <<TOML
[log]
level = "info"
TOML
fi
