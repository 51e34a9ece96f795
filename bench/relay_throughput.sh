#!/usr/bin/env bash
# relay_throughput.sh - bounce-relay end to end against Postfix, the bare Python proxy and
# the physical limit, in ONE peer-bench invocation (interleaved runs, medians), then the
# ratios the performance targets are stated in.
#
#   bench/relay_throughput.sh [-m MSGS] [-s SESSIONS] [-l BYTES] [-n REPS] [--tuned] [--smoke]
#
# Targets: direct (smtp-source -> smtp-sink), postfix (a private throw-away instance),
# proxy (shared/bench/baseline_relay.py --mode sync --uvloop: aiosmtpd -> aiosmtplib, stores
# nothing) and relay (`bounce-relay serve`: every message durable in PostgreSQL before its 250,
# suppression checked, every delivery recorded). The relay uses the PostgreSQL of
# $BOUNCE_RELAY_TEST_DSN (a fresh database per invocation, dropped afterwards) or, when unset,
# its embedded server. The relay runs the shipped defaults (bench/relay-config.sh); --tuned
# adds a second relay, "tuned" (wide delivery limits, logs at warning: relay-config.sh's tuned
# profile, on a database of its own), to the same interleaved runs.
# --smoke: 200 messages, 1 rep, relay and direct only (CI runs this so the script can't rot).
# Needs root the first time (peer-bench installs postfix and time from Debian).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SHARED=${PEER_BENCH_DIR:-$REPO/../shared/bench}
MSGS=20000 SESSIONS=50 SIZES=2048 REPS=3 SMOKE=0 TUNED=0
while (($# > 0)); do
    case $1 in
        -m) MSGS=$2; shift 2 ;;
        -s) SESSIONS=$2; shift 2 ;;
        -l) SIZES=$2; shift 2 ;;
        -n) REPS=$2; shift 2 ;;
        --tuned) TUNED=1; shift ;;
        --smoke) SMOKE=1 MSGS=200 REPS=1 SESSIONS=5; shift ;;
        *) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[[ -x $SHARED/peer-bench.sh ]] || { echo "relay_throughput: no peer-bench.sh in $SHARED (set PEER_BENCH_DIR)" >&2; exit 2; }
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3); fi
WORK=$(mktemp -d /tmp/relay-throughput.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
DBS=()

# A relay's start command: peer-bench exports SINK_PORT and stops the session at the end.
# Each relay has a database of its own (a relay delivers whatever its database queues).
relay_target() {  # NAME PORT PROFILE
    local dsn=""
    if [[ -n ${BOUNCE_RELAY_TEST_DSN:-} ]]; then
        local db=br_bench_${1}_$$
        "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "$db"
        "$PY" "$HERE/support.py" createdb "$BOUNCE_RELAY_TEST_DSN" "$db"
        DBS+=("$db")
        dsn=$("$PY" "$HERE/support.py" dsn "$BOUNCE_RELAY_TEST_DSN" "$db")
    fi
    cat > "$WORK/start-$1.sh" <<EOF
#!/usr/bin/env bash
set -e
RELAY_DSN="$dsn" "$HERE/relay-config.sh" $2 "\${SINK_PORT}" "$WORK/var-$1" $3 > "$WORK/$1.toml"
exec "$PY" -m relay serve --config "$WORK/$1.toml"
EOF
    chmod +x "$WORK/start-$1.sh"
    TARGETS+=(-x "$1=exec $WORK/start-$1.sh" "$1=127.0.0.1:$2")
}
cleanup() {
    for db in "${DBS[@]}"; do "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "$db" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

TARGETS=(direct)
if ((!SMOKE)); then
    TARGETS+=(-x "proxy=exec $PY $SHARED/baseline_relay.py --mode sync --uvloop --listen 127.0.0.1:2547 --upstream 127.0.0.1:\$SINK_PORT"
              postfix proxy=127.0.0.1:2547)
fi
relay_target relay 2540 shipped
((TUNED)) && relay_target tuned 2550 tuned

bash "$SHARED/peer-bench.sh" -q -d -m "$MSGS" -s "$SESSIONS" -l "$SIZES" -n "$REPS" -t 600 \
    "${TARGETS[@]}" | tee "$WORK/summary.txt"

# One line of ratios per size/sessions from the medians.
awk '
/^summary/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    key = f["size"] "/" f["sessions"]; keys[key] = 1
    mps[f["target"], key] = f["median_msgs_per_sec"]
}
END {
    for (k in keys) {
        r = mps["relay", k]; line = "relay_throughput size/sessions=" k " relay_msgs_per_sec=" r
        if (("tuned", k) in mps) line = line " tuned_msgs_per_sec=" mps["tuned", k]
        n = split("direct postfix proxy", t, " ")
        for (i = 1; i <= n; i++) if ((t[i], k) in mps && mps[t[i], k] > 0)
            line = line sprintf(" %s_msgs_per_sec=%s relay_vs_%s=%.2f", t[i], mps[t[i], k], t[i], r / mps[t[i], k])
        print line
    }
}' "$WORK/summary.txt"
