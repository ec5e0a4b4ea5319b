#!/usr/bin/env bash
# Runs the benchmark targets of BENCHMARKS.md against fresh release brokers on this machine, measures the
# baselines (iperf3 single-stream loopback, fio sequential 1 MiB writes with fdatasync after each) in the same run,
# and prints a table of figures and ratios (medians of three where the machine is noisy). Every bench result is also kept as JSON in $OUT (default
# target/bench-results).
#
# Environment: CARGO_BUILD_JOBS (default 1), OUT, and the sizes below (e.g. N_1K=1000000 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Sizes. The kernel absorbs about 1 GB of fresh writes in the page cache on this VM before it throttles writers
# to the disk's writeback speed, so the throughput targets are measured as 1 GB bursts after a `sync` (three of
# them, median reported) and, separately, as a sustained run that shows the disk's limit.
N_1K=${N_1K:-1000000}          # 1 KiB records per burst, targets 1, 4 and 6 (1 GB)
N_100=${N_100:-8000000}        # 100-byte records, target 2 (about 1 GB on the wire)
N_ALL=${N_ALL:-300000}         # 1 KiB records with acks=all per run, target 3 (0.3 GB)
SUSTAINED=${SUSTAINED:-20s}    # the sustained 1 KiB run
E2E_TIME=${E2E_TIME:-20s}      # target 5
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
    for d in "$WORK"/*/; do [ -f "$d/stderr" ] && cp "$d/stderr" "$OUT/broker-$(basename "$d").log"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# start_broker NAME: a fresh broker on a free port; sets BROKER_PID, BROKER, READY_MS.
start_broker() {
    local dir="$WORK/$1"
    rm -rf "$dir" && mkdir -p "$dir" && : >"$dir/stdout"
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
median3() { printf "%s\n" "$@" | sort -g | sed -n 2p; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }

# Baselines -------------------------------------------------------------------------------------------------
echo "== iperf3 single stream over loopback" >&2
IPERF_PORT=$(( 20000 + RANDOM % 20000 ))
iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
for _ in $(seq 50); do # until the server listens (iperf3 -J can exit 0 with an "error" in its JSON)
    iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 -J >"$OUT/iperf3.json" 2>/dev/null || true
    jq -e '.end.sum_received.bits_per_second' "$OUT/iperf3.json" >/dev/null 2>&1 && break
    sleep 0.1
done
IPERF_MBS=$(jq '.end.sum_received.bits_per_second / 8 / 1e6' "$OUT/iperf3.json")

# 7: idle RSS and time to ready ------------------------------------------------------------------------------
start_broker main
sleep 1
IDLE_RSS_MB=$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$BROKER_PID/status")
FIRST_READY_MS=$READY_MS

# 1 and 6: one partition, 1 KiB records, acks=1, in 1 GB bursts; broker CPU per GB ----------------------------
# Each burst starts settled: earlier writes written back and, as root, the page cache dropped. Otherwise the third
# GB in a row meets the dirty-page limit or a page cache that fills memory, and the broker pays for writeback
# throttling and direct reclaim (1.09 CPU-s per GB for such a burst in run E) rather than for its own work; the
# sustained run below measures that regime on purpose.
settle() { sync; if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
P1K=(); CPU=(); C1K=()
for i in 1 2 3; do
    settle
    before=$(cpu_ticks)
    bench "produce-1k-$i" produce --topic "p1k-$i" --partitions 1 --record-size 1024 --acks 1 --count "$N_1K"
    after=$(cpu_ticks)
    P1K+=("$(j "produce-1k-$i" .produce.mb_per_s)")
    CPU+=("$(awk -v t=$((after - before)) -v hz="$TICKS" -v b="$(j "produce-1k-$i" .produce.wire_bytes)" \
        'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')")
    # 4: consume the burst just written, from the page cache (before the next settle drops it).
    bench "consume-1k-$i" consume --topic "p1k-$i" --from earliest --count "$N_1K"
    C1K+=("$(j "consume-1k-$i" .consume.mb_per_s)")
done
P1K_MBS=$(median3 "${P1K[@]}")
CPU_PER_GB=$(median3 "${CPU[@]}")
C1K_GBS=$(awk -v m="$(median3 "${C1K[@]}")" 'BEGIN { printf "%.2f", m / 1000 }')

# 1, sustained: as long as SUSTAINED, far past what the page cache absorbs ------------------------------------
sync
bench produce-1k-sustained produce --topic p1k-s --partitions 1 --record-size 1024 --acks 1 --duration "$SUSTAINED"
P1K_SUST=$(j produce-1k-sustained .produce.mb_per_s)

# 5: e2e at 10,000 records/s, acks=1, no linger ------------------------------------------------------------
bench e2e-10k e2e --topic e2e --rate 10000 --acks 1 --linger-ms 0 --record-size 1024 --duration "$E2E_TIME"
E2E_P50=$(j e2e-10k .latency.p50_ms)
E2E_P99=$(j e2e-10k .latency.p99_ms)
stop_broker

# 2: 100-byte records, acks=1 -------------------------------------------------------------------------------
start_broker small
sync
bench produce-100 produce --topic p100 --partitions 1 --record-size 100 --acks 1 --count "$N_100"
P100_RPS=$(j produce-100 .produce.records_per_s)
stop_broker

# 3: acks=all, 1 KiB: throughput with 5 requests in flight, latency with one 1 MiB request at a time (fio's
# shape). The disk of this VM varies by 2-4x from minute to minute, so fio and the broker take turns, three
# times, and the medians are compared.
fio_run() {
    mkdir -p "$WORK/fio"
    fio --name=seqwrite --directory="$WORK/fio" --rw=write --bs=1M --size=512M --fdatasync=1 \
        --ioengine=psync --output-format=json >"$OUT/fio-$1.json"
    rm -rf "$WORK/fio"
}
start_broker durable
FIO=(); FIO_P99=(); FIO_W99=(); ALL=(); ALL_P99=(); ALL1=(); ALL1_P99=()
for i in 1 2 3; do
    echo "== fio sequential write, 1 MiB blocks, fdatasync after each ($i)" >&2
    sync
    fio_run "$i"
    FIO+=("$(jq '.jobs[0].write.bw_bytes / 1e6' "$OUT/fio-$i.json")")
    FIO_P99+=("$(jq '.jobs[0].sync.lat_ns.percentile["99.000000"] / 1e6' "$OUT/fio-$i.json")")
    FIO_W99+=("$(jq '.jobs[0].write.clat_ns.percentile["99.000000"] / 1e6' "$OUT/fio-$i.json")")
    bench "produce-all-$i" produce --topic "pall-$i" --partitions 1 --record-size 1024 --acks all --count "$N_ALL"
    ALL+=("$(j "produce-all-$i" .produce.mb_per_s)")
    ALL_P99+=("$(j "produce-all-$i" .latency.p99_ms)")
    bench "produce-all-1-$i" produce --topic "pall1-$i" --partitions 1 --record-size 1024 --acks all \
        --count "$N_ALL" --in-flight 1 --batch-size 1048000
    ALL1+=("$(j "produce-all-1-$i" .produce.mb_per_s)")
    ALL1_P99+=("$(j "produce-all-1-$i" .latency.p99_ms)")
done
stop_broker
FIO_MBS=$(median3 "${FIO[@]}"); FIO_SYNC_P99_MS=$(median3 "${FIO_P99[@]}")
FIO_W99_MS=$(median3 "${FIO_W99[@]}")
FIO_BOTH_MS=$(awk -v a="$FIO_SYNC_P99_MS" -v b="$FIO_W99_MS" 'BEGIN { printf "%.3f", a + b }')
PALL_MBS=$(median3 "${ALL[@]}"); PALL_P99=$(median3 "${ALL_P99[@]}")
PALL1_MBS=$(median3 "${ALL1[@]}"); PALL1_P99=$(median3 "${ALL1_P99[@]}")

# 8: Metadata for a topic of 10,000 partitions -------------------------------------------------------------
# The broker keeps one file open per partition (the active segment's .log) and raises its soft open-file limit
# to the hard one itself; measure fewer partitions (reported in the table) when even the hard limit is too low.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MD_PARTS=10000
FD_ROOM=$(( $(ulimit -Hn) - 1000 ))
[ "$FD_ROOM" -lt "$MD_PARTS" ] && MD_PARTS=$(( FD_ROOM / 1000 * 1000 ))
start_broker metadata
bench metadata-10k metadata --topic m10k --partitions "$MD_PARTS" --count 200
MD_P50=$(j metadata-10k .latency.p50_ms)
MD_P99=$(j metadata-10k .latency.p99_ms)
stop_broker

# 1 and 2 as the issue states them, with librdkafka's rdkafka_performance --------------------------------------
# Built from the rdkafka-sys crate's bundled librdkafka sources against the static library `cargo test` builds
# for the end-to-end tests; skipped (shown as "-") when either is missing.
RDK="$WORK/rdkafka_performance"
RDK_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka 2>/dev/null | head -1 || true)
RDK_OUT=$(ls -td target/*/build/rdkafka-sys-*/out 2>/dev/null | head -1 || true)
ZSTD_A=$(find target -name libzstd.a 2>/dev/null | head -1 || true)
RDK_1K="-"; RDK_100="-"; RK1K=()
if [ -n "$RDK_SRC" ] && [ -n "$RDK_OUT" ] && [ -f "$RDK_OUT/src/librdkafka.a" ] && [ -n "$ZSTD_A" ] &&
    gcc -O2 -o "$RDK" "$RDK_SRC/examples/rdkafka_performance.c" -I"$RDK_SRC/src" -I"$RDK_OUT/src" \
        "$RDK_OUT/src/librdkafka.a" -lpthread -lm -ldl -lz "$ZSTD_A" 2>"$OUT/rdkafka_performance-build.log"; then
    rdk() { # TOPIC SIZE COUNT: prints rdkafka_performance's summary line
        "$RDK" -P -t "$1" -s "$2" -a 1 -X linger.ms=5 -X batch.size=1000000 -b "$BROKER" -c "$3" -q 2>&1 |
            grep "messages produced" | tail -1
    }
    # By now the run has written several GB: without settling first, the kernel throttles rdkafka_performance's
    # GB to the disk's writeback speed (350-460 MB/s in runs C and D).
    start_broker rdkafka
    RK1K=()
    for i in 1 2 3; do
        settle
        echo "== rdkafka_performance 1 KiB ($i)" >&2
        rdk "rk1k-$i" 1024 "$N_1K" | tee "$OUT/rdkafka-1k-$i.txt" >&2
        RK1K+=("$(sed -n 's/.* and \([0-9.]*\) MB\/s.*/\1/p' "$OUT/rdkafka-1k-$i.txt")")
    done
    RDK_1K=$(median3 "${RK1K[@]}")
    settle
    echo "== rdkafka_performance 100 B" >&2
    rdk rk100 100 "$N_100" | tee "$OUT/rdkafka-100.txt" >&2
    RDK_100=$(sed -n 's/.*: \([0-9]*\) msgs\/s.*/\1/p' "$OUT/rdkafka-100.txt")
    stop_broker
else
    echo "== rdkafka_performance: not built (run cargo test --no-run -p millrace-tests first); skipped" >&2
fi

# Pipelines: the stream processor, partition to partition, in process (no broker) ---------------------------
echo "== bench pipeline" >&2
"$BIN" bench pipeline --events 2000000 --json --quiet >"$OUT/pipeline.json" 2>/dev/null
PIPE_BASE=$(jq '.baseline.events_per_s' "$OUT/pipeline.json")
PIPE_STATELESS=$(jq '.pipelines[0].events_per_cpu_s' "$OUT/pipeline.json")
PIPE_KEYED=$(jq '.pipelines[1].events_per_cpu_s' "$OUT/pipeline.json")

# Table -----------------------------------------------------------------------------------------------------
f() { printf "%.1f" "$1"; }
echo
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
printf "%-58s %-24s %-24s %s\n" "target" "millrace" "baseline" "ratio"
printf "%-58s %-24s %-24s %s\n" "1 produce 1 KiB acks=1, 1 partition, 1 GB bursts (MB/s)" "$(f "$P1K_MBS")" "iperf3 $(f "$IPERF_MBS")" "$(ratio "$P1K_MBS" "$IPERF_MBS") (goal >= 0.50)"
printf "%-58s %-24s %-24s %s\n" "1 same, sustained $SUSTAINED (MB/s)" "$(f "$P1K_SUST")" "fio $(f "$FIO_MBS")" "$(ratio "$P1K_SUST" "$FIO_MBS") of fio"
printf "%-58s %-24s %-24s %s\n" "2 produce 100 B acks=1, 1 partition (records/s)" "$(printf %.0f "$P100_RPS")" "-" "-"
printf "%-58s %-24s %-24s %s\n" "3 produce 1 KiB acks=all, 5 in flight (MB/s)" "$(f "$PALL_MBS")" "fio fdatasync/1MiB $(f "$FIO_MBS")" "$(ratio "$PALL_MBS" "$FIO_MBS")"
printf "%-58s %-24s %-24s %s\n" "3 same, p99 request latency (ms)" "$PALL_P99" "fio fsync p99 $(printf %.3f "$FIO_SYNC_P99_MS")" "$(ratio "$PALL_P99" "$FIO_SYNC_P99_MS")"
printf "%-58s %-24s %-24s %s\n" "3 acks=all, 1 in flight, 1 MiB batches (MB/s)" "$(f "$PALL1_MBS")" "fio fdatasync/1MiB $(f "$FIO_MBS")" "$(ratio "$PALL1_MBS" "$FIO_MBS")"
printf "%-58s %-24s %-24s %s\n" "3 same, p99 request latency (ms)" "$PALL1_P99" "fio fsync p99 $(printf %.3f "$FIO_SYNC_P99_MS")" "$(ratio "$PALL1_P99" "$FIO_SYNC_P99_MS")"
printf "%-58s %-24s %-24s %s\n" "3 same, vs fio p99 of the 1 MiB write plus p99 of fsync" "$PALL1_P99" "fio write+fsync $FIO_BOTH_MS" "$(ratio "$PALL1_P99" "$FIO_BOTH_MS")"
printf "%-58s %-24s %-24s %s\n" "4 consume 1 KiB, 1 partition, page cache (GB/s)" "$C1K_GBS" "-" "-"
printf "%-58s %-24s %-24s %s\n" "5 e2e 10,000 rec/s acks=1 no linger p50 / p99 (ms)" "$E2E_P50 / $E2E_P99" "-" "-"
printf "%-58s %-24s %-24s %s\n" "6 broker CPU seconds per GB ingested (1 GB bursts)" "$CPU_PER_GB" "-" "-"
printf "%-58s %-24s %-24s %s\n" "7 idle RSS (MB) / time to ready (ms)" "$IDLE_RSS_MB / $FIRST_READY_MS" "-" "-"
printf "%-58s %-24s %-24s %s\n" "8 Metadata, $MD_PARTS partitions, p50 / p99 (ms)" "$MD_P50 / $MD_P99" "-" "-"
printf "%-58s %-24s %-24s %s\n" "1 rdkafka_performance 1 KiB acks=1, cache dropped (MB/s)" "$RDK_1K" "iperf3 $(f "$IPERF_MBS")" "goal >= 1000 MB/s"
printf "%-58s %-24s %-24s %s\n" "2 rdkafka_performance 100 B acks=1 (records/s)" "$RDK_100" "-" "goal >= 4000000"
printf "%-58s %-24s %-24s %s\n" "pipeline stateless, events per CPU-second" "$(printf %.0f "$PIPE_STATELESS")" "read-only $(printf %.0f "$PIPE_BASE")/s" "$(ratio "$PIPE_STATELESS" "$PIPE_BASE") (goal >= 2 M)"
printf "%-58s %-24s %-24s %s\n" "pipeline keyed tumbling count, events per CPU-second" "$(printf %.0f "$PIPE_KEYED")" "read-only $(printf %.0f "$PIPE_BASE")/s" "$(ratio "$PIPE_KEYED" "$PIPE_BASE") (goal >= 1 M)"
echo
echo "runs: produce 1 KiB bursts ${P1K[*]} MB/s (broker CPU ${CPU[*]} s/GB); rdkafka_performance 1 KiB ${RK1K[*]} MB/s; consume ${C1K[*]} MB/s; fio ${FIO[*]} MB/s (fsync p99 ${FIO_P99[*]} ms);"
echo "      acks=all 5 in flight ${ALL[*]} MB/s (p99 ${ALL_P99[*]} ms); 1 in flight ${ALL1[*]} MB/s (p99 ${ALL1_P99[*]} ms)"
