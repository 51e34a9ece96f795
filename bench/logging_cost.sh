#!/usr/bin/env bash
# logging_cost.sh - what per-message logging at info costs against warning, same run.
#
#   bench/logging_cost.sh [-m MSGS] [-s SESSIONS] [-l BYTES] [-r ROUNDS] [--smoke]
#
# Two relays, identical but for [log] level (bench/relay-config.sh, then level = "info" in
# one of them), each on a fresh database of its own, both running the whole time, stderr to
# a file (the lines reach it as they would reach journald). Each round sends MSGS messages
# through each of them with peer-bench.sh (smtp-source -d -> relay -> smtp-sink, end to
# end), in ABBA order (info first in odd rounds, warning first in even ones) so that what
# one run leaves behind (a vacuum, a busy neighbour) falls on both alike, and reads the CPU
# time of each relay's processes over its run (/proc). Per round: info_vs_warning = info
# msgs/s over warning msgs/s, and cpu_info_vs_warning = CPU per message of the info relay
# over the warning relay's (steadier on a shared machine), and the log lines per message at
# info. The summary gives the median and the range of both ratios over the rounds.
# Target (issue 23): info_vs_warning >= 0.95 at 2 KB / 50 sessions.
# --smoke: 200 messages, 1 round, 5 sessions (so the script can't rot).
# Needs smtp-source/smtp-sink (Debian's postfix) and $BOUNCE_RELAY_TEST_DSN.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SHARED=${PEER_BENCH_DIR:-$REPO/../shared/bench}
MSGS=10000 SESSIONS=50 SIZE=2048 ROUNDS=8 WARMUP=1000
while (($# > 0)); do
    case $1 in
        -m) MSGS=$2; shift 2 ;;
        -s) SESSIONS=$2; shift 2 ;;
        -l) SIZE=$2; shift 2 ;;
        -r) ROUNDS=$2; shift 2 ;;
        --smoke) MSGS=200 ROUNDS=1 SESSIONS=5 WARMUP=20; shift ;;
        *) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
[[ -x $SHARED/peer-bench.sh ]] || { echo "logging_cost: no peer-bench.sh in $SHARED (set PEER_BENCH_DIR)" >&2; exit 2; }
[[ -x /usr/sbin/smtp-source ]] || { echo "logging_cost: no smtp-source (apt-get install postfix)" >&2; exit 2; }
[[ -n ${BOUNCE_RELAY_TEST_DSN:-} ]] || { echo "logging_cost: set BOUNCE_RELAY_TEST_DSN to a PostgreSQL server on this machine" >&2; exit 2; }
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3); fi
WORK=$(mktemp -d /tmp/logging-cost.XXXXXX)
LEVELS=(info warning)
declare -A RELAY_PORT=() RELAY_PID=() DB=()
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SINK_PORT=$(free_port)
cleanup() {
    local level
    for level in "${LEVELS[@]}"; do
        [[ -n ${RELAY_PID[$level]:-} ]] && kill -TERM -- "-${RELAY_PID[$level]}" 2>/dev/null
    done
    wait 2>/dev/null || true
    for level in "${LEVELS[@]}"; do
        "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "br_log_${level}_$$" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# CPU clock ticks (user + system, reaped children included) of every process in a session.
ticks_sid() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v sid="$1" \
        '{ sub(/^.*\) /, ""); if ($4 == sid) t += $12 + $13 + $14 + $15 } END { print t + 0 }'
}
HZ=$(getconf CLK_TCK)

# Both relays, each in a session of its own (setsid: its CPU is read by session id).
for level in "${LEVELS[@]}"; do
    DB[$level]=br_log_${level}_$$
    "$PY" "$HERE/support.py" dropdb "$BOUNCE_RELAY_TEST_DSN" "${DB[$level]}"
    "$PY" "$HERE/support.py" createdb "$BOUNCE_RELAY_TEST_DSN" "${DB[$level]}"
    RELAY_PORT[$level]=$(free_port)
    RELAY_DSN=$("$PY" "$HERE/support.py" dsn "$BOUNCE_RELAY_TEST_DSN" "${DB[$level]}") \
        "$HERE/relay-config.sh" "${RELAY_PORT[$level]}" "$SINK_PORT" "$WORK/var-$level" |
        sed "s/^level = .*/level = \"$level\"/" > "$WORK/$level.toml"
    (cd "$REPO" && exec setsid "$PY" -m relay serve --config "$WORK/$level.toml" 2> "$WORK/$level.log") &
    RELAY_PID[$level]=$!
done
for level in "${LEVELS[@]}"; do
    "$PY" "$HERE/support.py" wait-port "${RELAY_PORT[$level]}" 60
done

# One peer-bench run of LEVEL's relay: "msgs_per_sec cpu_ticks log_lines".
run_one() {
    local level=$1 t0 t1 l0 l1 summary
    l0=$(wc -l < "$WORK/$level.log")
    t0=$(ticks_sid "${RELAY_PID[$level]}")
    summary=$(bash "$SHARED/peer-bench.sh" -q -d -m "$2" -s "$SESSIONS" -l "$SIZE" -n 1 -t 600 \
        -p "$SINK_PORT" "$level=127.0.0.1:${RELAY_PORT[$level]}" 2>/dev/null)
    t1=$(ticks_sid "${RELAY_PID[$level]}")
    l1=$(wc -l < "$WORK/$level.log")
    awk -v t="$((t1 - t0))" -v l="$((l1 - l0))" '/^summary/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^failed=/ && $i != "failed=0") bad = 1
        for (i = 1; i <= NF; i++) if ($i ~ /^median_msgs_per_sec=/) { split($i, kv, "="); mps = kv[2] }
    } END { if (bad || mps == "" || mps == "na") exit 1; print mps, t, l }' <<<"$summary"
}

for level in "${LEVELS[@]}"; do run_one "$level" "$WARMUP" > /dev/null; done
for round in $(seq 1 "$ROUNDS"); do
    order=(info warning)
    ((round % 2)) || order=(warning info)
    declare -A got=()
    for level in "${order[@]}"; do got[$level]=$(run_one "$level" "$MSGS"); done
    read -r imps iticks ilines <<<"${got[info]}"
    read -r wmps wticks _ <<<"${got[warning]}"
    awk -v r="$round" -v f="${order[0]}" -v im="$imps" -v wm="$wmps" -v it="$iticks" -v wt="$wticks" \
        -v il="$ilines" -v n="$MSGS" -v hz="$HZ" 'BEGIN {
        printf "logging_cost round=%d first=%s info_msgs_per_sec=%s warning_msgs_per_sec=%s info_vs_warning=%.3f info_cpu_ms=%.3f warning_cpu_ms=%.3f cpu_info_vs_warning=%.3f info_lines_per_msg=%.2f\n",
            r, f, im, wm, im / wm, it * 1000 / hz / n, wt * 1000 / hz / n, (wt > 0) ? it / wt : 0, il / n }' |
        tee -a "$WORK/rounds.txt"
done

awk '
function kv(k,   i) { for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
function median(a, n,   s, i, j, x) {
    for (i = 1; i <= n; i++) s[i] = a[i]
    for (i = 2; i <= n; i++) { x = s[i]; for (j = i - 1; j >= 1 && s[j] > x; j--) s[j + 1] = s[j]; s[j + 1] = x }
    return (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
}
{ n++; r[n] = kv("info_vs_warning") + 0; c[n] = kv("cpu_info_vs_warning") + 0; l[n] = kv("info_lines_per_msg") + 0 }
END {
    lo = hi = r[1]; clo = chi = c[1]
    for (i = 1; i <= n; i++) { if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i]; if (c[i] < clo) clo = c[i]; if (c[i] > chi) chi = c[i] }
    printf "logging_cost_summary size=%s sessions=%s msgs=%s rounds=%d info_vs_warning=%.3f range=%.3f-%.3f cpu_info_vs_warning=%.3f cpu_range=%.3f-%.3f info_lines_per_msg=%.2f\n",
        size, sessions, msgs, n, median(r, n), lo, hi, median(c, n), clo, chi, median(l, n)
}' size="$SIZE" sessions="$SESSIONS" msgs="$MSGS" "$WORK/rounds.txt"
