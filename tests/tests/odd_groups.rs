//! Group ids are arbitrary strings on the wire: kafka-python commits offsets for ids holding a NUL, a newline
//! and non-ASCII characters, and after a kill -9 and a restart every commit is still there (the offsets
//! topic's keys are Kafka's length-prefixed OffsetCommitKey, not separator-joined text).
#![allow(clippy::unwrap_used)]

use millrace_tests::{in_ci, run_client, workspace_root, Broker};

#[test]
fn odd_group_ids_keep_their_commits_across_kill_9() {
    let root = workspace_root();
    let venv = root.join("tests/.venv/bin/python");
    let python = if venv.exists() {
        venv.to_string_lossy().to_string()
    } else {
        "python3".to_string()
    };
    if run_client(&python, &["-c", "import kafka"], &root).is_err() {
        assert!(!in_ci(), "kafka-python is not installed");
        eprintln!("skipping: kafka-python is not installed");
        return;
    }
    let script = root
        .join("tests/python/odd_group_ids.py")
        .to_string_lossy()
        .to_string();
    let mut b = Broker::start().unwrap();
    let out = run_client(&python, &[&script, &b.bootstrap(), "commit"], &root)
        .unwrap()
        .unwrap_or_default();
    assert!(out.contains("committed"), "{out}\n{}", b.stderr());
    b.kill9().unwrap();
    b.restart().unwrap();
    let out = run_client(&python, &[&script, &b.bootstrap(), "check"], &root)
        .unwrap()
        .unwrap_or_default();
    assert!(out.contains("survive"), "{out}\n{}", b.stderr());
}
