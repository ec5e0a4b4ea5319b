//! acks=all durability: `wait_durable` resolves only after an fsync covering the offset, and concurrent waiters
//! share fsyncs (group commit) instead of issuing one each.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig};

fn batch(i: i64) -> bytes::Bytes {
    let mut b = BatchBuilder::new(i);
    b.push(i, None, Some(&[1u8; 512]), &[]);
    b.finish()
}

/// `producers` tasks each append `rounds` batches, waiting for durability after each (as acks=all producers
/// with one request in flight do). Returns (waits, fsyncs).
async fn run(log: Arc<Log>, producers: i64, rounds: i64) -> (u64, u64) {
    let before = log.fsync_count();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let info = log.append_slice(&batch(p * rounds + r), 0).unwrap();
                log.wait_durable(info.last_offset).await.unwrap();
                assert!(log.durable_offset() > info.last_offset);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ((producers * rounds) as u64, log.fsync_count() - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), "t", 0, LogConfig::default()).unwrap());
    let (waits, fsyncs) = run(log.clone(), 64, 4).await;
    assert_eq!(log.log_end_offset(), 256);
    println!("group commit: {fsyncs} fsyncs for {waits} acks=all waits");
    assert!(
        fsyncs >= 1 && fsyncs <= waits / 4,
        "{fsyncs} fsyncs for {waits} waits"
    );
    // Already durable: no further fsync.
    log.wait_durable(255).await.unwrap();
    assert_eq!(log.fsync_count(), fsyncs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_waiter_gets_its_own_fsync_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), "t", 0, LogConfig::default()).unwrap());
    let (waits, fsyncs) = run(log, 1, 10).await;
    assert_eq!(
        (waits, fsyncs),
        (10, 10),
        "nothing is acknowledged without an fsync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_segments_become_durable_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        "t",
        0,
        LogConfig {
            segment_bytes: 2048,
            ..LogConfig::default()
        },
    )
    .unwrap();
    for i in 0..10 {
        log.append_slice(&batch(i), 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    // The sealer fsyncs each rolled segment off the append path; nobody waiting issues an fsync.
    let sealed_end = *log.segment_bases().last().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.durable_offset() < sealed_end {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    log.wait_durable(sealed_end - 1).await.unwrap();
    assert_eq!(log.fsync_count(), 0);
    // The recovery checkpoint followed (the sealer writes it just after it advances the durable offset).
    let point = || -> Option<i64> {
        std::fs::read_to_string(dir.path().join("recovery-point-checkpoint"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    while point() != Some(sealed_end) {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint {:?}",
            point()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
