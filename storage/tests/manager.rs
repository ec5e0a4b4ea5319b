//! The data directory: discovery and parallel recovery, creation over leftovers, topic removal, the
//! maintenance task and clean shutdown.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{LogConfig, LogManager};

fn batch(ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(ts);
    b.push(ts, Some(b"k"), Some(&[1u8; 100]), &[]);
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    }
}

#[test]
fn open_all_finds_and_recovers_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let parts = [
        ("orders", 0),
        ("orders", 1),
        ("a-1", 0),
        ("a", 1),
        ("x-y", 12),
    ];
    {
        let m = LogManager::open(dir.path()).unwrap();
        for (i, (t, p)) in parts.iter().enumerate() {
            let log = m.create_partition(t, *p, config()).unwrap();
            for _ in 0..=i {
                log.append_slice(&batch(1), 1).unwrap();
            }
        }
        // Crash: no shutdown.
    }
    std::fs::create_dir(dir.path().join("not-a-partition")).unwrap();
    std::fs::write(dir.path().join("stray-0"), b"a file").unwrap();
    let m = LogManager::open(dir.path()).unwrap();
    let mut found = m.discover().unwrap();
    found.sort();
    let mut want: Vec<(String, i32)> = parts.iter().map(|(t, p)| (t.to_string(), *p)).collect();
    want.sort();
    assert_eq!(found, want);
    // Settings come from the caller; partitions it does not know are left alone.
    let logs = m.open_all(|t, _| (t != "x-y").then(config)).unwrap();
    assert_eq!(logs.len(), 4);
    for (i, (t, p)) in parts.iter().enumerate() {
        match m.get(t, *p) {
            Some(log) => {
                assert_eq!(log.log_end_offset(), i as i64 + 1, "{t}-{p}");
                assert!(!log.recovery().clean);
            }
            None => assert_eq!(*t, "x-y"),
        }
    }
    // Opening again returns the same log.
    let again = m.open_partition("orders", 0, config()).unwrap();
    assert!(Arc::ptr_eq(&again, &m.get("orders", 0).unwrap()));
}

#[test]
fn create_replaces_a_leftover_and_remove_topic_takes_every_partition_of_that_topic_only() {
    let dir = tempfile::tempdir().unwrap();
    let m = LogManager::open(dir.path()).unwrap();
    for p in 0..3 {
        m.create_partition("a", p, config())
            .unwrap()
            .append_slice(&batch(1), 1)
            .unwrap();
    }
    m.create_partition("a-1", 0, config()).unwrap();
    // A folder of an older incarnation of "b", not open: created afresh, empty.
    // (Made by a manager of another directory and moved in: a second manager cannot open this one.)
    {
        let elsewhere = tempfile::tempdir().unwrap();
        let old = LogManager::open(elsewhere.path()).unwrap();
        old.create_partition("b", 0, config())
            .unwrap()
            .append_slice(&batch(1), 1)
            .unwrap();
        drop(old);
        std::fs::rename(elsewhere.path().join("b-0"), dir.path().join("b-0")).unwrap();
    }
    assert_eq!(
        m.create_partition("b", 0, config())
            .unwrap()
            .log_end_offset(),
        0
    );
    let held = m.get("a", 2).unwrap();
    // The caller knows of two partitions; the third, open, goes too.
    m.remove_topic("a", 2).unwrap();
    assert!(m.get("a", 0).is_none() && m.get("a", 2).is_none());
    assert!(
        held.append_slice(&batch(1), 1).is_err(),
        "a deleted log refuses appends"
    );
    let left: Vec<_> = m.discover().unwrap();
    assert_eq!(left, vec![("a-1".to_string(), 0), ("b".to_string(), 0)]);
}

#[test]
fn many_partitions_are_created_at_once_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = LogManager::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let logs = m.create_partitions("wide", 0..200, config()).unwrap();
        eprintln!("created 200 partitions in {:?}", started.elapsed());
        assert_eq!(logs.len(), 200);
        for (p, log) in logs.iter().enumerate() {
            assert_eq!(log.partition(), p as i32);
            assert!(Arc::ptr_eq(log, &m.get("wide", p as i32).unwrap()));
        }
        logs[7].append_slice(&batch(1), 1).unwrap();
        logs[7].flush().unwrap();
        // Asking again for partitions that are open returns them as they are.
        let again = m.create_partitions("wide", 5..10, config()).unwrap();
        assert!(Arc::ptr_eq(&again[2], &logs[7]));
        assert_eq!(again[2].log_end_offset(), 1);
        // Crash: no shutdown.
    }
    let m = LogManager::open(dir.path()).unwrap();
    assert_eq!(m.discover().unwrap().len(), 200);
    let logs = m.open_all(|_, _| Some(config())).unwrap();
    assert_eq!(logs.len(), 200);
    assert_eq!(m.get("wide", 7).unwrap().log_end_offset(), 1);
}

#[test]
fn a_creation_that_fails_part_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let m = LogManager::open(dir.path()).unwrap();
    let other = m.create_partition("other", 0, config()).unwrap();
    // Partition 3's folder cannot be made: a file has its name.
    std::fs::write(dir.path().join("t-3"), b"in the way").unwrap();
    let err = m.create_partitions("t", 0..6, config()).unwrap_err();
    assert!(matches!(err, millrace_storage::Error::Io(_)), "{err}");
    for p in 0..6 {
        assert!(m.get("t", p).is_none(), "partition {p} is still open");
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    left.sort();
    assert_eq!(left, ["other-0", "t-3"]);
    assert!(m.get("other", 0).is_some());
    other.append_slice(&batch(1), 1).unwrap();
    // Once the obstacle is gone the same creation succeeds.
    std::fs::remove_file(dir.path().join("t-3")).unwrap();
    assert_eq!(m.create_partitions("t", 0..6, config()).unwrap().len(), 6);
}

#[test]
fn shutdown_closes_every_log_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = LogManager::open(dir.path()).unwrap();
        for p in 0..4 {
            let log = m.create_partition("t", p, config()).unwrap();
            for i in 0..30 {
                log.append_slice(&batch(i), 1).unwrap();
            }
        }
        m.shutdown().unwrap();
    }
    let m = LogManager::open(dir.path()).unwrap();
    let logs = m.open_all(|_, _| Some(config())).unwrap();
    assert_eq!(logs.len(), 4);
    for log in logs {
        let r = log.recovery();
        assert!(r.clean && r.validated_segments == 0, "{r:?}");
        assert_eq!(log.log_end_offset(), 30);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_applies_retention_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let m = Arc::new(LogManager::open(dir.path()).unwrap());
    let log = m
        .create_partition(
            "t",
            0,
            LogConfig {
                retention_ms: 1,
                ..config()
            },
        )
        .unwrap();
    // Old records: every segment is past retention.
    for _ in 0..20 {
        log.append_slice(&batch(1_000), 1).unwrap();
    }
    assert!(log.segment_count() > 2);
    let task = m.spawn_maintenance(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.log_start_offset() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.segment_count(), 1);
    m.shutdown().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn a_data_directory_is_opened_by_one_manager_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = LogManager::open(dir.path()).unwrap();
    let err = LogManager::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, millrace_storage::Error::DirectoryInUse(_)),
        "{err}"
    );
    drop(m);
    LogManager::open(dir.path()).unwrap();
}
