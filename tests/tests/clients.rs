//! kafka-python and kafkajs against the real binary, through their scripts in tests/python and tests/js
//! (`scripts/test.sh` installs both from the registries). Outside CI a missing interpreter skips the test.
#![allow(clippy::unwrap_used)]

use millrace_tests::{in_ci, run_client, workspace_root, Broker};

#[test]
fn kafka_python_round_trip_and_admin() {
    let root = workspace_root();
    let venv = root.join("tests/.venv/bin/python");
    let python = if venv.exists() {
        venv.to_string_lossy().to_string()
    } else {
        "python3".to_string()
    };
    let b = Broker::start().unwrap();
    let script = root
        .join("tests/python/roundtrip.py")
        .to_string_lossy()
        .to_string();
    if let Err(e) = run_client(&python, &["-c", "import kafka"], &root) {
        assert!(!in_ci(), "kafka-python is not installed: {e}");
        eprintln!("skipping: kafka-python is not installed");
        return;
    }
    let out = run_client(&python, &[&script, &b.bootstrap()], &root)
        .unwrap()
        .unwrap_or_default();
    assert!(
        out.contains("kafka-python round trip ok"),
        "{out}\nbroker stderr:\n{}",
        b.stderr()
    );
}

#[test]
fn kafkajs_producer_and_admin() {
    let root = workspace_root();
    if !root.join("tests/js/node_modules/kafkajs").exists() {
        assert!(!in_ci(), "kafkajs is not installed (npm ci in tests/js)");
        eprintln!("skipping: kafkajs is not installed");
        return;
    }
    let b = Broker::start().unwrap();
    let script = root
        .join("tests/js/roundtrip.js")
        .to_string_lossy()
        .to_string();
    let Some(out) = run_client("node", &[&script, &b.bootstrap()], &root).unwrap() else {
        return;
    };
    assert!(
        out.contains("kafkajs round trip ok"),
        "{out}\nbroker stderr:\n{}",
        b.stderr()
    );
}

#[test]
fn kafka_python_consumer_groups_and_group_admin() {
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
        return;
    }
    let b =
        Broker::start_with_env(&[("MILLRACE_GROUP_INITIAL_REBALANCE_DELAY_MS", "300")]).unwrap();
    let script = root
        .join("tests/python/groups.py")
        .to_string_lossy()
        .to_string();
    let out = run_client(&python, &[&script, &b.bootstrap()], &root)
        .unwrap()
        .unwrap_or_default();
    assert!(
        out.contains("kafka-python groups ok"),
        "{out}\nbroker stderr:\n{}",
        b.stderr()
    );
}

#[test]
fn kafkajs_consumer_groups() {
    let root = workspace_root();
    if !root.join("tests/js/node_modules/kafkajs").exists() {
        assert!(!in_ci(), "kafkajs is not installed (npm ci in tests/js)");
        eprintln!("skipping: kafkajs is not installed");
        return;
    }
    let b =
        Broker::start_with_env(&[("MILLRACE_GROUP_INITIAL_REBALANCE_DELAY_MS", "300")]).unwrap();
    let script = root
        .join("tests/js/groups.js")
        .to_string_lossy()
        .to_string();
    let Some(out) = run_client("node", &[&script, &b.bootstrap()], &root).unwrap() else {
        return;
    };
    assert!(
        out.contains("kafkajs groups ok"),
        "{out}\nbroker stderr:\n{}",
        b.stderr()
    );
}
