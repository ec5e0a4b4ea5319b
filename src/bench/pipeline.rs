//! `millrace bench pipeline`: the stream processor's throughput, partition to partition, in events per second
//! and per CPU-second. Nexmark-like bids (`millrace_processor::nexmark`) are generated into one partition of a
//! scratch data directory, then each pipeline runs over it inside this process exactly as inside the broker
//! (one task thread per partition, storage reads and appends, exactly-once checkpoints). The baseline, measured
//! in the same run, is decoding every record of the partition and nothing else.
//!
//! The join cases read a second input as well: an auctions table (100,000 rows, loaded before the bids) for
//! the stream-table join and the join + tumbling sum, and one ad impression per bid for the interval join.
//! Their events are the records of every input (bids + table rows, bids + impressions), compared with the
//! baseline's decode rate per record (the inputs' records are of the same size).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use millrace_processor::keyed_state::BackendKind;
use millrace_processor::local::LocalHost;
use millrace_processor::source::for_each_record;
use millrace_processor::{nexmark, Host, Job};
use millrace_storage::{Log, LogConfig, LogManager};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Bids generated into the source partition.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Distinct bidders (the keys of the keyed count).
    #[arg(long, default_value_t = 10_000)]
    pub bidders: u64,
    /// Tumbling window of the keyed count, in ms of event time (bids advance 100 µs each).
    #[arg(long, default_value_t = 10_000)]
    pub window_ms: u64,
    /// Interval of the interval join: a bid joins the impressions its bidder saw in this many ms before it.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Checkpoint interval of the join cases, in ms (the stateless and keyed cases keep 100 ms).
    #[arg(long, default_value_t = 100)]
    pub join_checkpoint_ms: u64,
    /// Key groups of the join cases (default: the pipeline default, 128; 1 runs one operator instance per
    /// keyed step, as a pipeline that may never be rescaled could).
    #[arg(long)]
    pub join_max_parallelism: Option<usize>,
    /// Which pipelines to run (`both`: the stateless and the keyed count; `joins`: the three join cases).
    #[arg(long, value_enum, default_value_t = Kind::All)]
    pub kind: Kind,
    /// State sizes (keys) of `--kind state`, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000000,10000000,20000000"
    )]
    pub state_keys: Vec<u64>,
    /// Backends of `--kind state`: memory, disk, or both.
    #[arg(long, default_value = "both")]
    pub state_backend: String,
    /// Memory budget of the disk backend in `--kind state`, in MiB.
    #[arg(long, default_value_t = 256)]
    pub state_budget_mb: usize,
    /// Rounds of changes after the load in `--kind state`.
    #[arg(long, default_value_t = 3)]
    pub state_rounds: usize,
    /// Percent of the keys changed per round in `--kind state`.
    #[arg(long, default_value_t = 1.0)]
    pub state_changed_pct: f64,
    /// In `--kind state`, count per key in one tumbling window that stays open (so the window's index of
    /// keys, not only its accumulators, grows with the keys) instead of a running count into a table.
    #[arg(long)]
    pub state_window: bool,
    /// Do not fsync checkpoints (exactly-once then holds across process crashes, not machine crashes).
    #[arg(long)]
    pub no_fsync: bool,
    /// Scratch directory (default: a new folder in the system's temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object with the results on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Stateless,
    Keyed,
    Both,
    TableJoin,
    IntervalJoin,
    JoinSum,
    Joins,
    All,
    /// Keyed state against its size (not part of `all`: it loads up to 20 M keys).
    State,
}

impl Kind {
    fn runs(self, case: Kind) -> bool {
        self == case
            || (self == Kind::All && case != Kind::State)
            || (self == Kind::Both && matches!(case, Kind::Stateless | Kind::Keyed))
            || (self == Kind::Joins
                && matches!(case, Kind::TableJoin | Kind::IntervalJoin | Kind::JoinSum))
    }
}

/// This process's user + system CPU time, from /proc (Linux's USER_HZ is 100 on every architecture we run on).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), counted from field 3.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

struct Measured {
    name: &'static str,
    /// Input records processed (the bids, plus the other input's records for a join).
    events: u64,
    seconds: f64,
    cpu_seconds: f64,
    outputs: u64,
    checkpoints: u64,
    /// Operator state in the last checkpoint.
    state_bytes: u64,
}

fn read_only(log: &Log) -> Result<u64> {
    let mut n = 0u64;
    let mut offset = log.log_start_offset();
    loop {
        let s = log.read(offset, 1 << 20, true)?;
        if s.records.is_empty() {
            return Ok(n);
        }
        offset = for_each_record(&s.records, offset, 0, |_| n += 1)?;
    }
}

fn run_job(
    host: &Arc<LocalHost>,
    rt: &tokio::runtime::Handle,
    name: &'static str,
    job: Job,
    events: u64,
    expect: u64,
) -> Result<Measured> {
    let sink = host.topic(&job.sinks()[0].name, Some(1))?;
    let sink = sink
        .first()
        .ok_or_else(|| anyhow!("no sink partition"))?
        .clone();
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let running = millrace_processor::start(&job, host.clone(), rt.clone())?;
    let deadline = t0 + Duration::from_secs(600);
    while (sink.log_end_offset() as u64) < expect {
        if Instant::now() > deadline {
            bail!(
                "{name}: {} of {expect} outputs after 10 minutes",
                sink.log_end_offset()
            );
        }
        if let Some(e) = running.error() {
            bail!("{name}: the pipeline failed: {e}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let (seconds, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let before_stop = running.metrics();
    running.stop()?;
    Ok(Measured {
        checkpoints: before_stop.checkpoints,
        state_bytes: before_stop.state_bytes,
        name,
        events,
        seconds,
        cpu_seconds: cpu,
        outputs: sink.log_end_offset() as u64,
    })
}

pub fn run(a: PipelineArgs, rt: tokio::runtime::Handle) -> Result<()> {
    if a.events == 0 || a.bidders == 0 || a.window_ms == 0 || a.interval_ms == 0 {
        bail!("--events, --bidders, --window-ms and --interval-ms must be positive");
    }
    let (dir, remove) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("millrace-bench-pipeline-{}", std::process::id())),
            true,
        ),
    };
    let result = run_in(&a, &dir, rt);
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(a: &PipelineArgs, dir: &std::path::Path, rt: tokio::runtime::Handle) -> Result<()> {
    let logs =
        Arc::new(LogManager::open(dir).with_context(|| format!("opening {}", dir.display()))?);
    let config = LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    };
    let host = Arc::new(LocalHost::new(logs.clone(), config));
    let run_id = std::process::id();
    if a.kind == Kind::State {
        let kinds: &[BackendKind] = match a.state_backend.as_str() {
            "memory" => &[BackendKind::Memory],
            "disk" => &[BackendKind::Disk],
            "both" => &[BackendKind::Memory, BackendKind::Disk],
            other => bail!("--state-backend {other:?}: expected memory, disk or both"),
        };
        if a.state_keys.contains(&0) || !(a.state_changed_pct > 0.0 && a.state_changed_pct <= 100.0)
        {
            bail!("--state-keys must be positive and --state-changed-pct in (0, 100]");
        }
        let mut runs = Vec::new();
        for &keys in &a.state_keys {
            for &kind in kinds {
                runs.push(super::state::run_one(
                    &host,
                    &rt,
                    run_id,
                    keys,
                    kind,
                    a.state_budget_mb,
                    a.state_changed_pct,
                    a.state_rounds,
                    a.state_window,
                    a.quiet,
                )?);
            }
        }
        logs.shutdown()?;
        super::state::report(&runs, a.json, a.state_budget_mb);
        return Ok(());
    }
    let source_name = format!("bids-{run_id}");
    let source = host.topic(&source_name, Some(1))?;
    let source = source
        .first()
        .ok_or_else(|| anyhow!("no source partition"))?
        .clone();
    let t = Instant::now();
    nexmark::append_bids(&source, 0, a.events, a.bidders)?;
    nexmark::append_closer(&source)?;
    if !a.quiet {
        eprintln!(
            "generated {} bids in {:.2} s",
            a.events,
            t.elapsed().as_secs_f64()
        );
    }
    let table_name = format!("auctions-{run_id}");
    let mut table_rows = 0;
    if a.kind.runs(Kind::TableJoin) || a.kind.runs(Kind::JoinSum) {
        let table = host.topic(&table_name, Some(1))?;
        let table = table.first().ok_or_else(|| anyhow!("no table partition"))?;
        table_rows = nexmark::append_auction_table(table)?;
    }
    let impressions_name = format!("impressions-{run_id}");
    if a.kind.runs(Kind::IntervalJoin) {
        let t = Instant::now();
        let imps = host.topic(&impressions_name, Some(1))?;
        let imps = imps
            .first()
            .ok_or_else(|| anyhow!("no impressions partition"))?;
        nexmark::append_impressions(imps, 0, a.events, a.bidders)?;
        if !a.quiet {
            eprintln!(
                "generated {} impressions in {:.2} s",
                a.events,
                t.elapsed().as_secs_f64()
            );
        }
    }

    let (t0, c0) = (Instant::now(), cpu_seconds());
    let read = read_only(&source)?;
    let baseline = Measured {
        name: "read_only",
        events: a.events,
        seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - c0,
        outputs: read,
        checkpoints: 0,
        state_bytes: 0,
    };
    let fsync = !a.no_fsync;
    let join = nexmark::JoinSettings {
        checkpoint: Duration::from_millis(a.join_checkpoint_ms.max(1)),
        fsync,
        max_parallelism: a.join_max_parallelism,
    };
    let mut results = vec![];
    if a.kind.runs(Kind::Stateless) {
        let job = nexmark::stateless_job(
            &format!("stateless-{run_id}"),
            &source_name,
            &format!("stateless-out-{run_id}"),
            fsync,
        )?;
        let expect = nexmark::stateless_outputs(a.events + 1);
        results.push(run_job(
            &host,
            &rt,
            "stateless_map_filter",
            job,
            a.events,
            expect,
        )?);
    }
    if a.kind.runs(Kind::Keyed) {
        let job = nexmark::keyed_count_job(
            &format!("keyed-{run_id}"),
            &source_name,
            &format!("keyed-out-{run_id}"),
            a.window_ms,
            fsync,
        )?;
        let expect = nexmark::keyed_outputs(a.events, a.bidders, a.window_ms);
        results.push(run_job(
            &host,
            &rt,
            "keyed_tumbling_count",
            job,
            a.events,
            expect,
        )?);
    }
    if a.kind.runs(Kind::TableJoin) {
        let job = nexmark::table_join_job(
            &format!("table-join-{run_id}"),
            &source_name,
            &table_name,
            &format!("table-join-out-{run_id}"),
            join,
        )?;
        let expect = nexmark::table_join_outputs(a.events);
        results.push(run_job(
            &host,
            &rt,
            "stream_table_join",
            job,
            a.events + table_rows,
            expect,
        )?);
    }
    if a.kind.runs(Kind::IntervalJoin) {
        let interval = a.interval_ms.min(i64::MAX as u64) as i64;
        let job = nexmark::interval_join_job(
            &format!("interval-join-{run_id}"),
            &source_name,
            &impressions_name,
            &format!("interval-join-out-{run_id}"),
            interval,
            join,
        )?;
        let expect = nexmark::interval_join_outputs(a.events, a.bidders, interval);
        results.push(run_job(
            &host,
            &rt,
            "interval_join",
            job,
            2 * a.events,
            expect,
        )?);
    }
    if a.kind.runs(Kind::JoinSum) {
        let job = nexmark::join_sum_job(
            &format!("join-sum-{run_id}"),
            &source_name,
            &table_name,
            &format!("join-sum-out-{run_id}"),
            a.window_ms,
            join,
        )?;
        let expect = nexmark::join_sum_outputs(a.events, a.window_ms);
        results.push(run_job(
            &host,
            &rt,
            "join_tumbling_sum",
            job,
            a.events + table_rows,
            expect,
        )?);
    }
    logs.shutdown()?;
    if !a.quiet {
        for m in &results {
            eprintln!(
                "{}: {} outputs, {} checkpoints, {} bytes of state in the last",
                m.name, m.outputs, m.checkpoints, m.state_bytes
            );
        }
    }

    let rate = |m: &Measured| m.events as f64 / m.seconds.max(1e-9);
    let per_cpu = |m: &Measured| {
        if m.cpu_seconds > 0.0 {
            m.events as f64 / m.cpu_seconds
        } else {
            f64::NAN
        }
    };
    if a.json {
        let entry = |m: &Measured| {
            json!({
                "name": m.name,
                "events": m.events,
                "seconds": m.seconds,
                "events_per_s": rate(m),
                "cpu_seconds": m.cpu_seconds,
                "events_per_cpu_s": per_cpu(m),
                "outputs": m.outputs,
                "checkpoints": m.checkpoints,
                "state_bytes": m.state_bytes,
                "ratio_to_read_only": rate(m) / rate(&baseline),
            })
        };
        let out = json!({
            "workload": "pipeline",
            "events": a.events,
            "bidders": a.bidders,
            "window_ms": a.window_ms,
            "interval_ms": a.interval_ms,
            "join_checkpoint_ms": a.join_checkpoint_ms,
            "join_max_parallelism": a.join_max_parallelism,
            "checkpoint_fsync": fsync,
            "baseline": entry(&baseline),
            "pipelines": results.iter().map(entry).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        println!(
            "{:<22} {:>10} {:>14} {:>18} {:>10}",
            "pipeline", "seconds", "events/s", "events/CPU-s", "ratio"
        );
        for m in std::iter::once(&baseline).chain(&results) {
            println!(
                "{:<22} {:>10.3} {:>14.0} {:>18.0} {:>10.3}",
                m.name,
                m.seconds,
                rate(m),
                per_cpu(m),
                rate(m) / rate(&baseline)
            );
        }
        println!(
            "ratio: events/s relative to read_only (decoding the same partition, nothing else), same run; \
             checkpoint fsync {}",
            if fsync { "on" } else { "off" }
        );
    }
    Ok(())
}
