//! kafka-python (tests/python/roundtrip.py) against the real binary: every compression kafka-python supports,
//! assign() + seek_to_beginning() consumption, and KafkaAdminClient calls.
//!
//! The interpreter is `$MILLRACE_PYTHON`, else `tests/.venv/bin/python` (made by `scripts/test.sh`), else
//! `python3`. A missing interpreter or package fails the test in CI (`CI=true`) and skips it elsewhere.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use millrace_tests::{in_ci, workspace_root, Broker};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MILLRACE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join("tests/.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Whether the interpreter can import every module the script needs; `Err` explains what is missing.
fn ready(py: &PathBuf) -> Result<(), String> {
    let out = Command::new(py)
        .args(["-c", "import kafka, kafka.codec as c; assert c.has_gzip() and c.has_snappy() and c.has_lz4() and c.has_zstd(), 'a codec is missing'"])
        .output()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn kafka_python_round_trips_and_admin() {
    let py = python();
    if let Err(why) = ready(&py) {
        assert!(!in_ci(), "kafka-python is required in CI: {why}");
        eprintln!("skipping: kafka-python with its codecs is not available ({why}); run scripts/test.sh to install it");
        return;
    }
    let b = Broker::start().unwrap();
    let script = workspace_root().join("tests/python/roundtrip.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(b.bootstrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "roundtrip.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker stderr:\n{}",
        out.status,
        b.stderr()
    );
    assert!(stdout.contains("kafka-python: all ok"), "{stdout}");
}
