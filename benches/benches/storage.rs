//! Storage hot paths: appending batches to a partition log (page cache, no fsync: the acks=1 path) and serving a
//! fetch (a zero-copy slice of the mapped segment).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig};

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
        ..LogConfig::default()
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for size in [16 << 10, 1 << 20] {
        let batch = batch_of(size);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), "bench", 0, config()).expect("open");
        g.throughput(Throughput::Bytes(batch.len() as u64));
        // One long-lived log: segments roll (and are sealed with an fsync) as they fill, as in production.
        g.bench_function(format!("batch_{}k", size >> 10), |b| {
            b.iter(|| log.append_slice(&batch, 0).expect("append"))
        });
        drop(log);
    }
    g.finish();
}

fn fetch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), "bench", 0, config()).expect("open");
    let batch = batch_of(64 << 10);
    for _ in 0..1024 {
        log.append_slice(&batch, 0).expect("append");
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("fetch");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut next = 0i64;
    g.bench_function("read_1mib", |b| {
        b.iter(|| {
            // Walk the log in a fixed stride so every read lands somewhere new.
            next = (next + 997) % end;
            let slice = log.read(next, 1 << 20, true).expect("read");
            assert!(!slice.records.is_empty());
            slice
        })
    });
    g.finish();
}

criterion_group!(benches, append, fetch);
criterion_main!(benches);
