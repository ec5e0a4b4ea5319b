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
async fn a_roll_makes_everything_before_it_durable() {
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
    assert!(log.segment_count() > 1);
    // The sealed segments were fsynced at roll: waiting for an offset in them costs nothing.
    let sealed_end = log.segment_bases()[1];
    log.wait_durable(sealed_end - 1).await.unwrap();
    assert_eq!(log.fsync_count(), 0);
}
