#!/usr/bin/env bash
# A copy pipeline (read every record, write it unchanged) run as a batch job twice on the same input, in the
# same run: once with its source and sink on this broker's storage (the baseline), once with both on a second
# millrace process reached over TCP (`bootstrap.servers`). Prints records/s of each and the ratio.
#
# Environment: N (records, default 2000000), SIZE (value bytes, default 100), PARTS (partitions, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000000}
SIZE=${SIZE:-100}
PARTS=${PARTS:-2}
BIN=target/release/millrace
[ -x "$BIN" ] || cargo build --release --bin millrace
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

serve() { # data dir, ready file: starts a broker on a free port, prints its address
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$1" > "$2" 2>/dev/null &
    for _ in $(seq 100); do
        addr=$(sed -n 's/^millrace listening on \([^ ]*\).*/\1/p' "$2")
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.1
    done
    echo "broker did not start" >&2; exit 1
}

copy_file() { # name, cluster line (empty: local)
    cat <<TOML
name = "$1"
[settings]
checkpoint_interval_ms = 1000
[[sources]]
topic = "input"
end = "end"
$2
[[sinks]]
input = "input"
topic = "copy_$1"
partitions = $PARTS
$2
TOML
}

fill() { # address
    "$BIN" bench produce --brokers "$1" --topic input --partitions "$PARTS" --count "$N" \
        --record-size "$SIZE" --key-distribution uniform:100000 --acks all --quiet --json > /dev/null
}

timed_run() { # file, data dir: prints seconds
    local start end
    start=$(date +%s.%N)
    "$BIN" pipeline run "$1" --data-dir "$2" > /dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

# Local: the input is written through a broker on the data dir, which is then stopped for the batch run.
mkdir -p "$WORK/local" "$WORK/remote" "$WORK/runner"
addr=$(serve "$WORK/local" "$WORK/local.out")
fill "$addr"
kill %1; wait %1 2>/dev/null || true
copy_file local "" > "$WORK/local.toml"

raddr=$(serve "$WORK/remote" "$WORK/remote.out")
fill "$raddr"
copy_file remote "\"bootstrap.servers\" = \"$raddr\"" > "$WORK/remote.toml"

for round in 1 2; do
    l=$(timed_run "$WORK/local.toml" "$WORK/local-$round")
    # Each round reads the local input afresh: a new data dir copy would be large, so the checkpoint topic
    # of the previous round is what is removed.
    rm -rf "$WORK/local/__pipeline.local"* 2>/dev/null || true
    r=$(timed_run "$WORK/remote.toml" "$WORK/runner/$round")
    printf 'round %d: local %.0f records/s (%.2f s), remote %.0f records/s (%.2f s), remote/local %.2f\n' \
        "$round" "$(echo "$N / $l" | bc -l)" "$l" "$(echo "$N / $r" | bc -l)" "$r" "$(echo "$l / $r" | bc -l)"
done
