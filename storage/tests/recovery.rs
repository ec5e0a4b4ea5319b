//! Crash recovery: the active segment cut at every byte length of its last batch reopens to exactly the valid
//! prefix, with the same offsets, and the next append continues from there.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::{Bytes, BytesMut};
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig};

fn batch(i: usize, records: usize, pid: Option<(i64, i32)>) -> Bytes {
    let mut b = BatchBuilder::new(1_000 + i as i64);
    if let Some((id, seq)) = pid {
        b = b.producer(id, 0, seq);
    }
    for r in 0..records {
        b.push(
            1_000 + i as i64,
            Some(format!("k{i}-{r}").as_bytes()),
            Some(&vec![i as u8; 20 + r * 7]),
            &[],
        );
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        segment_index_bytes: 4096,
        ..LogConfig::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Reads every batch from offset 0 as (base offset, bytes after the base offset field).
fn all_batches(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let slice = log.read(offset, usize::MAX, true).unwrap();
        let mut rest = &slice.records[..];
        assert!(!rest.is_empty());
        while !rest.is_empty() {
            let h = millrace_protocol::records::BatchHeader::parse(rest).unwrap();
            out.push((h.base_offset, rest[8..h.total_len()].to_vec()));
            offset = h.last_offset() + 1;
            rest = &rest[h.total_len()..];
        }
    }
    out
}

#[test]
fn cutting_the_last_batch_at_every_length_keeps_exactly_the_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let batches: Vec<Bytes> = (0..4)
        .map(|i| batch(i, 1 + i, Some((7, (0..i).map(|j| 1 + j as i32).sum()))))
        .collect();
    let (expected, last_start) = {
        let log = Log::open(&live, "t", 0, config()).unwrap();
        for b in &batches {
            log.append(&mut BytesMut::from(&b[..]), 5).unwrap();
        }
        let expected = all_batches(&log);
        let data_end: usize = batches.iter().map(Bytes::len).sum();
        // Dropped without close(): as after kill -9 (no clean marker, preallocated tail left in place).
        (expected, data_end - batches[3].len())
    };
    assert_eq!(expected.len(), 4);
    let seg = "00000000000000000000.log";
    for cut in 0..=batches[3].len() {
        let case = dir.path().join(format!("cut-{cut}"));
        copy_dir(&live, &case);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(case.join(seg))
            .unwrap();
        f.set_len((last_start + cut) as u64).unwrap();
        drop(f);
        let log = Log::open(&case, "t", 0, config()).unwrap();
        let got = all_batches(&log);
        let whole = cut == batches[3].len();
        assert_eq!(got.len(), if whole { 4 } else { 3 }, "cut at {cut}");
        assert_eq!(&got[..], &expected[..got.len()], "cut at {cut}");
        let end = if whole { 10 } else { 6 };
        assert_eq!(log.log_end_offset(), end, "cut at {cut}");
        // The next append continues right after the prefix, and the idempotent state matches it: the lost
        // batch's sequence is accepted again, a kept one is a duplicate.
        let info = log.append(&mut BytesMut::from(&batches[3][..]), 6).unwrap();
        assert_eq!(
            (info.base_offset, info.duplicate),
            (if whole { 6 } else { end }, whole),
            "cut at {cut}"
        );
        drop(log);
        std::fs::remove_dir_all(&case).unwrap();
    }
}

#[test]
fn a_flipped_byte_in_the_tail_batch_truncates_there_and_zeros_read_as_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let batches: Vec<Bytes> = (0..3).map(|i| batch(i, 3, None)).collect();
    {
        let log = Log::open(&path, "t", 0, config()).unwrap();
        for b in &batches {
            log.append(&mut BytesMut::from(&b[..]), 5).unwrap();
        }
    }
    let seg = path.join("00000000000000000000.log");
    let mut data = std::fs::read(&seg).unwrap();
    let last_start = batches[0].len() + batches[1].len();
    data[last_start + 70] ^= 0x40;
    std::fs::write(&seg, &data).unwrap();
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(all_batches(&log).len(), 2);
}

#[test]
fn clean_close_and_crash_both_keep_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let small = LogConfig {
        segment_bytes: 2048,
        ..config()
    };
    let want = {
        let log = Log::open(&path, "t", 0, small.clone()).unwrap();
        for i in 0..100 {
            log.append(&mut BytesMut::from(&batch(i, 2, None)[..]), 5)
                .unwrap();
        }
        assert!(
            log.segment_count() > 4,
            "rolled by size: {} segments",
            log.segment_count()
        );
        let want = all_batches(&log);
        log.close().unwrap();
        want
    };
    let log = Log::open(&path, "t", 0, small.clone()).unwrap();
    assert_eq!(all_batches(&log), want);
    for i in 100..105 {
        log.append(&mut BytesMut::from(&batch(i, 2, None)[..]), 5)
            .unwrap();
    }
    let want = all_batches(&log);
    drop(log); // crash
    let log = Log::open(&path, "t", 0, small).unwrap();
    assert_eq!(all_batches(&log), want);
    assert_eq!(log.log_end_offset(), 210);
    // Reads from every offset return the batch that holds it.
    for offset in 0..210 {
        let s = log.read(offset, 1, true).unwrap();
        let h = millrace_protocol::records::BatchHeader::parse(&s.records).unwrap();
        assert!(h.base_offset <= offset && offset <= h.last_offset());
    }
}

#[test]
fn trusted_segments_and_producer_snapshots_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let small = LogConfig {
        segment_bytes: 1024,
        ..config()
    };
    // Batch i of producer 7 carries sequences [i, i] at timestamp 1000 + i.
    let idem = |i: usize| batch(i, 1, Some((7, i as i32)));
    let want = {
        let log = Log::open(&path, "t", 0, small.clone()).unwrap();
        for i in 0..60 {
            log.append(&mut BytesMut::from(&idem(i)[..]), 5).unwrap();
        }
        assert!(log.segment_count() > 5);
        let want = all_batches(&log);
        log.close().unwrap();
        want
    };
    for round in 0..2 {
        let log = Log::open(&path, "t", 0, small.clone()).unwrap();
        assert_eq!(all_batches(&log), want, "round {round}");
        // Producer state came back: the last batch is a duplicate, the next sequence is accepted.
        let dup = log.append(&mut BytesMut::from(&idem(59)[..]), 5).unwrap();
        assert!(
            dup.duplicate && dup.base_offset == 59,
            "round {round}: {dup:?}"
        );
        assert_eq!(log.offset_for_timestamp(1_000 + 17), Some((17, 1_017)));
        assert_eq!(log.max_timestamp(), Some((1_059, 59)));
        if round == 0 {
            log.close().unwrap();
        } else {
            // Crash after more appends: the trusted prefix is not re-read, the tail is recovered.
            log.append(&mut BytesMut::from(&idem(60)[..]), 5).unwrap();
            drop(log);
            let log = Log::open(&path, "t", 0, small.clone()).unwrap();
            assert_eq!(log.log_end_offset(), 61);
            assert!(
                log.append(&mut BytesMut::from(&idem(60)[..]), 5)
                    .unwrap()
                    .duplicate
            );
            assert!(
                log.append(&mut BytesMut::from(&idem(62)[..]), 5).is_err(),
                "sequence gap is refused"
            );
        }
    }
    let snapshots = std::fs::read_dir(&path).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".snapshot")
    });
    assert!(snapshots.count() <= 2);
}
