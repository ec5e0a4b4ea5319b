//! Storage hot paths, on one long-lived partition log (segments roll and are sealed with an fsync as they fill,
//! as in production; retention keeps the disk footprint bounded):
//! - appending 16 KiB and 1 MiB batches to the page cache, no fsync (the acks=1 path), from a shared receive
//!   buffer (`append_slice`, what the broker does) and from an owned buffer rewritten in place (`append`);
//! - appending and fsyncing each batch (what acks=all costs a lone producer, with nothing to share its fsync);
//! - serving a fetch: reading up to 1 MiB from a random offset, a zero-copy slice of the mapped segment.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig};

/// A batch of about `bytes` bytes of 1 KiB records (a typical producer batch shape).
fn batch_of(bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    while b.size() + 1100 < bytes {
        b.push(1_700_000_000_000, Some(b"key"), Some(&[7u8; 1024]), &[]);
    }
    b.finish()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        retention_bytes: 1 << 30,
        ..LogConfig::default()
    }
}

/// Calls `append` once per iteration, and retention every 256 appends so the bench never fills the disk.
fn bench_append(c: &mut Criterion, name: &str, size: usize, mut append: impl FnMut(&Log, &Bytes)) {
    let batch = batch_of(size);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), "bench", 0, config()).expect("open");
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    let mut n = 0u64;
    g.bench_function(format!("{name}_{}k", size >> 10), |b| {
        b.iter(|| {
            append(&log, &batch);
            n += 1;
            if n.is_multiple_of(256) {
                // Size retention only (time 0: no record is old), as a retention pass would run.
                log.apply_retention(0).expect("retention");
            }
        })
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    for size in [16 << 10, 1 << 20] {
        bench_append(c, "slice", size, |log, batch| {
            log.append_slice(batch, 0).expect("append");
        });
    }
    let mut owned = BytesMut::new();
    bench_append(c, "in_place", 16 << 10, |log, batch| {
        // The copy stands in for the receive buffer the caller owns; it is part of the measured cost.
        owned.clear();
        owned.extend_from_slice(batch);
        log.append(&mut owned, 0).expect("append");
    });
}

fn append_fsync(c: &mut Criterion) {
    let batch = batch_of(16 << 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), "bench", 0, config()).expect("open");
    let mut g = c.benchmark_group("append_fsync");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.sample_size(20);
    g.bench_function("slice_16k_flush", |b| {
        b.iter(|| {
            log.append_slice(&batch, 0).expect("append");
            log.flush().expect("flush");
        })
    });
    g.finish();
}

fn fetch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), "bench", 0, config()).expect("open");
    let batch = batch_of(64 << 10);
    for _ in 0..2048 {
        log.append_slice(&batch, 0).expect("append");
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("fetch");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function("read_1mib_random_offset", |b| {
        b.iter_batched(
            || {
                // xorshift: a random offset per read, outside the measured part.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % end as u64) as i64
            },
            |offset| {
                let slice = log.read(offset, 1 << 20, true).expect("read");
                assert!(!slice.records.is_empty());
                slice
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, append, append_fsync, fetch);
criterion_main!(benches);
