#!/usr/bin/env bash
# The one test command (README "Test"): installs what the tests need, builds, and runs every test and check.
# Works on a fresh Debian machine as root with the Rust toolchain, Python 3 with pip, and node/npm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==== %s ====\n' "$*"; }

step "system packages"
need=()
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v make >/dev/null 2>&1 || need+=(make)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]} and not root: install them first" >&2
    exit 1
  fi
fi
echo "kcat: $(command -v kcat)"

step "python clients (kafka-python) into tests/.venv"
if [ ! -x tests/.venv/bin/python ]; then
  python3 -m venv tests/.venv
fi
tests/.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

step "node clients (kafkajs) into tests/js/node_modules"
(cd tests/js && npm ci --silent --no-audit --no-fund)

step "build the broker"
cargo build --release --bin millrace
export MILLRACE_BIN="$root/target/release/millrace"

step "tests: unit, property, protocol captures, end to end"
cargo test --workspace --no-fail-fast

step "formatting"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "benchmarks compile"
cargo bench --workspace --no-run

step "fuzz targets compile"
cargo build --manifest-path fuzz/Cargo.toml --bins

step "done"
echo "all tests and checks passed"
