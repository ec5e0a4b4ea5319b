#!/usr/bin/env bash
# Builds millrace and runs every test: unit, property and end-to-end (rdkafka, kcat, kafka-python, kafkajs),
# then formatting, clippy, and that benchmarks and fuzz targets compile.
#
# Runs on a fresh Debian machine (as root, or with sudo) that has the Rust toolchain, Python 3 + pip and
# node/npm; it installs whatever else is missing. Set SKIP_INSTALL=1 to skip the installation steps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

START=$SECONDS
section() {
    printf '\n==== %s (%ds) ====\n' "$*" "$((SECONDS - START))"
}

# ---------------------------------------------------------------------------------------------------------------
section "system packages"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    # command -> Debian package; headers and libraries checked with dpkg.
    missing=()
    for pair in kcat:kcat cmake:cmake g++:g++ make:make pkg-config:pkg-config cc:gcc; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' zlib1g-dev 2>/dev/null | grep -q "ok installed" || missing+=(zlib1g-dev)
    fi
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}"
        SUDO=""
        if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "all present"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------
section "python packages (tests/.venv)"
VENV="$ROOT/tests/.venv"
PY_PACKAGES=(kafka-python lz4 python-snappy zstandard)
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c "import kafka, lz4.frame, snappy, zstandard" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    fi
    "$VENV/bin/python" -c "import kafka; print('kafka-python', kafka.__version__)"
fi
export MILLRACE_PYTHON="$VENV/bin/python"

# ---------------------------------------------------------------------------------------------------------------
section "node packages (tests/js: npm ci)"
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi

# ---------------------------------------------------------------------------------------------------------------
section "cargo build --release --bin millrace"
cargo build --release --bin millrace
export MILLRACE_BIN="$ROOT/target/release/millrace"

# ---------------------------------------------------------------------------------------------------------------
section "cargo test --workspace"
cargo test --workspace

# ---------------------------------------------------------------------------------------------------------------
section "cargo fmt --check"
cargo fmt --all -- --check

# ---------------------------------------------------------------------------------------------------------------
section "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# ---------------------------------------------------------------------------------------------------------------
section "cargo bench --no-run"
cargo bench --workspace --no-run

# ---------------------------------------------------------------------------------------------------------------
section "fuzz targets compile"
cargo build --manifest-path fuzz/Cargo.toml

section "all passed"
