//! `millrace bench pipeline --kind state`: what keyed state costs as it grows. For each state size, a
//! running count per key (the unwindowed aggregate into a table, whose accumulators are keyed state) first
//! loads one record per key, then takes rounds in which a fixed share of the keys (1% by default, chosen
//! at random) gets one more record. Reported per size and backend:
//! - the load: events/s, and the bytes of state changes its checkpoints wrote;
//! - per round: the bytes of changes the round's checkpoints wrote (the goal: proportional to the keys
//!   changed, not to the state) and the longest checkpoint (from stopping the tasks to the changes being in
//!   the store);
//! - a restart: the time to start the pipeline again and run one more round, against a round before it;
//! - the process's anonymous resident memory (RssAnon: the heap, not the page cache of the logs) at the end
//!   of the load and the largest seen in the rounds.
//!
//! Outputs are filtered away so that the figures are those of the state, not of writing 20 M outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use millrace_processor::keyed_state::BackendKind;
use millrace_processor::local::LocalHost;
use millrace_processor::{
    Count, Host, Message, OutRecord, Pipeline, PipelineMetrics, Window, WindowResult,
};
use millrace_protocol::records::BatchBuilder;
use millrace_storage::Log;
use serde_json::json;

/// What one size and backend measured.
pub struct StateRun {
    pub keys: u64,
    pub backend: &'static str,
    pub load_seconds: f64,
    pub load_change_bytes: u64,
    pub rss_after_load: u64,
    pub rounds: Vec<Round>,
    pub restart_seconds: f64,
    pub rss_peak: u64,
    pub store_bytes: u64,
}

/// One round of changes.
pub struct Round {
    pub keys_changed: u64,
    pub change_bytes: u64,
    pub longest_checkpoint_ms: f64,
    pub seconds: f64,
}

/// RssAnon of this process, in bytes (0 where /proc is missing).
fn rss_anon() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn key(i: u64) -> String {
    format!("key-{i:010}")
}

/// Appends one record for each of `keys`, in batches.
fn append(log: &Log, keys: impl Iterator<Item = u64>) -> Result<u64> {
    let mut n = 0;
    let mut b = BatchBuilder::with_capacity(0, 64 * 2000);
    let mut in_batch = 0;
    for k in keys {
        b.push(0, Some(key(k).as_bytes()), Some(b"1"), &[]);
        in_batch += 1;
        n += 1;
        if in_batch == 2000 {
            log.append_slice(&b.finish(), 0)?;
            b = BatchBuilder::with_capacity(0, 64 * 2000);
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        log.append_slice(&b.finish(), 0)?;
    }
    Ok(n)
}

/// A xorshift generator, so that rounds pick the same keys on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Waits until the pipeline has read `read` records and finished one more checkpoint round after the one
/// that counted them (so every change is in the store), sampling checkpoint durations and memory on the way.
fn settle(
    p: &millrace_processor::RunningPipeline,
    read: u64,
    longest_ms: &mut f64,
    rss_peak: &mut u64,
) -> Result<PipelineMetrics> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut seen = p.metrics().checkpoints;
    let mut after: Option<u64> = None;
    loop {
        if let Some(e) = p.error() {
            bail!("the pipeline failed: {e}");
        }
        if Instant::now() > deadline {
            bail!("the pipeline did not catch up within 30 minutes");
        }
        let m = p.metrics();
        if m.checkpoints != seen {
            seen = m.checkpoints;
            *longest_ms = longest_ms.max(m.last_checkpoint_micros as f64 / 1000.0);
        }
        *rss_peak = (*rss_peak).max(rss_anon());
        if m.records_read >= read {
            let first = *after.get_or_insert(m.checkpoint_rounds);
            if m.checkpoint_rounds > first {
                return Ok(m);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run_one(
    host: &Arc<LocalHost>,
    rt: &tokio::runtime::Handle,
    run_id: u32,
    keys: u64,
    kind: BackendKind,
    budget_mb: usize,
    changed_pct: f64,
    rounds: usize,
    window: bool,
    quiet: bool,
) -> Result<StateRun> {
    let backend = match kind {
        BackendKind::Memory => "memory",
        BackendKind::Disk => "disk",
    };
    let name = format!("state-{backend}-{keys}-{run_id}");
    let input = format!("{name}-in");
    let keyed = Pipeline::new(name.clone())
        .checkpoint_interval(Duration::from_millis(1000))
        .state_backend(kind)
        .state_memory_budget(budget_mb << 20)
        .parallelism(1)
        .source_with_partitions(input.clone(), Some(1))
        .key_by(|m: &Message| m.key.clone().unwrap_or_default());
    let job = if window {
        // Every record is at time 0: one window, open until the end of time.
        keyed
            .window(Window::tumbling(Duration::from_secs(1 << 40)))
            .late_to(
                format!("{name}-late"),
                Some(1),
                |k: &Bytes, _: &Message, ts| OutRecord::new(Some(k.clone()), None, ts),
            )
            .aggregate(Count)
            .filter(|_: &WindowResult<Bytes, u64>| false)
            .sink_with_partitions(format!("{name}-out"), Some(1), |r| {
                OutRecord::new(Some(r.key), None, 0)
            })?
    } else {
        keyed
            .aggregate(Count)
            .to_stream()
            .filter(|_: &(Bytes, Option<u64>)| false)
            .sink_with_partitions(format!("{name}-out"), Some(1), |(k, _)| {
                OutRecord::new(Some(k), None, 0)
            })?
    };
    let log = host
        .topic(&input, Some(1))?
        .first()
        .ok_or_else(|| anyhow!("no input partition"))?
        .clone();
    let mut rss_peak = 0;
    let mut read = append(&log, 0..keys)?;
    let t = Instant::now();
    let p = millrace_processor::start(&job, host.clone(), rt.clone())?;
    let mut longest = 0.0;
    let m = settle(&p, read, &mut longest, &mut rss_peak)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let load_change_bytes = m.state_change_bytes;
    let rss_after_load = rss_anon();
    if !quiet {
        eprintln!(
            "{backend} {keys} keys: loaded in {load_seconds:.1} s, {load_change_bytes} bytes of changes, \
             RssAnon {} MiB (peak {} MiB), state resident (estimated) {} MiB, {} checkpoints",
            rss_after_load >> 20,
            rss_peak >> 20,
            m.state_resident_bytes >> 20,
            m.checkpoints
        );
    }
    let per_round = ((keys as f64 * changed_pct / 100.0).round() as u64).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ keys);
    let mut round_keys = || -> Vec<u64> { (0..per_round).map(|_| rng.next(keys)).collect() };
    let mut out_rounds = Vec::new();
    let mut changes_before = m.state_change_bytes;
    for r in 0..rounds {
        let ks = round_keys();
        let t = Instant::now();
        read += append(&log, ks.into_iter())?;
        let mut longest = 0.0;
        let m = settle(&p, read, &mut longest, &mut rss_peak)?;
        let bytes = m.state_change_bytes - changes_before;
        changes_before = m.state_change_bytes;
        let secs = t.elapsed().as_secs_f64();
        if !quiet {
            eprintln!(
                "  round {r}: {per_round} keys, {bytes} bytes of changes, longest checkpoint {longest:.1} ms"
            );
        }
        out_rounds.push(Round {
            keys_changed: per_round,
            change_bytes: bytes,
            longest_checkpoint_ms: longest,
            seconds: secs,
        });
    }
    let m = p.stop()?;
    let store_bytes = m.state_store_bytes;

    // A restart: start again and run one more round.
    let t = Instant::now();
    // (A restarted pipeline counts what it reads afresh.)
    read = append(&log, round_keys().into_iter())?;
    let p = millrace_processor::start(&job, host.clone(), rt.clone())?;
    let mut longest = 0.0;
    settle(&p, read, &mut longest, &mut rss_peak)?;
    let restart_seconds = t.elapsed().as_secs_f64();
    p.stop()?;
    if !quiet {
        eprintln!("  restart and one round: {restart_seconds:.2} s");
    }
    Ok(StateRun {
        keys,
        backend,
        load_seconds,
        load_change_bytes,
        rss_after_load,
        rounds: out_rounds,
        restart_seconds,
        rss_peak,
        store_bytes,
    })
}

pub fn report(runs: &[StateRun], json_out: bool, budget_mb: usize) {
    let avg = |r: &StateRun, f: &dyn Fn(&Round) -> f64| {
        r.rounds.iter().map(f).sum::<f64>() / r.rounds.len().max(1) as f64
    };
    if json_out {
        let entries: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "keys": r.keys,
                    "backend": r.backend,
                    "load_seconds": r.load_seconds,
                    "load_keys_per_s": r.keys as f64 / r.load_seconds.max(1e-9),
                    "load_change_bytes": r.load_change_bytes,
                    "rounds": r.rounds.iter().map(|x| json!({
                        "keys_changed": x.keys_changed,
                        "change_bytes": x.change_bytes,
                        "longest_checkpoint_ms": x.longest_checkpoint_ms,
                        "seconds": x.seconds,
                    })).collect::<Vec<_>>(),
                    "round_seconds": avg(r, &|x| x.seconds),
                    "restart_and_round_seconds": r.restart_seconds,
                    "rss_anon_after_load": r.rss_after_load,
                    "rss_anon_peak": r.rss_peak,
                    "store_bytes": r.store_bytes,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"workload": "state", "memory_budget_mb": budget_mb, "runs": entries})
        );
        return;
    }
    println!(
        "{:<8} {:>10} {:>12} {:>14} {:>14} {:>12} {:>10} {:>12} {:>12} {:>12}",
        "backend",
        "keys",
        "load keys/s",
        "round changes",
        "bytes/changed",
        "longest ckpt",
        "round s",
        "restart+rnd",
        "RssAnon MiB",
        "store MiB"
    );
    for r in runs {
        let changed = avg(r, &|x| x.keys_changed as f64);
        let bytes = avg(r, &|x| x.change_bytes as f64);
        println!(
            "{:<8} {:>10} {:>12.0} {:>14.0} {:>14.1} {:>10.1}ms {:>10.2} {:>12.2} {:>12} {:>12}",
            r.backend,
            r.keys,
            r.keys as f64 / r.load_seconds.max(1e-9),
            bytes,
            bytes / changed.max(1.0),
            r.rounds
                .iter()
                .map(|x| x.longest_checkpoint_ms)
                .fold(0.0, f64::max),
            avg(r, &|x| x.seconds),
            r.restart_seconds,
            r.rss_peak >> 20,
            r.store_bytes >> 20
        );
    }
    println!(
        "round changes: bytes of state changes the checkpoints of one round wrote (mean over rounds); \
         restart+rnd: starting again and running one more round, against `round s`; RssAnon: the largest \
         seen in the rounds, with a {budget_mb} MiB budget for the disk backend"
    );
}
