#!/usr/bin/env bash
# cpu_per_message.sh - CPU time the relay and PostgreSQL spend per message, end to end.
#
#   bench/cpu_per_message.sh [-m MSGS] [-s SESSIONS] [-l BYTES] [-n REPS] [--smoke]
#
# smtp-source -> bounce-relay -> smtp-sink, as in relay_throughput.sh. Each rep starts a relay
# on a fresh database, warms it up, sends MSGS messages, waits until every delivery is final,
# and reads the CPU time (/proc) of the relay's processes and of the local PostgreSQL's over
# the run. On a shared VM msgs/s moves by a fifth from run to run; CPU per message moves far
# less, which is what an optimisation is judged by here (BENCHMARKS.md). Prints one line per
# rep and a summary of medians. Needs smtp-source/smtp-sink (Debian's postfix) and the
# PostgreSQL of $BOUNCE_RELAY_TEST_DSN on this machine.
# --smoke: 100 messages, 1 rep, 2 sessions (CI runs this so the script can't rot).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
MSGS=10000 SESSIONS=50 SIZE=2048 REPS=3 WARMUP=500
while (($# > 0)); do
    case $1 in
        -m) MSGS=$2; shift 2 ;;
        -s) SESSIONS=$2; shift 2 ;;
        -l) SIZE=$2; shift 2 ;;
        -n) REPS=$2; shift 2 ;;
        --smoke) MSGS=100 REPS=1 SESSIONS=2 WARMUP=10; shift ;;
        *) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
SBIN=/usr/sbin
[[ -x $SBIN/smtp-source && -x $SBIN/smtp-sink ]] || { echo "cpu_per_message: no smtp-source/smtp-sink (apt-get install postfix)" >&2; exit 2; }
[[ -n ${BOUNCE_RELAY_TEST_DSN:-} ]] || { echo "cpu_per_message: set BOUNCE_RELAY_TEST_DSN to a PostgreSQL server on this machine" >&2; exit 2; }
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3); fi
WORK=$(mktemp -d /tmp/cpu-per-message.XXXXXX)
DB=br_cpu_$$
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "$DB" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Clock ticks of user + system time of the given processes (those still alive).
ticks() { local t=0 p; for p in "$@"; do [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

for rep in $(seq 1 "$REPS"); do
    "$PY" "$HERE/support.py" createdb "$BOUNCE_RELAY_TEST_DSN" "$DB"
    RELAY_DSN=$("$PY" "$HERE/support.py" dsn "$BOUNCE_RELAY_TEST_DSN" "$DB")
    export RELAY_DSN
    SINK_PORT=$(free_port) RELAY_PORT=$(free_port)
    "$SBIN/smtp-sink" -u nobody -c -m 1024 "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
    SINK=$!; PIDS+=("$SINK")
    "$HERE/relay-config.sh" "$RELAY_PORT" "$SINK_PORT" "$WORK/var$rep" > "$WORK/config.toml"
    "$PY" -m relay serve --config "$WORK/config.toml" 2> "$WORK/relay.log" &
    RELAY=$!; PIDS+=("$RELAY")
    "$PY" "$HERE/support.py" wait-port "$RELAY_PORT" 60
    "$SBIN/smtp-source" -d -s "$SESSIONS" -m "$WARMUP" -l "$SIZE" "127.0.0.1:$RELAY_PORT"
    "$PY" "$HERE/support.py" wait-final "$RELAY_DSN" 120
    RELAY_PIDS=$(pgrep -P "$RELAY" | tr '\n' ' ') PG_PIDS=$(pgrep -x postgres | tr '\n' ' ' || true)
    # shellcheck disable=SC2086  # word splitting intended: PID lists
    R0=$(ticks $RELAY_PIDS) P0=$(ticks $PG_PIDS) T0=$(date +%s.%N)
    "$SBIN/smtp-source" -d -s "$SESSIONS" -m "$MSGS" -l "$SIZE" "127.0.0.1:$RELAY_PORT"
    "$PY" "$HERE/support.py" wait-final "$RELAY_DSN" 600
    # shellcheck disable=SC2086
    T1=$(date +%s.%N) R1=$(ticks $RELAY_PIDS) P1=$(ticks $PG_PIDS)
    echo "$T0 $T1 $R0 $R1 $P0 $P1 $MSGS $HZ $SIZE $SESSIONS $rep" | awk '{
        printf "cpu_per_message rep=%d size=%d sessions=%d msgs=%d msgs_per_sec=%.0f relay_cpu_ms=%.3f postgres_cpu_ms=%.3f\n",
            $11, $9, $10, $7, $7 / ($2 - $1), ($4 - $3) * 1000 / $8 / $7, ($6 - $5) * 1000 / $8 / $7 }' | tee -a "$WORK/reps.txt"
    kill "$RELAY" "$SINK"; wait "$RELAY" "$SINK" 2>/dev/null || true
    PIDS=()
    "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "$DB"
done
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1], NR] = kv[2] } n = NR; f = $0 }
function median(k,   a, i, m) { for (i = 1; i <= n; i++) a[i] = v[k, i]; m = asort(a); return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
END { printf "cpu_per_message_summary size=%s sessions=%s reps=%d msgs_per_sec=%.0f relay_cpu_ms=%.3f postgres_cpu_ms=%.3f\n",
      v["size", 1], v["sessions", 1], n, median("msgs_per_sec"), median("relay_cpu_ms"), median("postgres_cpu_ms") }' "$WORK/reps.txt"
