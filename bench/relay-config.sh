#!/usr/bin/env bash
# relay-config.sh - the relay's benchmark config on stdout (shared by the bench scripts).
#
#   bench/relay-config.sh LISTEN_PORT SINK_PORT DATA_DIR     (the DSN comes from $RELAY_DSN;
#                                                            empty: the embedded PostgreSQL)
# Defaults except: a static route to the sink, TLS off, wide delivery limits, logs at warning.
set -euo pipefail
cat <<TOML
[smtp]
listen = "127.0.0.1:$1"
hostname = "relay.bench"
max_recipients = 1000
[store]
dsn = "${RELAY_DSN:-}"
data_dir = "$3"
pool_max_size = 20
[[pools]]
name = "default"
source_ips = ["127.0.0.1"]
[[routes]]
domains = ["*"]
mode = "static"
hosts = ["127.0.0.1:$2"]
tls = "off"
[delivery]
concurrency = 200
connections_per_destination = 100
messages_per_connection = 100000
[admin]
listen = "127.0.0.1:0"
[log]
level = "warning"
TOML
