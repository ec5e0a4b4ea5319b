//! kafka-python and kafkajs against the real binary, through their scripts in tests/python and tests/js
//! (`scripts/test.sh` installs both from the registries). Outside CI a missing client skips the test.
#![allow(clippy::unwrap_used)]

use millrace_tests::{in_ci, run_client, workspace_root, Broker};

/// The Python with kafka-python (tests/.venv from scripts/test.sh, else python3); `None` (skip) only outside CI.
fn kafka_python() -> Option<String> {
    let root = workspace_root();
    let venv = root.join("tests/.venv/bin/python");
    let python = if venv.exists() {
        venv.to_string_lossy().to_string()
    } else {
        "python3".to_string()
    };
    if let Err(e) = run_client(&python, &["-c", "import kafka"], &root) {
        assert!(!in_ci(), "kafka-python is not installed: {e}");
        eprintln!("skipping: kafka-python is not installed");
        return None;
    }
    Some(python)
}

/// `node` when kafkajs is installed in tests/js (`npm ci`); `None` (skip) only outside CI.
fn kafkajs() -> Option<String> {
    let ok = workspace_root()
        .join("tests/js/node_modules/kafkajs")
        .exists();
    assert!(
        ok || !in_ci(),
        "kafkajs is not installed (npm ci in tests/js)"
    );
    if !ok {
        eprintln!("skipping: kafkajs is not installed");
    }
    ok.then(|| "node".to_string())
}

/// Runs `script` (relative to the workspace) with `interpreter` against a fresh broker started with `env`, and
/// expects `marker` in its output.
fn run_script(interpreter: Option<String>, script: &str, env: &[(&str, &str)], marker: &str) {
    let Some(interpreter) = interpreter else {
        return;
    };
    let root = workspace_root();
    let b = Broker::start_with_env(env).unwrap();
    let script = root.join(script).to_string_lossy().to_string();
    let out = run_client(&interpreter, &[&script, &b.bootstrap()], &root)
        .unwrap()
        .unwrap_or_default();
    assert!(
        out.contains(marker),
        "{out}\nbroker stderr:\n{}",
        b.stderr()
    );
}

/// Groups start rebalancing sooner than Kafka's 3 s default, to keep the tests short.
const FAST_GROUPS: &[(&str, &str)] = &[("MILLRACE_GROUP_INITIAL_REBALANCE_DELAY_MS", "300")];

#[test]
fn kafka_python_round_trip_and_admin() {
    run_script(
        kafka_python(),
        "tests/python/roundtrip.py",
        &[],
        "kafka-python round trip ok",
    );
}

#[test]
fn kafkajs_producer_and_admin() {
    run_script(
        kafkajs(),
        "tests/js/roundtrip.js",
        &[],
        "kafkajs round trip ok",
    );
}

#[test]
fn kafka_python_consumer_groups_and_group_admin() {
    run_script(
        kafka_python(),
        "tests/python/groups.py",
        FAST_GROUPS,
        "kafka-python groups ok",
    );
}

#[test]
fn kafkajs_consumer_groups() {
    run_script(
        kafkajs(),
        "tests/js/groups.js",
        FAST_GROUPS,
        "kafkajs groups ok",
    );
}
