//! acks=all durability: `wait_durable` resolves only after an fsync covering the offset, and concurrent waiters
//! share fsyncs (group commit) instead of issuing one each.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::BytesMut;
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), "t", 0, LogConfig::default()).unwrap());
    let waiters = 64;
    let mut tasks = Vec::new();
    for i in 0..waiters {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = BatchBuilder::new(i);
            b.push(i, None, Some(&[1u8; 512]), &[]);
            let info = log.append(&mut BytesMut::from(&b.finish()[..]), 0).unwrap();
            log.wait_durable(info.last_offset).await.unwrap();
            info.last_offset
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..waiters).collect::<Vec<_>>());
    let fsyncs = log.fsync_count();
    assert!(
        fsyncs >= 1 && fsyncs < waiters as u64 / 2,
        "{fsyncs} fsyncs for {waiters} waiters"
    );
    // Already durable: no further fsync.
    log.wait_durable(waiters - 1).await.unwrap();
    assert_eq!(log.fsync_count(), fsyncs);
}
