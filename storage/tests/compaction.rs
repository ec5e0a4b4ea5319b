//! Compaction keeps the latest record per key at its original offset, removes tombstones after
//! delete.retention.ms, never touches the active segment, and survives a reopen.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::BytesMut;
use millrace_protocol::records::{
    compression, BatchHeader, Compression, RecordIter, BATCH_HEADER_LEN,
};
use millrace_storage::{Log, LogConfig};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        cleanup_compact: true,
        cleanup_delete: false,
        delete_retention_ms: 1_000,
        ..LogConfig::default()
    }
}

fn put(log: &Log, ts: i64, key: &str, value: Option<&str>) -> i64 {
    let mut b = millrace_protocol::records::BatchBuilder::new(ts);
    b.push(ts, Some(key.as_bytes()), value.map(str::as_bytes), &[]);
    log.append(&mut BytesMut::from(&b.finish()[..]), ts)
        .unwrap()
        .base_offset
}

/// offset -> (key, value) of every record in the log.
fn records(log: &Log) -> BTreeMap<i64, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let s = log.read(offset, usize::MAX, true).unwrap();
        if s.records.is_empty() {
            break;
        }
        let mut pos = 0;
        while pos < s.records.len() {
            let h = BatchHeader::parse(&s.records[pos..]).unwrap();
            let body = s.records.slice(pos + BATCH_HEADER_LEN..pos + h.total_len());
            let body = compression::decompress(h.compression().unwrap_or(Compression::None), &body)
                .unwrap();
            for r in RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count) {
                let r = r.unwrap();
                let text = |b: &bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
                out.insert(
                    r.offset,
                    (text(r.key.as_ref().unwrap()), r.value.as_ref().map(text)),
                );
            }
            offset = h.last_offset() + 1;
            pos += h.total_len();
        }
    }
    out
}

#[test]
fn latest_value_per_key_survives_at_its_offset_and_tombstones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "c", 0, config()).unwrap();
    let mut latest: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("k{}", i % 10);
        let value = format!("v{i}");
        let off = put(&log, 10_000 + i, &key, Some(&value));
        latest.insert(key, (off, Some(value)));
    }
    let tomb = put(&log, 20_000, "k3", None);
    latest.insert("k3".into(), (tomb, None));
    // Push everything above into sealed segments: the active segment is never cleaned.
    log.roll().unwrap();
    let active_first = put(&log, 20_001, "k0", Some("active"));
    assert!(log.segment_count() > 3);

    let stats = log.compact(20_500).unwrap();
    assert!(
        stats.segments_rewritten > 0 && stats.records_removed > 0,
        "{stats:?}"
    );
    let got = records(&log);
    let mut want: BTreeMap<i64, (String, Option<String>)> = latest
        .iter()
        .map(|(k, (o, v))| (*o, (k.clone(), v.clone())))
        .collect();
    want.insert(active_first, ("k0".into(), Some("active".into())));
    assert_eq!(
        got, want,
        "only the latest per key, at the original offsets, tombstone still there"
    );
    assert_eq!(log.log_end_offset(), active_first + 1);

    // After delete.retention.ms the tombstone goes too, and a reopen sees the same compacted log.
    log.compact(20_000 + 1_000).unwrap();
    want.remove(&tomb);
    assert_eq!(records(&log), want);
    drop(log);
    let log = Log::open(dir.path(), "c", 0, config()).unwrap();
    assert_eq!(records(&log), want);
    // Reading a removed offset returns the next surviving batch.
    let s = log.read(1, 1, true).unwrap();
    assert!(BatchHeader::parse(&s.records).unwrap().base_offset > 1);
}

#[test]
fn delete_policy_logs_are_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        "d",
        0,
        LogConfig {
            cleanup_compact: false,
            ..config()
        },
    )
    .unwrap();
    for i in 0..50 {
        put(&log, i, "same", Some("x"));
    }
    log.roll().unwrap();
    assert_eq!(log.compact(1_000_000).unwrap().segments_rewritten, 0);
    assert_eq!(records(&log).len(), 50);
}
