//! Idempotent producers through the log: duplicates answered with their original offsets, sequence gaps and
//! fencing refused, and the state surviving restarts (clean, crashed, and with snapshots gone or damaged).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{AppendInfo, Error, Log, LogConfig};

/// A batch of `n` records from producer `pid` at `epoch`, sequences `seq..seq + n`.
fn idem(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::new(1_000).producer(pid, epoch, seq);
    for i in 0..n {
        b.push(
            1_000,
            None,
            Some(format!("{pid}/{epoch}/{}", seq + i as i32).as_bytes()),
            &[],
        );
    }
    b.finish()
}

fn plain(n: usize) -> Bytes {
    let mut b = BatchBuilder::new(1_000);
    for _ in 0..n {
        b.push(1_000, None, Some(b"plain"), &[]);
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    }
}

fn append(log: &Log, b: &Bytes) -> Result<AppendInfo, Error> {
    log.append_slice(b, 5)
}

#[test]
fn a_retried_batch_gets_its_original_offsets_and_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", 0, config()).unwrap();
    let first = append(&log, &idem(1, 0, 0, 3)).unwrap();
    append(&log, &plain(1)).unwrap();
    let second = append(&log, &idem(1, 0, 3, 2)).unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 2));
    assert_eq!((second.base_offset, second.last_offset), (4, 5));
    let size = log.size_bytes();
    for (retry, original) in [(idem(1, 0, 0, 3), first), (idem(1, 0, 3, 2), second)] {
        let dup = append(&log, &retry).unwrap();
        assert!(dup.duplicate);
        assert_eq!(
            (dup.base_offset, dup.last_offset),
            (original.base_offset, original.last_offset)
        );
    }
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.size_bytes(), size);
    // Non-idempotent batches are never deduplicated.
    assert!(!append(&log, &plain(1)).unwrap().duplicate);
}

#[test]
fn gaps_and_reordering_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", 0, config()).unwrap();
    append(&log, &idem(1, 0, 0, 5)).unwrap();
    for bad_seq in [7, 4, 1] {
        match append(&log, &idem(1, 0, bad_seq, 1)) {
            Err(Error::OutOfOrderSequence {
                producer_id: 1,
                expected: 5,
                got,
            }) => assert_eq!(got, bad_seq),
            other => panic!("seq {bad_seq}: {other:?}"),
        }
    }
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(append(&log, &idem(1, 0, 5, 1)).unwrap().base_offset, 5);
}

#[test]
fn a_newer_epoch_fences_the_older_one_and_restarts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", 0, config()).unwrap();
    append(&log, &idem(1, 0, 0, 2)).unwrap();
    assert!(matches!(
        append(&log, &idem(1, 1, 2, 1)),
        Err(Error::OutOfOrderSequence { expected: 0, .. })
    ));
    append(&log, &idem(1, 1, 0, 1)).unwrap();
    assert!(matches!(
        append(&log, &idem(1, 0, 2, 1)),
        Err(Error::InvalidProducerEpoch {
            producer_id: 1,
            epoch: 0,
            current: 1
        })
    ));
    // A retry from the fenced epoch is fenced too, not answered as a duplicate.
    assert!(append(&log, &idem(1, 0, 0, 2)).is_err());
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn an_unknown_producer_is_accepted_at_any_sequence_as_in_kafka_3() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", 0, config()).unwrap();
    let info = append(&log, &idem(42, 3, 1_000, 2)).unwrap();
    assert_eq!(info.base_offset, 0);
    assert!(append(&log, &idem(42, 3, 1_002, 1)).is_ok());
    assert!(append(&log, &idem(42, 3, 1_000, 2)).unwrap().duplicate);
}

#[test]
fn only_five_batches_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", 0, config()).unwrap();
    for seq in 0..6 {
        append(&log, &idem(1, 0, seq, 1)).unwrap();
    }
    for seq in 1..6 {
        assert!(
            append(&log, &idem(1, 0, seq, 1)).unwrap().duplicate,
            "seq {seq}"
        );
    }
    assert!(matches!(
        append(&log, &idem(1, 0, 0, 1)),
        Err(Error::OutOfOrderSequence { .. })
    ));
}

/// Appends 40 batches from three producers across several segments; returns each producer's next sequence and
/// the offsets of the last batch of producer 1.
fn fill(path: &Path) -> (i64, i64) {
    let log = Log::open(path, "t", 0, config()).unwrap();
    let mut last = (0, 0);
    for i in 0..40 {
        let pid = i64::from(i % 3) + 1;
        let info = append(&log, &idem(pid, 0, (i / 3) * 2, 2)).unwrap();
        if pid == 1 {
            last = (info.base_offset, info.last_offset);
        }
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    last
}

/// After a restart, producer 1 must see its last batch (sequences 26-27) as a duplicate and continue at 28.
fn assert_state_survived(path: &Path, last: (i64, i64)) {
    let log = Log::open(path, "t", 0, config()).unwrap();
    assert_eq!(log.producer_count(), 3);
    let dup = append(&log, &idem(1, 0, 26, 2)).unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.base_offset, dup.last_offset), last);
    assert!(matches!(
        append(&log, &idem(1, 0, 30, 1)),
        Err(Error::OutOfOrderSequence { expected: 28, .. })
    ));
    assert!(!append(&log, &idem(1, 0, 28, 1)).unwrap().duplicate);
}

#[test]
fn producer_state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    {
        let log = Log::open(dir.path(), "t", 0, config()).unwrap();
        log.close().unwrap();
    }
    assert_state_survived(dir.path(), last);
}

#[test]
fn producer_state_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path()); // dropped without close
    assert_state_survived(dir.path(), last);
}

#[test]
fn producer_state_is_rebuilt_from_the_log_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "snapshot") {
            std::fs::remove_file(p).unwrap();
        }
    }
    assert_state_survived(dir.path(), last);
}

#[test]
fn a_damaged_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    let mut snaps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snapshot"))
        .collect();
    snaps.sort();
    let newest = snaps.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(newest, data).unwrap();
    assert_state_survived(dir.path(), last);
}
