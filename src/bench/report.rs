//! Measurements and how they are shown: shared counters, a progress line on stderr every second, HDR latency
//! histograms and the final summary (text, or one JSON object with `--json`).
//!
//! MB means 10^6 bytes throughout. "Bytes" are record payload bytes (key + value); `wire_bytes` adds the batch
//! and record framing, i.e. what the broker stores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Counters updated by every task of a workload.
#[derive(Debug, Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub requests: AtomicU64,
}

impl Counters {
    pub fn add(&self, records: u64, bytes: u64, wire_bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.wire_bytes.fetch_add(wire_bytes, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Prints `label: N records/s, M MB/s` for each counter set every second until dropped.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(quiet: bool, sets: Vec<(&'static str, Arc<Counters>)>) -> Progress {
        if quiet {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last: Vec<(u64, u64)> = sets.iter().map(|(_, c)| c.snapshot()).collect();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut prev = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let dt = now.duration_since(prev).as_secs_f64().max(1e-9);
                prev = now;
                let mut line = format!("[{:>5.1} s]", start.elapsed().as_secs_f64());
                for ((label, c), l) in sets.iter().zip(last.iter_mut()) {
                    let (r, b) = c.snapshot();
                    line.push_str(&format!(
                        "  {label}: {:>10.0} records/s {:>9.1} MB/s",
                        (r - l.0) as f64 / dt,
                        (b - l.1) as f64 / dt / 1e6
                    ));
                    *l = (r, b);
                }
                eprintln!("{line}");
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Result<Latency> {
        Ok(Latency(Histogram::new_with_bounds(1, 600_000_000, 3)?))
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Latency) -> Result<()> {
        self.0.add(&other.0)?;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.0.len(),
            "mean_ms": self.0.mean() / 1000.0,
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p99_9_ms": self.ms(0.999),
            "max_ms": self.0.max() as f64 / 1000.0,
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (mean {:.3} ms, {} samples)",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.0.max() as f64 / 1000.0,
            self.0.mean() / 1000.0,
            self.0.len()
        )
    }
}

/// The outcome of one side of a workload (the producer or the consumer).
#[derive(Debug)]
pub struct Side {
    pub records: u64,
    pub bytes: u64,
    pub wire_bytes: u64,
    pub requests: u64,
    pub elapsed: Duration,
}

impl Side {
    pub fn from_counters(c: &Counters, elapsed: Duration) -> Side {
        Side {
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            wire_bytes: c.wire_bytes.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            elapsed,
        }
    }

    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "records": self.records,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "requests": self.requests,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "records_per_s": self.records as f64 / self.secs(),
            "mb_per_s": self.bytes as f64 / self.secs() / 1e6,
            "wire_mb_per_s": self.wire_bytes as f64 / self.secs() / 1e6,
        })
    }

    fn text(&self, label: &str) -> String {
        format!(
            "{label}: {} records, {:.1} MB in {:.2} s: {:.0} records/s, {:.1} MB/s ({:.1} MB/s on the wire, {} requests)",
            self.records,
            self.bytes as f64 / 1e6,
            self.secs(),
            self.records as f64 / self.secs(),
            self.bytes as f64 / self.secs() / 1e6,
            self.wire_bytes as f64 / self.secs() / 1e6,
            self.requests
        )
    }
}

/// Everything a workload reports at the end.
pub struct Summary {
    pub mode: &'static str,
    pub sides: Vec<(&'static str, Side)>,
    /// What the latency measures ("produce_request", "end_to_end", "metadata_request"), and the histogram.
    pub latency: Option<(&'static str, Latency)>,
    /// The workload's settings and any extra figures.
    pub extra: Map<String, Value>,
}

impl Summary {
    pub fn print(&self, json_out: bool) {
        if json_out {
            let mut obj = Map::new();
            obj.insert("mode".into(), json!(self.mode));
            for (label, side) in &self.sides {
                obj.insert((*label).into(), side.json());
            }
            if let Some((what, lat)) = &self.latency {
                obj.insert("latency_kind".into(), json!(what));
                obj.insert("latency".into(), lat.json());
            }
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
            println!("{}", Value::Object(obj));
        } else {
            for (label, side) in &self.sides {
                println!("{}", side.text(label));
            }
            if let Some((what, lat)) = &self.latency {
                if lat.len() > 0 {
                    println!("{} latency: {}", what.replace('_', " "), lat.text());
                }
            }
            for (k, v) in &self.extra {
                if k != "config" {
                    println!("{k}: {v}");
                }
            }
        }
    }
}
