//! Crash recovery: the active segment cut at every byte length of its last batch reopens to exactly the valid
//! prefix, with the same offsets, and the next append continues from there.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::{Bytes, BytesMut};
use millrace_protocol::records::BatchBuilder;
use millrace_protocol::records::BatchHeader;
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
            let h = BatchHeader::parse(rest).unwrap();
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
        // The report counts the torn bytes (up to the last non-zero one), never more than were there.
        let report = log.recovery();
        assert!(!report.clean && report.validated_segments == 1);
        if whole || cut == 0 {
            assert_eq!(report.truncated_bytes, 0, "cut at {cut}");
        } else {
            assert!(
                report.truncated_bytes <= cut as u64,
                "cut at {cut}: {report:?}"
            );
            assert_eq!(
                report.truncated_bytes > 0,
                cut >= 8,
                "cut at {cut}: {report:?}"
            );
        }
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

/// Three batches appended and left as after kill -9; returns the log folder and where the last batch starts.
fn three_batches_crashed(dir: &Path) -> (std::path::PathBuf, usize, usize) {
    let path = dir.join("p");
    let batches: Vec<Bytes> = (0..3).map(|i| batch(i, 3, None)).collect();
    let log = Log::open(&path, "t", 0, config()).unwrap();
    for b in &batches {
        log.append_slice(b, 5).unwrap();
    }
    drop(log);
    (path, batches[0].len() + batches[1].len(), batches[2].len())
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let seg = path.join("00000000000000000000.log");
    let mut data = std::fs::read(&seg).unwrap();
    f(&mut data);
    std::fs::write(&seg, &data).unwrap();
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_tail_batch_truncates_there() {
    let dir = tempfile::tempdir().unwrap();
    let (path, last_start, last_len) = three_batches_crashed(dir.path());
    damage(&path, |d| d[last_start + last_len / 2] ^= 0x40);
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(all_batches(&log).len(), 2);
    assert!(log.recovery().truncated_bytes >= (last_len / 2) as u64);
    assert_eq!(
        std::fs::metadata(path.join("00000000000000000000.log"))
            .unwrap()
            .len(),
        last_start as u64,
        "cut durably where the valid prefix ends"
    );
    let next = log.append_slice(&batch(9, 1, None), 5).unwrap();
    assert_eq!(next.base_offset, 6);
    drop(log);
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 7);
    assert_eq!(log.recovery().truncated_bytes, 0);
}

#[test]
fn a_batch_whose_base_offset_never_reached_the_disk_is_cut() {
    // append_slice writes a batch's body, then its base offset: a crash in between leaves zeros there, under
    // a body whose CRC is fine.
    let dir = tempfile::tempdir().unwrap();
    let (path, last_start, _) = three_batches_crashed(dir.path());
    damage(&path, |d| d[last_start..last_start + 8].fill(0));
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn a_hole_of_zeros_inside_the_tail_batch_is_cut() {
    // Pages of one write reach the disk out of order: a later page made it, an earlier one did not.
    let dir = tempfile::tempdir().unwrap();
    let (path, last_start, _) = three_batches_crashed(dir.path());
    damage(&path, |d| d[last_start + 61..last_start + 100].fill(0));
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn corruption_in_an_older_segment_cuts_there_and_drops_the_segments_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let small = LogConfig {
        segment_bytes: 2048,
        ..config()
    };
    let log = Log::open(&path, "t", 0, small.clone()).unwrap();
    for i in 0..100 {
        log.append_slice(&batch(i, 2, None), 5).unwrap();
    }
    let bases = log.segment_bases();
    assert!(bases.len() > 4);
    drop(log);
    // Without the recovery checkpoint nothing is trusted: every segment is validated.
    std::fs::remove_file(path.join("recovery-point-checkpoint")).unwrap();
    let seg = path.join(format!("{:020}.log", bases[1]));
    let mut data = std::fs::read(&seg).unwrap();
    let first_len = BatchHeader::parse(&data).unwrap().total_len();
    data[first_len + 40] ^= 1; // inside the segment's second batch
    std::fs::write(&seg, &data).unwrap();
    let log = Log::open(&path, "t", 0, small).unwrap();
    let report = log.recovery();
    assert_eq!(report.segments_removed, bases.len() - 2, "{report:?}");
    assert_eq!(report.validated_segments, 2, "{report:?}");
    assert!(report.truncated_bytes > 0);
    let end = bases[1] + 2;
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segment_bases(), vec![bases[0], bases[1]]);
    // The cut segment stays sealed; the next append starts a new one right after it.
    assert_eq!(
        log.append_slice(&batch(0, 1, None), 5).unwrap().base_offset,
        end
    );
    assert_eq!(log.segment_bases(), vec![bases[0], bases[1], end]);
}

#[test]
fn missing_and_damaged_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let small = LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 200,
        ..config()
    };
    let (want, bases) = {
        let log = Log::open(&path, "t", 0, small.clone()).unwrap();
        for i in 0..60 {
            log.append_slice(&batch(i, 2, None), 5).unwrap();
        }
        log.close().unwrap();
        (all_batches(&log), log.segment_bases())
    };
    let file = |base: i64, suffix: &str| path.join(format!("{base:020}.{suffix}"));
    let index_len = std::fs::metadata(file(bases[0], "index")).unwrap().len();
    assert!(index_len >= 16, "sparse but not empty: {index_len}");
    std::fs::remove_file(file(bases[0], "index")).unwrap();
    std::fs::write(file(bases[1], "timeindex"), b"short").unwrap();
    // Entries that are well-formed but point between batches.
    let mut bogus = Vec::new();
    for (o, p) in [(0u32, 0u32), (3, 17), (5, 33)] {
        bogus.extend_from_slice(&o.to_be_bytes());
        bogus.extend_from_slice(&p.to_be_bytes());
    }
    std::fs::write(file(bases[2], "index"), &bogus).unwrap();

    let log = Log::open(&path, "t", 0, small).unwrap();
    assert_eq!(all_batches(&log), want);
    for offset in 0..120 {
        let s = log.read(offset, 1, true).unwrap();
        let h = BatchHeader::parse(&s.records).unwrap();
        assert!(
            h.base_offset <= offset && offset <= h.last_offset(),
            "offset {offset}"
        );
    }
    // Batch i holds offsets 2i and 2i+1 at timestamp 1000 + i.
    for i in 0..60 {
        assert_eq!(
            log.offset_for_timestamp(1_000 + i),
            Some((2 * i, 1_000 + i))
        );
    }
    assert_eq!(
        std::fs::metadata(file(bases[0], "index")).unwrap().len(),
        index_len
    );
    assert!(
        std::fs::metadata(file(bases[1], "timeindex"))
            .unwrap()
            .len()
            >= 12
    );
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
        let h = BatchHeader::parse(&s.records).unwrap();
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

/// Five batches, the first three fsynced and their recovery point written, then a crash; returns the log folder,
/// where the fsynced prefix ends, and where the last batch starts.
fn five_batches_three_fsynced(dir: &Path) -> (std::path::PathBuf, usize, usize) {
    let path = dir.join("p");
    let batches: Vec<Bytes> = (0..5).map(|i| batch(i, 3, None)).collect();
    let log = Log::open(&path, "t", 0, config()).unwrap();
    for b in &batches[..3] {
        log.append_slice(b, 5).unwrap();
    }
    log.flush().unwrap();
    assert!(log.write_recovery_point().unwrap());
    assert!(!log.write_recovery_point().unwrap(), "nothing moved since");
    for b in &batches[3..] {
        log.append_slice(b, 5).unwrap();
    }
    drop(log);
    let prefix: usize = batches[..3].iter().map(Bytes::len).sum();
    (path, prefix, prefix + batches[3].len())
}

#[test]
fn an_fsynced_prefix_is_not_read_again_and_the_tail_after_it_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, prefix, last_start) = five_batches_three_fsynced(dir.path());
    // A flipped byte inside the trusted prefix's records is not seen: recovery did not read them (the fsync
    // vouched for them). One in the tail is, and cuts it.
    damage(&path, |d| {
        d[prefix / 2] ^= 0x01;
        d[last_start + 70] ^= 0x40;
    });
    let log = Log::open(&path, "t", 0, config()).unwrap();
    let report = log.recovery();
    assert_eq!(report.trusted_bytes, prefix as u64, "{report:?}");
    assert!(report.truncated_bytes > 0, "{report:?}");
    assert_eq!(log.log_end_offset(), 12);
    assert_eq!(all_batches(&log).len(), 4);
    // Recovery fsynced what it kept and moved the point to its end: the next crash reads nothing.
    log.append_slice(&batch(9, 1, None), 5).unwrap();
    drop(log);
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.recovery().trusted_bytes, last_start as u64);
    assert_eq!(log.log_end_offset(), 13);
}

#[test]
fn a_recovery_point_that_does_not_fit_the_batches_is_ignored() {
    type Point = fn(usize) -> String;
    let points: [(&str, Point); 4] = [
        ("off a batch boundary", |prefix| {
            format!("0 {} 9\n", prefix + 1)
        }),
        ("wrong next offset", |prefix| format!("0 {prefix} 8\n")),
        ("beyond the file", |_| "0 999999999 9\n".to_string()),
        ("garbage", |_| "0 x\n".to_string()),
    ];
    for (name, point) in points {
        let dir = tempfile::tempdir().unwrap();
        let (path, prefix, _) = five_batches_three_fsynced(dir.path());
        std::fs::write(path.join("active-recovery-point"), point(prefix)).unwrap();
        // Damage inside the would-be prefix: found, because the whole segment is validated.
        damage(&path, |d| d[prefix / 2] ^= 0x01);
        let log = Log::open(&path, "t", 0, config()).unwrap();
        let report = log.recovery();
        assert_eq!(report.trusted_bytes, 0, "{name}: {report:?}");
        assert!(report.truncated_bytes > 0, "{name}: {report:?}");
        assert!(log.log_end_offset() < 9, "{name}");
    }
}

#[test]
fn truncation_forgets_the_recovery_point_before_it_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = five_batches_three_fsynced(dir.path());
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert!(path.join("active-recovery-point").exists());
    log.truncate_to(3).unwrap();
    assert!(!path.join("active-recovery-point").exists());
    // Different batches where the cut ones were, never fsynced, then a crash.
    for i in 0..3 {
        log.append_slice(&batch(20 + i, 1, None), 5).unwrap();
    }
    let want = all_batches(&log);
    drop(log);
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.recovery().trusted_bytes, 0);
    assert_eq!(all_batches(&log), want);
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn a_log_wholly_below_its_recovery_point_reopens_without_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let log = Log::open(&path, "t", 0, config()).unwrap();
    for i in 0..3 {
        log.append_slice(&batch(i, 3, None), 5).unwrap();
    }
    log.flush().unwrap();
    assert!(log.write_recovery_point().unwrap());
    let size = std::fs::metadata(path.join("00000000000000000000.log"))
        .unwrap()
        .len();
    drop(log);
    // Marks the point file so that a rewrite would show.
    let point = path.join("active-recovery-point");
    let text = std::fs::read_to_string(&point).unwrap();
    std::fs::write(&point, format!("{}\n\n", text.trim())).unwrap();
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.recovery().trusted_bytes, size);
    assert_eq!(log.log_end_offset(), 9);
    assert!(
        std::fs::read_to_string(&point).unwrap().ends_with("\n\n"),
        "not rewritten"
    );
    // It still moves on with the next fsync.
    log.append_slice(&batch(9, 1, None), 5).unwrap();
    log.flush().unwrap();
    assert!(log.write_recovery_point().unwrap());
    drop(log);
    let log = Log::open(&path, "t", 0, config()).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert!(log.recovery().trusted_bytes > size);
}
