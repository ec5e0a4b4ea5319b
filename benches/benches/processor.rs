//! Partition-to-partition pipeline throughput, in events per second on one core: one source partition (one
//! task thread) pre-filled with Nexmark-like bid events (about 60 bytes: key = bidder, value = auction and
//! price), read through storage, processed and written back through storage with exactly-once checkpoints.
//!
//! - `read_only`: the baseline, measured in the same run: decoding every record of the partition and nothing
//!   else. The pipelines' figures are best read as a ratio to it.
//! - `stateless_map_filter`: filter (drops 1 in 4) + map (re-key by auction) + sink.
//! - `keyed_tumbling_count`: key_by bidder (10,000 keys), tumbling 1 s event-time windows, count, sink.
//!
//! Each iteration runs a fresh pipeline (its own checkpoint topic and sink) over the whole partition and stops
//! when the last result is written, so start-up and the final checkpoint are included.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millrace_processor::source::for_each_record;
use millrace_processor::{Count, Host, Message, OutRecord, Pipeline, Window};
use millrace_protocol::records::BatchBuilder;
use millrace_storage::{Log, LogConfig, LogManager};

const EVENTS: u64 = 500_000;
const BIDDERS: u64 = 10_000;
const BASE_TS: i64 = 1_767_225_600_000;

struct BenchHost {
    logs: Arc<LogManager>,
    pid: AtomicI64,
}

impl Host for BenchHost {
    fn topic(
        &self,
        name: &str,
        partitions: Option<i32>,
    ) -> millrace_processor::Result<Vec<Arc<Log>>> {
        (0..partitions.unwrap_or(1))
            .map(|p| Ok(self.logs.open_partition(name, p, config())?))
            .collect()
    }
    fn checkpoint_log(&self, pipeline: &str) -> millrace_processor::Result<Arc<Log>> {
        let cfg = LogConfig {
            max_message_bytes: 1 << 30,
            ..config()
        };
        Ok(self
            .logs
            .open_partition(&format!("__pipeline.{pipeline}"), 0, cfg)?)
    }
    fn new_producer_id(&self) -> millrace_processor::Result<i64> {
        Ok(self.pid.fetch_add(1, Ordering::Relaxed))
    }
}

/// `PIPELINE_BENCH_FSYNC=0` measures without fsyncing checkpoints (exactly-once across process crashes
/// only): the CPU cost per event, apart from what this machine's disk takes to make 2x the output durable.
fn fsync() -> bool {
    std::env::var("PIPELINE_BENCH_FSYNC").map_or(true, |v| v != "0")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    }
}

/// Fills `log` with EVENTS bids in batches of 1,000, event time advancing 100 µs per bid (50 s in all).
fn fill(log: &Log) {
    let mut i = 0u64;
    while i < EVENTS {
        let mut b = BatchBuilder::new(BASE_TS + (i / 10) as i64);
        for _ in 0..1000 {
            let bidder = (i.wrapping_mul(2_654_435_761)) % BIDDERS;
            let key = format!("bidder-{bidder:05}");
            let value = format!("auction-{:06},price={}", i % 100_000, i % 977);
            b.push(
                BASE_TS + (i / 10) as i64,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &[],
            );
            i += 1;
        }
        log.append_slice(&b.finish(), 0).expect("append");
    }
}

fn read_all(log: &Log, mut f: impl FnMut(Message)) {
    let mut offset = log.log_start_offset();
    loop {
        let s = log.read(offset, 1 << 20, true).expect("read");
        if s.records.is_empty() {
            return;
        }
        offset = for_each_record(&s.records, offset, 0, &mut f).expect("decode");
    }
}

fn run(
    host: &Arc<BenchHost>,
    rt: &tokio::runtime::Runtime,
    job: millrace_processor::Job,
    expect: i64,
) {
    let sink = host.topic(&job.sink_topic().name, Some(1)).expect("sink");
    let p = millrace_processor::start(&job, host.clone(), rt.handle().clone()).expect("start");
    let deadline = Instant::now() + Duration::from_secs(300);
    while sink[0].log_end_offset() < expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
    if std::env::var_os("PIPELINE_BENCH_DEBUG").is_some() {
        let t = Instant::now();
        let m = p.metrics();
        p.stop().expect("stop");
        eprintln!("{m:?} stop took {:?}", t.elapsed());
    } else {
        p.stop().expect("stop");
    }
    assert!(
        sink[0].log_end_offset() >= expect,
        "pipeline did not finish"
    );
}

fn pipelines(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Arc::new(LogManager::open(dir.path()).expect("open"));
    let host = Arc::new(BenchHost {
        logs,
        pid: AtomicI64::new(1),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let source = host.topic("bids", Some(1)).expect("bids");
    fill(&source[0]);
    // The last event's windows close only when a later event moves the watermark: one closer at the end.
    let mut b = BatchBuilder::new(BASE_TS + 3_600_000);
    b.push(
        BASE_TS + 3_600_000,
        Some(b"closer"),
        Some(b"auction-0,price=0"),
        &[],
    );
    source[0].append_slice(&b.finish(), 0).expect("closer");

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.warm_up_time(Duration::from_secs(1));

    g.bench_function("read_only", |b| {
        b.iter(|| {
            let mut n = 0u64;
            read_all(&source[0], |m| {
                n += m.value.map_or(0, |v| v.len() as u64);
            });
            n
        })
    });

    let run_id = AtomicU64::new(0);
    // Stateless: 3 in 4 bids pass (EVENTS is a multiple of 4; the closer, at offset EVENTS, passes too).
    let stateless_expect = (EVENTS / 4 * 3) as i64 + 1;
    g.bench_function("stateless_map_filter", |b| {
        b.iter(|| {
            let id = run_id.fetch_add(1, Ordering::Relaxed);
            let job = Pipeline::new(format!("stateless-{id}"))
                .checkpoint_interval(Duration::from_millis(100))
                .checkpoint_fsync(fsync())
                .source("bids")
                .filter(|m: &Message| m.offset % 4 != 3)
                .map(|m: Message| {
                    let v = m.value.unwrap_or_default();
                    let auction = v.slice(..v.iter().position(|b| *b == b',').unwrap_or(v.len()));
                    OutRecord::new(Some(auction), Some(v), m.timestamp)
                })
                .sink_with_partitions(format!("stateless-out-{id}"), Some(1), |r| r)
                .expect("job");
            run(&host, &rt, job, stateless_expect);
        })
    });

    // Keyed: one result per (bidder, 1 s window) that saw a bid.
    let mut pairs = std::collections::HashSet::new();
    read_all(&source[0], |m| {
        if m.key.as_deref() != Some(&b"closer"[..]) {
            pairs.insert((m.key.unwrap_or_default(), m.timestamp.div_euclid(1000)));
        }
    });
    let keyed_expect = pairs.len() as i64;
    g.bench_function("keyed_tumbling_count", |b| {
        b.iter(|| {
            let id = run_id.fetch_add(1, Ordering::Relaxed);
            let job = Pipeline::new(format!("keyed-{id}"))
                .checkpoint_interval(Duration::from_millis(100))
                .checkpoint_fsync(fsync())
                .source("bids")
                .key_by(|m: &Message| m.key.clone().unwrap_or_default())
                .window(Window::tumbling(Duration::from_secs(1)))
                .late_topic(format!("keyed-late-{id}"))
                .aggregate(Count)
                .sink_with_partitions(format!("keyed-out-{id}"), Some(1), |r| {
                    OutRecord::new(
                        Some(r.key),
                        Some(Bytes::from(r.value.to_string())),
                        r.window_end - 1,
                    )
                })
                .expect("job");
            run(&host, &rt, job, keyed_expect);
        })
    });
    g.finish();
}

criterion_group!(benches, pipelines);
criterion_main!(benches);
