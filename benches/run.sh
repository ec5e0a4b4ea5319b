#!/usr/bin/env bash
# Runs the benchmark targets of BENCHMARKS.md against a fresh release broker on this machine, measures the
# baselines (iperf3 single-stream loopback, fio sequential 1 MiB writes with fdatasync after each) in the same run,
# and prints a table of figures and ratios. Every bench result is also kept as JSON in $OUT (default
# target/bench-results).
#
# Environment: CARGO_BUILD_JOBS (default 1), OUT, and the sizes below (e.g. N_1K=1000000 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."

N_1K=${N_1K:-4000000}       # 1 KiB records for targets 1, 4 and 6 (4 GB)
N_100=${N_100:-20000000}    # 100-byte records for target 2 (2 GB)
N_ALL=${N_ALL:-500000}      # 1 KiB records with acks=all for target 3 (0.5 GB)
E2E_TIME=${E2E_TIME:-20s}   # target 5
OUT=${OUT:-target/bench-results}
mkdir -p "$OUT"

need() { # command, Debian package
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$2" >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq "$2" >/dev/null; fi
}
need iperf3 iperf3
need fio fio
need jq jq

CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --bin millrace >&2
BIN=target/release/millrace
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/millrace-bench.XXXXXX")
BROKER_PID=""
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# start_broker NAME: a fresh broker on a free port; sets BROKER_PID, BROKER, READY_MS.
start_broker() {
    local dir="$WORK/$1"
    rm -rf "$dir" && mkdir -p "$dir"
    local t0; t0=$(date +%s%N)
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
    BROKER_PID=$!
    while ! grep -q "^millrace listening on" "$dir/stdout"; do
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$dir/stderr" >&2; exit 1; }
        sleep 0.002
    done
    READY_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
    BROKER=$(sed -n 's/^millrace listening on \([^ ]*\).*/\1/p' "$dir/stdout")
}
stop_broker() {
    kill -TERM "$BROKER_PID" && wait "$BROKER_PID" || true
    BROKER_PID=""
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$BROKER_PID/stat"; }
bench() { # NAME ARGS...: runs millrace bench, keeps the JSON
    local name=$1; shift
    echo "== bench $name: $*" >&2
    "$BIN" bench "$@" --brokers "$BROKER" --json --quiet >"$OUT/$name.json"
}
j() { jq -r "$2" "$OUT/$1.json"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }

# Baselines -------------------------------------------------------------------------------------------------
echo "== iperf3 single stream over loopback" >&2
IPERF_PORT=$(( 20000 + RANDOM % 20000 ))
iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 -J >"$OUT/iperf3.json"
IPERF_MBS=$(jq '.end.sum_received.bits_per_second / 8 / 1e6' "$OUT/iperf3.json")

echo "== fio sequential write, 1 MiB blocks, fdatasync after each" >&2
mkdir -p "$WORK/fio"
fio --name=seqwrite --directory="$WORK/fio" --rw=write --bs=1M --size=1G --fdatasync=1 \
    --ioengine=psync --output-format=json >"$OUT/fio.json"
FIO_MBS=$(jq '.jobs[0].write.bw_bytes / 1e6' "$OUT/fio.json")
FIO_SYNC_P99_MS=$(jq '.jobs[0].sync.lat_ns.percentile["99.000000"] / 1e6' "$OUT/fio.json")
rm -rf "$WORK/fio"

# 7: idle RSS and time to ready ------------------------------------------------------------------------------
start_broker main
sleep 1
IDLE_RSS_MB=$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$BROKER_PID/status")
FIRST_READY_MS=$READY_MS

# 1 and 6: one partition, 1 KiB records, acks=1; broker CPU per GB ----------------------------------------
before=$(cpu_ticks)
bench produce-1k produce --topic p1k --partitions 1 --record-size 1024 --acks 1 --count "$N_1K"
after=$(cpu_ticks)
P1K_MBS=$(j produce-1k .produce.mb_per_s)
P1K_WIRE=$(j produce-1k .produce.wire_bytes)
CPU_PER_GB=$(awk -v t=$((after - before)) -v hz="$TICKS" -v b="$P1K_WIRE" 'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')

# 4: consume the same partition (in the page cache) --------------------------------------------------------
bench consume-1k consume --topic p1k --from earliest --count "$N_1K"
C1K_GBS=$(awk -v m="$(j consume-1k .consume.mb_per_s)" 'BEGIN { printf "%.2f", m / 1000 }')

# 5: e2e at 10,000 records/s, acks=1, no linger ------------------------------------------------------------
bench e2e-10k e2e --topic e2e --rate 10000 --acks 1 --linger-ms 0 --record-size 1024 --duration "$E2E_TIME"
E2E_P50=$(j e2e-10k .latency.p50_ms)
E2E_P99=$(j e2e-10k .latency.p99_ms)
stop_broker

# 2: 100-byte records, acks=1 -------------------------------------------------------------------------------
start_broker small
bench produce-100 produce --topic p100 --partitions 1 --record-size 100 --acks 1 --count "$N_100"
P100_RPS=$(j produce-100 .produce.records_per_s)
stop_broker

# 3: acks=all, 1 KiB ----------------------------------------------------------------------------------------
start_broker durable
bench produce-all produce --topic pall --partitions 1 --record-size 1024 --acks all --count "$N_ALL"
PALL_MBS=$(j produce-all .produce.mb_per_s)
PALL_P99=$(j produce-all .latency.p99_ms)
stop_broker

# 8: Metadata for a topic of 10,000 partitions -------------------------------------------------------------
# The broker keeps three files open per partition (.log, .index, .timeindex): 10,000 partitions need an open
# file limit above 30,000. Raise the soft limit as far as the hard one allows, and measure fewer partitions
# (reported in the table) when even that is too low.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MD_PARTS=10000
FD_ROOM=$(( ($(ulimit -n) - 1000) / 3 ))
[ "$FD_ROOM" -lt "$MD_PARTS" ] && MD_PARTS=$(( FD_ROOM / 1000 * 1000 ))
start_broker metadata
bench metadata-10k metadata --topic m10k --partitions "$MD_PARTS" --count 200
MD_P50=$(j metadata-10k .latency.p50_ms)
MD_P99=$(j metadata-10k .latency.p99_ms)
stop_broker

# Table -----------------------------------------------------------------------------------------------------
f() { printf "%.1f" "$1"; }
echo
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
printf "%-58s %-24s %-24s %s\n" "target" "millrace" "baseline" "ratio"
printf "%-58s %-24s %-24s %s\n" "1 produce 1 KiB acks=1, 1 partition (MB/s)" "$(f "$P1K_MBS")" "iperf3 $(f "$IPERF_MBS")" "$(ratio "$P1K_MBS" "$IPERF_MBS") (goal >= 0.50)"
printf "%-58s %-24s %-24s %s\n" "2 produce 100 B acks=1, 1 partition (records/s)" "$(printf %.0f "$P100_RPS")" "-" "-"
printf "%-58s %-24s %-24s %s\n" "3 produce 1 KiB acks=all (MB/s)" "$(f "$PALL_MBS")" "fio fdatasync/1MiB $(f "$FIO_MBS")" "$(ratio "$PALL_MBS" "$FIO_MBS")"
printf "%-58s %-24s %-24s %s\n" "3 produce 1 KiB acks=all p99 request latency (ms)" "$PALL_P99" "fio fsync p99 $(printf %.3f "$FIO_SYNC_P99_MS")" "$(ratio "$PALL_P99" "$FIO_SYNC_P99_MS")"
printf "%-58s %-24s %-24s %s\n" "4 consume 1 KiB, 1 partition, page cache (GB/s)" "$C1K_GBS" "-" "-"
printf "%-58s %-24s %-24s %s\n" "5 e2e 10,000 rec/s acks=1 no linger p50 / p99 (ms)" "$E2E_P50 / $E2E_P99" "-" "-"
printf "%-58s %-24s %-24s %s\n" "6 broker CPU seconds per GB ingested (target 1 run)" "$CPU_PER_GB" "-" "-"
printf "%-58s %-24s %-24s %s\n" "7 idle RSS (MB) / time to ready (ms)" "$IDLE_RSS_MB / $FIRST_READY_MS" "-" "-"
printf "%-58s %-24s %-24s %s\n" "8 Metadata, $MD_PARTS partitions, p50 / p99 (ms)" "$MD_P50 / $MD_P99" "-" "-"
