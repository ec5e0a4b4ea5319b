//! Unit tests of one log: offsets, roll, reads, time lookups, retention, DeleteRecords, truncation, restarts.

use bytes::{Bytes, BytesMut};
use millrace_protocol::records::{validate_batch, BatchBuilder, BatchHeader, BatchIter};

use super::*;
use crate::checkpoint;
use crate::config::TimestampType;

/// A batch of `n` records of `value_len` bytes at timestamp `ts`.
fn batch(ts: i64, n: usize, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(ts);
    for i in 0..n {
        b.push(
            ts,
            Some(format!("k{i}").as_bytes()),
            Some(&vec![b'v'; value_len]),
            &[],
        );
    }
    b.finish()
}

fn idem(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let mut b = BatchBuilder::new(1_000).producer(pid, epoch, seq);
    for _ in 0..n {
        b.push(1_000, None, Some(b"x"), &[]);
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_index_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, "t", 0, config).unwrap()
}

fn put(log: &Log, b: &Bytes) -> AppendInfo {
    log.append_slice(b, 1_000).unwrap()
}

/// (base offset, last offset) of every batch readable from the log start.
fn batches(log: &Log) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let s = log.read(offset, usize::MAX, true).unwrap();
        if s.records.is_empty() {
            return out;
        }
        for item in BatchIter::new(&s.records) {
            let (h, bytes) = item.unwrap();
            validate_batch(bytes).unwrap();
            out.push((h.base_offset, h.last_offset()));
            offset = h.last_offset() + 1;
        }
    }
}

#[test]
fn offsets_are_assigned_in_order_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    for (i, n) in [3, 1, 5].into_iter().enumerate() {
        let info = put(&log, &batch(i as i64, n, 10));
        assert_eq!(info.log_append_time, -1);
        assert!(!info.duplicate);
    }
    assert_eq!(batches(&log), vec![(0, 2), (3, 3), (4, 8)]);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), config());
    assert_eq!(batches(&log), vec![(0, 2), (3, 3), (4, 8)]);
    assert_eq!(put(&log, &batch(9, 2, 10)).base_offset, 9);
    drop(log); // crash: no clean marker
    let log = open(dir.path(), config());
    assert_eq!(log.log_end_offset(), 11);
    assert_eq!(put(&log, &batch(9, 1, 10)).base_offset, 11);
}

#[test]
fn several_batches_in_one_append_are_rewritten_in_place_and_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    put(&log, &batch(0, 2, 10));
    let mut buf = BytesMut::new();
    for n in [1, 4, 2] {
        buf.extend_from_slice(&batch(5, n, 10));
    }
    let info = log.append(&mut buf, 1_000).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (2, 8));
    // The caller's buffer now holds exactly what is stored.
    let stored = log.read(2, usize::MAX, true).unwrap().records;
    assert_eq!(&stored[..], &buf[..]);
    assert_eq!(batches(&log), vec![(0, 1), (2, 2), (3, 6), (7, 8)]);
}

#[test]
fn append_slice_does_not_touch_the_callers_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    put(&log, &batch(0, 2, 10));
    let b = batch(0, 1, 10);
    let before = b.clone();
    put(&log, &b);
    assert_eq!(b, before);
    let stored = log.read(2, usize::MAX, true).unwrap().records;
    assert_eq!(BatchHeader::parse(&stored).unwrap().base_offset, 2);
    assert_eq!(&stored[8..], &b[8..]);
}

#[test]
fn a_bad_append_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 500,
            ..config()
        },
    );
    put(&log, &batch(0, 1, 10));
    let good = batch(0, 1, 10);
    // A whole batch followed by a torn one; an oversized batch after a good one; nothing at all.
    let mut torn = good.to_vec();
    torn.extend_from_slice(&good[..30]);
    assert!(matches!(
        log.append_slice(&torn, 0),
        Err(Error::CorruptBatch(_))
    ));
    let mut big = good.to_vec();
    big.extend_from_slice(&batch(0, 1, 600));
    assert!(matches!(
        log.append_slice(&big, 0),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(log.append_slice(&[], 0).is_err());
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(log.size_bytes(), good.len() as u64);
}

#[test]
fn segments_roll_by_size_and_every_offset_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for i in 0..80 {
        put(&log, &batch(i, 2, 100));
    }
    assert!(log.segment_count() > 4, "{} segments", log.segment_count());
    let bases = log.segment_bases();
    for w in bases.windows(2) {
        assert!(w[0] < w[1]);
    }
    // Every segment but the active one is sealed: cut to its size, no larger than segment.bytes.
    for base in &bases[..bases.len() - 1] {
        let len = std::fs::metadata(crate::names::segment_file(dir.path(), *base, "log"))
            .unwrap()
            .len();
        assert!(len > 0 && len <= 4096, "segment {base}: {len} bytes");
    }
    for offset in 0..160 {
        let s = log.read(offset, 1, true).unwrap();
        let h = BatchHeader::parse(&s.records).unwrap();
        assert!(h.base_offset <= offset && offset <= h.last_offset());
    }
    // A batch larger than segment.bytes gets a segment of its own.
    let big = batch(0, 1, 10_000);
    let info = put(&log, &big);
    let stored = log.read(info.base_offset, 1, true).unwrap().records;
    assert_eq!(&stored[8..], &big[8..]);
}

#[test]
fn segments_roll_by_age_measured_in_record_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            segment_ms: 1_000,
            ..config()
        },
    );
    put(&log, &batch(10_000, 1, 10));
    put(&log, &batch(10_900, 1, 10));
    assert_eq!(log.segment_count(), 1);
    // Old data replayed with old timestamps does not roll every append.
    put(&log, &batch(5, 1, 10));
    assert_eq!(log.segment_count(), 1);
    put(&log, &batch(11_001, 1, 10));
    assert_eq!(log.segment_bases(), vec![0, 3]);
}

#[test]
fn a_full_index_rolls_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            segment_index_bytes: 32, // four offset entries, two time entries
            index_interval_bytes: 1,
            ..config()
        },
    );
    for i in 0..10 {
        put(&log, &batch(i, 1, 10));
    }
    assert!(log.segment_count() >= 3, "{:?}", log.segment_bases());
    assert_eq!(batches(&log).len(), 10);
}

#[test]
fn reads_follow_kip_74_and_refuse_offsets_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let small = batch(0, 1, 10);
    let large = batch(0, 1, 2_000);
    put(&log, &large);
    put(&log, &small);
    put(&log, &small);
    // max_bytes below the first batch: nothing, or exactly that one batch with min_one_batch.
    assert!(log.read(0, 100, false).unwrap().records.is_empty());
    assert_eq!(log.read(0, 100, true).unwrap().records.len(), large.len());
    // Whole batches only, never past max_bytes.
    let r = log.read(0, large.len() + small.len() + 1, false).unwrap();
    assert_eq!(r.records.len(), large.len() + small.len());
    assert_eq!((r.high_watermark, r.log_start_offset), (3, 0));
    // The log end reads empty; past it and below the start are out of range.
    assert!(log.read(3, 1 << 20, true).unwrap().records.is_empty());
    assert!(matches!(
        log.read(4, 1, true),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(-1, 1, true),
        Err(Error::OffsetOutOfRange { .. })
    ));
}

#[test]
fn slices_outlive_the_lock_and_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for i in 0..20 {
        put(&log, &batch(i, 2, 100));
    }
    let s = log.read(0, usize::MAX, true).unwrap().records;
    let copy = s.to_vec();
    log.delete_records_before(30).unwrap();
    log.delete().unwrap();
    assert_eq!(&s[..], &copy[..]);
}

#[test]
fn time_lookups_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for i in 0..30 {
        put(&log, &batch(1_000 + i * 10, 2, 100));
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.offset_for_timestamp(0), Some((0, 1_000)));
    assert_eq!(log.offset_for_timestamp(1_000), Some((0, 1_000)));
    assert_eq!(log.offset_for_timestamp(1_001), Some((2, 1_010)));
    assert_eq!(log.offset_for_timestamp(1_150), Some((30, 1_150)));
    assert_eq!(log.offset_for_timestamp(1_291), None);
    assert_eq!(log.max_timestamp(), Some((1_290, 58)));
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), config());
    assert_eq!(log.offset_for_timestamp(1_151), Some((32, 1_160)));
    assert_eq!(log.max_timestamp(), Some((1_290, 58)));
}

#[test]
fn log_append_time_stamps_batches_and_keeps_them_valid() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..config()
        },
    );
    let b = batch(5, 3, 10);
    let info = log.append_slice(&b, 777_000).unwrap();
    assert_eq!(info.log_append_time, 777_000);
    let stored = log.read(0, usize::MAX, true).unwrap().records;
    let h = validate_batch(&stored).unwrap();
    assert_eq!(h.max_timestamp, 777_000);
    assert_ne!(
        h.attributes & millrace_protocol::records::attributes::TIMESTAMP_LOG_APPEND,
        0
    );
    assert_eq!(log.offset_for_timestamp(700_000), Some((0, 777_000)));
}

#[test]
fn time_retention_deletes_old_segments_and_an_idle_expired_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: 1_000,
        ..config()
    };
    let log = open(dir.path(), cfg.clone());
    for i in 0..60 {
        put(&log, &batch(10_000 + i, 2, 100));
    }
    let segments = log.segment_count();
    assert!(segments > 3);
    assert_eq!(log.apply_retention(10_500).unwrap(), 0);
    // Everything expired: all segments go, the log keeps an empty active segment at its end.
    assert_eq!(log.apply_retention(20_000).unwrap(), segments);
    assert_eq!(log.segment_count(), 1);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (120, 120));
    assert!(log.read(120, 100, true).unwrap().records.is_empty());
    assert_eq!(
        log.apply_retention(20_000).unwrap(),
        0,
        "an empty active segment stays"
    );
    assert_eq!(put(&log, &batch(20_000, 1, 10)).base_offset, 120);
    drop(log);
    let log = open(dir.path(), cfg);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (120, 121));
}

#[test]
fn size_retention_keeps_the_newest_segments_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: -1,
            retention_bytes: 10_000,
            ..config()
        },
    );
    for i in 0..80 {
        put(&log, &batch(i, 2, 100));
    }
    let before = log.size_bytes();
    assert!(before > 20_000, "{before} bytes");
    assert!(log.apply_retention(i64::MAX).unwrap() > 0);
    // As in Kafka, at least retention.bytes stay: less than one more segment.
    let after = log.size_bytes();
    assert!((10_000..10_000 + 4096).contains(&after), "{after} bytes");
    let start = log.log_start_offset();
    assert_eq!(start, log.segment_bases()[0]);
    assert_eq!(batches(&log).first().map(|b| b.0), Some(start));
    // Delete policy off: retention does nothing.
    log.set_config(LogConfig {
        cleanup_delete: false,
        retention_bytes: 0,
        ..config()
    });
    assert_eq!(log.apply_retention(i64::MAX).unwrap(), 0);
}

#[test]
fn delete_records_moves_the_start_and_drops_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for i in 0..30 {
        put(&log, &batch(i, 2, 100));
    }
    let segments = log.segment_count();
    let second = log.segment_bases()[1];
    assert_eq!(log.delete_records_before(second + 1).unwrap(), second + 1);
    assert_eq!(log.segment_count(), segments - 1);
    assert!(matches!(
        log.read(second, 1, true),
        Err(Error::OffsetOutOfRange { .. })
    ));
    // The batch holding the new start is still what a read from it returns.
    let s = log.read(second + 1, 1, true).unwrap();
    assert_eq!(BatchHeader::parse(&s.records).unwrap().base_offset, second);
    assert_eq!(
        log.delete_records_before(3).unwrap(),
        second + 1,
        "never backwards"
    );
    assert!(log.delete_records_before(61).is_err());
    drop(log);
    let log = open(dir.path(), config());
    assert_eq!(log.log_start_offset(), second + 1);
    assert_eq!(log.delete_records_before(60).unwrap(), 60);
    assert_eq!(put(&log, &batch(0, 1, 1)).base_offset, 60);
}

#[test]
fn truncate_to_cuts_at_a_batch_and_the_log_continues_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for i in 0..60 {
        put(&log, &batch(i, 2, 100));
    }
    let reader = log.read(0, usize::MAX, true).unwrap().records;
    let copy = reader.to_vec();
    // Inside a batch: the whole batch goes.
    log.truncate_to(41).unwrap();
    assert_eq!(log.log_end_offset(), 40);
    assert_eq!(batches(&log).last(), Some(&(38, 39)));
    assert_eq!(&reader[..], &copy[..], "slices handed out are untouched");
    assert_eq!(put(&log, &batch(0, 1, 1)).base_offset, 40);
    // At a segment boundary, then into an older segment.
    let base = log.segment_bases()[1];
    log.truncate_to(base).unwrap();
    assert_eq!(log.log_end_offset(), base);
    log.truncate_to(5).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(put(&log, &batch(0, 3, 1)).base_offset, 4);
    drop(log);
    let log = open(dir.path(), config());
    assert_eq!(batches(&log), vec![(0, 1), (2, 3), (4, 6)]);
    // Below the log start: the log restarts there, empty.
    log.delete_records_before(4).unwrap();
    log.truncate_to(2).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (2, 2));
    assert!(batches(&log).is_empty());
}

#[test]
fn truncation_rebuilds_producer_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    for seq in 0..10 {
        put(&log, &idem(9, 0, seq, 1));
    }
    log.truncate_to(6).unwrap();
    // Sequences 6.. are gone: 6 is accepted again, 5 is a duplicate, 9 is out of order.
    assert!(log.append_slice(&idem(9, 0, 5, 1), 0).unwrap().duplicate);
    assert!(matches!(
        log.append_slice(&idem(9, 0, 9, 1), 0),
        Err(Error::OutOfOrderSequence { expected: 6, .. })
    ));
    assert_eq!(
        log.append_slice(&idem(9, 0, 6, 1), 0).unwrap().base_offset,
        6
    );
}

#[test]
fn duplicates_inside_a_multi_batch_append_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    put(&log, &idem(1, 0, 0, 2));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&idem(1, 0, 2, 1));
    buf.extend_from_slice(&idem(1, 0, 0, 2));
    let info = log.append(&mut buf, 0).unwrap();
    assert!(info.duplicate);
    assert_eq!((info.base_offset, info.last_offset), (0, 1));
    assert_eq!(log.log_end_offset(), 2);
    // The first batch was not recorded either: it is still next in sequence.
    assert_eq!(
        log.append_slice(&idem(1, 0, 2, 1), 0).unwrap().base_offset,
        2
    );
}

#[test]
fn flush_messages_policy_fsyncs_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            flush_messages: 5,
            ..config()
        },
    );
    for _ in 0..4 {
        put(&log, &batch(0, 2, 10));
    }
    assert_eq!(log.fsync_count(), 1, "after 6 of 8 records");
    assert_eq!(log.durable_offset(), 6);
    // flush.ms is off, but nothing waits more than RECOVERY_FLUSH_MS for an fsync.
    assert!(!log.flush_if_due(1_000 + RECOVERY_FLUSH_MS - 1).unwrap());
    assert!(log.flush_if_due(1_000 + RECOVERY_FLUSH_MS).unwrap());
    assert_eq!(log.durable_offset(), 8);
    log.set_config(LogConfig {
        flush_ms: 100,
        ..config()
    });
    put(&log, &batch(0, 1, 10));
    assert!(!log.flush_if_due(1_050).unwrap());
    assert!(log.flush_if_due(1_100).unwrap());
    assert_eq!(log.durable_offset(), 9);
}

#[tokio::test]
async fn appends_wake_waiting_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open(dir.path(), config()));
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            let notified = log.appended().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if log.log_end_offset() == 0 {
                notified.await;
            }
            log.log_end_offset()
        })
    };
    tokio::task::yield_now().await;
    put(&log, &batch(0, 1, 1));
    assert_eq!(waiter.await.unwrap(), 1);
}

#[tokio::test]
async fn wait_durable_refuses_offsets_not_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    put(&log, &batch(0, 2, 10));
    log.wait_durable(1).await.unwrap();
    assert!(matches!(
        log.wait_durable(2).await,
        Err(Error::OffsetOutOfRange { .. })
    ));
}

#[test]
fn appends_after_close_reopen_the_log_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    put(&log, &batch(0, 2, 10));
    log.close().unwrap();
    assert!(checkpoint::is_clean(dir.path()));
    put(&log, &batch(0, 2, 10));
    assert!(
        !checkpoint::is_clean(dir.path()),
        "a crash now must not look clean"
    );
    drop(log);
    let log = open(dir.path(), config());
    assert_eq!(batches(&log), vec![(0, 1), (2, 3)]);
}

#[test]
fn a_deleted_log_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let log = open(&path, config());
    put(&log, &batch(0, 1, 1));
    log.delete().unwrap();
    assert!(!path.exists());
    assert!(matches!(
        log.append_slice(&batch(0, 1, 1), 0),
        Err(Error::Deleted(_))
    ));
}

/// How many of this process's file descriptors point into `dir` (other tests' folders are elsewhere, so this
/// is exact even with tests running in parallel).
fn fds_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[tokio::test]
async fn a_partition_keeps_one_file_open_however_many_segments_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config());
    assert_eq!(fds_under(dir.path()), 1, "the active .log only");
    for i in 0..80 {
        put(&log, &batch(i, 2, 100));
    }
    // Right after a roll, before the background seal is done, an fsync covers the sealed segment too (reopened
    // by path).
    log.wait_durable(159).await.unwrap();
    log.sealer.wait_idle();
    assert!(log.segment_count() > 4);
    assert_eq!(
        fds_under(dir.path()),
        1,
        "sealed segments and indexes keep none"
    );
    for offset in 0..160 {
        let s = log.read(offset, 1, true).unwrap();
        let h = BatchHeader::parse(&s.records).unwrap();
        assert!(h.base_offset <= offset && offset <= h.last_offset());
    }
    log.close().unwrap();
    assert_eq!(fds_under(dir.path()), 0, "closing seals the active segment");
    put(&log, &batch(0, 2, 10));
    log.flush().unwrap();
    drop(log);
    log_is_reopened_with_one_fd(dir.path());
}

fn log_is_reopened_with_one_fd(dir: &Path) {
    // Unclean (the last append was not followed by a close): sealed segments from their indexes, the active one
    // validated.
    let log = open(dir, config());
    assert_eq!(fds_under(dir), 1);
    assert_eq!(log.log_end_offset(), 162);
    log.close().unwrap();
    drop(log);
    // Clean.
    let log = open(dir, config());
    assert_eq!(fds_under(dir), 1);
    assert_eq!(batches(&log).last(), Some(&(160, 161)));
}
