#!/usr/bin/env bash
# Target 8's recovery figure: write DATA_GB over PARTITIONS partitions with acks=1, kill -9 the broker, and time
# how long a restart takes to print its ready line, twice: with the page cache as the crash left it (warm), and
# after `sync` and dropping the page cache (cold, as after a power loss and reboot: every byte recovery reads
# comes from the disk). Dropping the cache needs root; without it the cold run is skipped.
#
# Environment: PARTITIONS (1000), RECORDS (10000000 records of 1 KiB, about 10 GB, written twice), WAIT_S (seconds between the
# last acknowledged write and the kill, 0), KEEP=1 keeps the data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTITIONS=${PARTITIONS:-1000}
RECORDS=${RECORDS:-10000000}
WAIT_S=${WAIT_S:-0}

CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --bin millrace >&2
BIN=target/release/millrace
WORK=$(mktemp -d "${TMPDIR:-/tmp}/millrace-recovery.XXXXXX")
PID=""
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

# start: the broker on a free port over $WORK/data; sets PID, BROKER, READY_MS.
start() {
    : >"$WORK/stdout"
    local t0; t0=$(date +%s%N)
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/stdout" 2>>"$WORK/stderr" &
    PID=$!
    while ! grep -q "^millrace listening on" "$WORK/stdout"; do
        kill -0 "$PID" 2>/dev/null || { tail -20 "$WORK/stderr" >&2; exit 1; }
        sleep 0.002
    done
    READY_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
    BROKER=$(sed -n 's/^millrace listening on \([^ ]*\).*/\1/p' "$WORK/stdout")
}
crash() { kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }

# crash_case COLD: a fresh data directory, DATA over PARTITIONS partitions, kill -9, then (COLD=1: sync and
# drop the page cache) a restart; sets READY_MS and RSS, and checks every record is there.
crash_case() {
    rm -rf "$WORK/data"
    start
    "$BIN" bench produce --brokers "$BROKER" --topic big --partitions "$PARTITIONS" --record-size 1024 \
        --count "$RECORDS" --acks 1 --json >"$WORK/produce.json"
    sleep "$WAIT_S"
    STORED=$(du -s -B1 "$WORK/data" | cut -f1)
    crash
    if [ "$1" = 1 ]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
    fi
    start
    RSS=$(rss_mb)
    "$BIN" bench consume --brokers "$BROKER" --topic big --from earliest --count "$RECORDS" --json \
        >"$WORK/consume.json"
    CONSUMED=$(jq '[.. | objects | .records? | numbers] | first' "$WORK/consume.json")
    [ "$CONSUMED" = "$RECORDS" ] || { echo "consumed $CONSUMED of $RECORDS records" >&2; exit 1; }
    RSS_READ=$(rss_mb)
    crash
}

crash_case 0
WARM_MS=$READY_MS
WARM_RSS=$RSS
WARM_READ=$RSS_READ
COLD_MS="-"
if [ "$(id -u)" = 0 ]; then
    crash_case 1
    COLD_MS=$READY_MS
fi
printf '| stored | ready after kill -9, page cache warm | RSS then | RSS after consuming all %s records | ready after kill -9 and a dropped page cache |\n' "$RECORDS"
printf '|---|---|---|---|---|\n'
printf '| %.1f GB over %s partitions | %s ms | %s MB | %s MB | %s ms |\n' \
    "$(awk -v b="$STORED" 'BEGIN {print b / 1e9}')" "$PARTITIONS" "$WARM_MS" "$WARM_RSS" "$WARM_READ" "$COLD_MS"
