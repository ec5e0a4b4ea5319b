//! kafkajs (tests/js/roundtrip.js) against the real binary: the producer (no compression and gzip) and the admin
//! client. kafkajs consumers need consumer groups, which millrace does not have yet.
//!
//! Needs `node` and `npm ci` in tests/js (done by `scripts/test.sh`). Missing either fails the test in CI
//! (`CI=true`) and skips it elsewhere.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use millrace_tests::{in_ci, workspace_root, Broker};

#[test]
fn kafkajs_producer_and_admin() {
    let dir = workspace_root().join("tests/js");
    let node = Command::new("node").arg("--version").output();
    let missing = match node {
        Err(e) => Some(format!("node: {e}")),
        Ok(_) if !dir.join("node_modules/kafkajs/package.json").exists() => {
            Some("tests/js/node_modules/kafkajs is missing (run `npm ci` in tests/js)".to_string())
        }
        Ok(_) => None,
    };
    if let Some(why) = missing {
        assert!(!in_ci(), "kafkajs is required in CI: {why}");
        eprintln!("skipping: {why}");
        return;
    }
    let b = Broker::start().unwrap();
    let out = Command::new("node")
        .arg("roundtrip.js")
        .arg(b.bootstrap())
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "roundtrip.js failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker stderr:\n{}",
        out.status,
        b.stderr()
    );
    assert!(stdout.contains("kafkajs: all ok"), "{stdout}");
}
