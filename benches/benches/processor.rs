//! Partition-to-partition pipeline throughput, in events per second on one core: one source partition (one
//! task thread) pre-filled with Nexmark-like bids (`millrace_processor::nexmark`: about 60 bytes, key = bidder),
//! read through storage, processed and written back through storage with exactly-once checkpoints.
//!
//! - `read_only`: the baseline, measured in the same run: decoding every record of the partition and nothing
//!   else. The pipelines' figures are best read as a ratio to it.
//! - `stateless_map_filter`: filter (drops 1 in 4) + map (re-key by auction) + sink.
//! - `keyed_tumbling_count`: key_by bidder (10,000 keys), tumbling 10 s event-time windows (about 10 bids per bidder per window), count, sink.
//!
//! - `temporal_join/*`: the temporal (stream-table) join operator alone, no runtime: 100,000 table rows
//!   loaded, then 200,000 probes on them in event-time order with the watermark moved every 1,000 probes
//!   (setup, the table load, not timed); `interval_join/*` likewise, bids against one impression each.
//!
//! Each iteration runs a fresh pipeline (its own checkpoint topic and sink) over the whole partition and stops
//! when the last result is written: start-up (restoring nothing) and the last commit are timed, the stop is not. `PIPELINE_BENCH_FSYNC=0`
//! measures without fsyncing checkpoints (exactly-once across process crashes only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use millrace_processor::local::LocalHost;
use millrace_processor::nexmark;
use millrace_processor::source::for_each_record;
use millrace_processor::{
    Collector, Either, Host, IntervalJoin, Job, JoinKind, Operator, OutRecord, TemporalJoin,
};
use millrace_storage::{Log, LogConfig, LogManager};

const EVENTS: u64 = 500_000;
const BIDDERS: u64 = 10_000;

fn fsync() -> bool {
    std::env::var("PIPELINE_BENCH_FSYNC").map_or(true, |v| v != "0")
}

fn read_all(log: &Log) -> u64 {
    let mut n = 0u64;
    let mut offset = log.log_start_offset();
    loop {
        let s = log.read(offset, 1 << 20, true).expect("read");
        if s.records.is_empty() {
            return n;
        }
        offset = for_each_record(&s.records, offset, 0, |m| {
            n += m.value.map_or(0, |v| v.len() as u64);
        })
        .expect("decode");
    }
}

/// Runs `job` over the whole source; the time from its start to its last output being appended (the final
/// stop, which has nothing left to commit, is not timed).
fn run(host: &Arc<LocalHost>, rt: &tokio::runtime::Runtime, job: Job, expect: u64) -> Duration {
    let sink = host.topic(&job.sinks()[0].name, Some(1)).expect("sink");
    let started = Instant::now();
    let p = millrace_processor::start(&job, host.clone(), rt.handle().clone()).expect("start");
    let deadline = started + Duration::from_secs(300);
    while (sink[0].log_end_offset() as u64) < expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = started.elapsed();
    p.stop().expect("stop");
    assert!(
        sink[0].log_end_offset() as u64 >= expect,
        "pipeline did not finish"
    );
    took
}

fn pipelines(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Arc::new(LogManager::open(dir.path()).expect("open"));
    let config = LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    };
    let host = Arc::new(LocalHost::new(logs, config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let source = host.topic("bids", Some(1)).expect("bids");
    nexmark::append_bids(&source[0], 0, EVENTS, BIDDERS).expect("bids");
    nexmark::append_closer(&source[0]).expect("closer");

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.warm_up_time(Duration::from_secs(1));

    g.bench_function("read_only", |b| b.iter(|| read_all(&source[0])));

    let run_id = AtomicU64::new(0);
    // The closer sits at offset EVENTS (a multiple of 4), so it passes the filter too.
    let stateless_expect = nexmark::stateless_outputs(EVENTS + 1);
    g.bench_function("stateless_map_filter", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let id = run_id.fetch_add(1, Ordering::Relaxed);
                    let job = nexmark::stateless_job(
                        &format!("stateless-{id}"),
                        "bids",
                        &format!("stateless-out-{id}"),
                        fsync(),
                    )
                    .expect("job");
                    run(&host, &rt, job, stateless_expect)
                })
                .sum()
        })
    });

    let keyed_expect = nexmark::keyed_outputs(EVENTS, BIDDERS, 10_000);
    g.bench_function("keyed_tumbling_count", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let id = run_id.fetch_add(1, Ordering::Relaxed);
                    let job = nexmark::keyed_count_job(
                        &format!("keyed-{id}"),
                        "bids",
                        &format!("keyed-out-{id}"),
                        1000,
                        fsync(),
                    )
                    .expect("job");
                    run(&host, &rt, job, keyed_expect)
                })
                .sum()
        })
    });
    g.finish();
}

/// Counts what an operator emits.
struct Counted(u64);

impl<T> Collector<T> for Counted {
    fn emit(&mut self, _timestamp: i64, _item: T) {
        self.0 += 1;
    }
    fn late(&mut self, _record: OutRecord) {}
}

const ROWS: u64 = 100_000;
const PROBES: u64 = 200_000;

type Probe = Either<(Bytes, u64), (Bytes, Option<Bytes>)>;

fn operators(c: &mut Criterion) {
    let keys: Vec<Bytes> = (0..ROWS)
        .map(|a| Bytes::from(format!("auction-{a:06}")))
        .collect();
    let row = Bytes::from_static(b"seller=person-00001,category=07");

    let mut g = c.benchmark_group("temporal_join");
    g.throughput(Throughput::Elements(PROBES));
    g.sample_size(20);
    g.bench_function("probes", |b| {
        b.iter_batched(
            || {
                let mut j: TemporalJoin<Bytes, u64, Bytes, u64> = TemporalJoin::new(
                    JoinKind::Inner,
                    Arc::new(|_: &Bytes, l: u64, r: Option<&Bytes>| {
                        l + r.map_or(0, |r| r.len() as u64)
                    }),
                );
                let mut out = Counted(0);
                for k in &keys {
                    let item: Probe = Either::Right((k.clone(), Some(row.clone())));
                    j.process(nexmark::BASE_TS - 1_000, item, &mut out);
                }
                j
            },
            |mut j| {
                let mut out = Counted(0);
                for i in 0..PROBES {
                    let ts = nexmark::bid_time(i);
                    let item: Probe = Either::Left((keys[nexmark::auction(i) as usize].clone(), i));
                    j.process(ts, item, &mut out);
                    if i % 1000 == 999 {
                        j.on_watermark(ts, &mut out);
                    }
                }
                j.on_watermark(i64::MAX, &mut out);
                assert_eq!(out.0, PROBES);
                j
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let bidders: Vec<Bytes> = (0..BIDDERS)
        .map(|b| Bytes::from(format!("bidder-{b:05}")))
        .collect();
    let mut g = c.benchmark_group("interval_join");
    // Every bid and every impression is an element.
    g.throughput(Throughput::Elements(2 * PROBES));
    g.sample_size(20);
    g.bench_function("bids_impressions", |b| {
        b.iter_batched(
            || {
                IntervalJoin::<Bytes, u64, u64, u64>::new(
                    JoinKind::Inner,
                    -500,
                    0,
                    Arc::new(|_: &Bytes, l: Option<&u64>, r: Option<&u64>| {
                        l.copied().unwrap_or(0) ^ r.copied().unwrap_or(0)
                    }),
                )
                .expect("bounds")
            },
            |mut j| {
                let mut out = Counted(0);
                for i in 0..PROBES {
                    let key = &bidders[nexmark::bidder(i, BIDDERS) as usize];
                    let imp: Either<(Bytes, u64), (Bytes, u64)> = Either::Right((key.clone(), i));
                    j.process(nexmark::impression_time(i), imp, &mut out);
                    let bid: Either<(Bytes, u64), (Bytes, u64)> = Either::Left((key.clone(), i));
                    j.process(nexmark::bid_time(i), bid, &mut out);
                    if i % 1000 == 999 {
                        j.on_watermark(nexmark::impression_time(i), &mut out);
                    }
                }
                j.on_watermark(i64::MAX, &mut out);
                assert_eq!(out.0, PROBES);
                j
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, pipelines, operators);
criterion_main!(benches);
