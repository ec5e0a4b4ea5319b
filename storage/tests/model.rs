//! Model-based test: a random sequence of appends, reads, rolls, DeleteRecords, truncations and reopens (clean
//! and crashed) behaves exactly like a plain in-memory list of batches.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use millrace_protocol::records::{validate_batch, BatchBuilder, BatchIter};
use millrace_storage::{Log, LogConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Batches of (records, value length) appended in one call, through `append` or `append_slice`.
    Append(Vec<(usize, usize)>, bool),
    /// Read at a point of [log start, log end] (in thousandths), with max_bytes and min_one_batch.
    Read(u16, usize, bool),
    Roll,
    DeleteRecords(u16),
    Truncate(u16),
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec((1usize..5, 0usize..400), 1..4), any::<bool>())
            .prop_map(|(b, s)| Op::Append(b, s)),
        6 => (0u16..=1000, 1usize..3000, any::<bool>()).prop_map(|(a, m, o)| Op::Read(a, m, o)),
        1 => Just(Op::Roll),
        1 => (0u16..=1000).prop_map(Op::DeleteRecords),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// One stored batch: its offsets and its bytes after the base offset field (what the log must keep verbatim).
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    base: i64,
    last: i64,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<Stored>,
    start: i64,
    end: i64,
}

impl Model {
    fn point(&self, thousandths: u16) -> i64 {
        self.start + (self.end - self.start) * i64::from(thousandths) / 1000
    }
}

fn make_batch(counter: &mut u64, records: usize, value_len: usize) -> Bytes {
    *counter += 1;
    let mut b = BatchBuilder::new(1_000 + *counter as i64);
    for r in 0..records {
        let value = vec![(*counter as u8).wrapping_add(r as u8); value_len];
        b.push(
            1_000 + *counter as i64,
            Some(&counter.to_be_bytes()),
            Some(&value),
            &[],
        );
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 3000,
        segment_index_bytes: 256,
        index_interval_bytes: 500,
        ..LogConfig::default()
    }
}

fn check_read(model: &Model, log: &Log, offset: i64, max_bytes: usize, min_one: bool) {
    let slice = log.read(offset, max_bytes, min_one).unwrap();
    assert_eq!(slice.high_watermark, model.end);
    assert_eq!(slice.log_start_offset, model.start);
    let first = model.batches.iter().position(|b| b.last >= offset);
    let got: Vec<Stored> = BatchIter::new(&slice.records)
        .map(|item| {
            let (h, bytes) = item.unwrap();
            validate_batch(bytes).unwrap();
            Stored {
                base: h.base_offset,
                last: h.last_offset(),
                body: bytes[8..].to_vec(),
            }
        })
        .collect();
    let Some(first) = first else {
        assert!(got.is_empty(), "read at the end returned {got:?}");
        return;
    };
    let first_len = model.batches[first].body.len() + 8;
    if got.is_empty() {
        assert!(
            !min_one && first_len > max_bytes,
            "nothing read at {offset}"
        );
        return;
    }
    // Consecutive batches from the one holding `offset`, whole, within max_bytes unless it is the one batch
    // min_one_batch allows (KIP-74).
    assert_eq!(&got[..], &model.batches[first..first + got.len()]);
    let total: usize = got.iter().map(|b| b.body.len() + 8).sum();
    assert!(
        total <= max_bytes || (min_one && got.len() == 1),
        "{total} > {max_bytes}"
    );
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), "m", 0, config()).unwrap();
    let mut model = Model::default();
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append(specs, owned) => {
                let batches: Vec<Bytes> = specs
                    .iter()
                    .map(|&(n, len)| make_batch(&mut counter, n, len))
                    .collect();
                let mut buf = BytesMut::new();
                for b in &batches {
                    buf.extend_from_slice(b);
                }
                let info = if owned {
                    log.append(&mut buf, 0).unwrap()
                } else {
                    log.append_slice(&buf, 0).unwrap()
                };
                assert_eq!(info.base_offset, model.end);
                for b in &batches {
                    let span = BatchIter::new(b)
                        .next()
                        .unwrap()
                        .unwrap()
                        .0
                        .last_offset_delta;
                    let base = model.end;
                    let last = base + i64::from(span);
                    model.batches.push(Stored {
                        base,
                        last,
                        body: b[8..].to_vec(),
                    });
                    model.end = last + 1;
                }
                assert_eq!(info.last_offset, model.end - 1);
            }
            Op::Read(at, max_bytes, min_one) => {
                let offset = model.point(at);
                check_read(&model, &log, offset, max_bytes, min_one);
            }
            Op::Roll => log.roll().unwrap(),
            Op::DeleteRecords(at) => {
                let offset = model.point(at);
                assert_eq!(
                    log.delete_records_before(offset).unwrap(),
                    offset.max(model.start)
                );
                model.start = model.start.max(offset);
                model.batches.retain(|b| b.last >= model.start);
            }
            Op::Truncate(at) => {
                let offset = model.point(at);
                log.truncate_to(offset).unwrap();
                if offset < model.end {
                    if offset <= model.start {
                        model.batches.clear();
                        model.start = offset;
                        model.end = offset;
                    } else {
                        let cut = model.batches.iter().position(|b| b.last >= offset).unwrap();
                        model.end = model.batches[cut].base.max(model.start);
                        model.batches.truncate(cut);
                    }
                }
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                }
                drop(log);
                log = Log::open(dir.path(), "m", 0, config()).unwrap();
                assert_eq!(log.recovery().truncated_bytes, 0);
            }
        }
        assert_eq!(log.log_start_offset(), model.start);
        assert_eq!(log.log_end_offset(), model.end);
    }
    // Finally every batch, from the start, in as many reads as it takes.
    let mut offset = model.start;
    let mut seen = Vec::new();
    while offset < model.end {
        let s = log.read(offset, usize::MAX, true).unwrap();
        for item in BatchIter::new(&s.records) {
            let (h, bytes) = item.unwrap();
            seen.push(Stored {
                base: h.base_offset,
                last: h.last_offset(),
                body: bytes[8..].to_vec(),
            });
            offset = h.last_offset() + 1;
        }
    }
    assert_eq!(seen, model.batches);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_a_list_of_batches(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
