//! The millrace command line as a library, so that a program can embed the broker with pipelines written in
//! Rust: `millrace serve` runs the broker and, inside it, the pipelines given with `--pipeline FILE` and those
//! the program passes in; `millrace pipeline check` validates a pipeline file; `millrace bench` load-tests any
//! Kafka-compatible broker.
//!
//! ```no_run
//! use millrace_processor::{Message, OutRecord, Pipeline};
//!
//! fn main() -> anyhow::Result<()> {
//!     let p = Pipeline::new("uppercase");
//!     let job = p
//!         .source("words")
//!         .map(|m: Message| {
//!             let v = m.value.as_deref().map(|v| v.to_ascii_uppercase().into());
//!             OutRecord::new(m.key, v, m.timestamp)
//!         })
//!         .sink("words_upper", |r| r)?;
//!     // `my-binary serve --listen 127.0.0.1:9092 --data-dir ./data` runs the broker with the pipeline in it.
//!     millrace::main_with(vec![job])
//! }
//! ```
//!
//! The pipelines given to [`main_with`] run exactly as pipeline files do: each is started before the broker
//! accepts connections (one that cannot start stops the broker from starting), restarted from its last
//! checkpoint if it fails, and stopped with a final checkpoint on SIGTERM/SIGINT. Its name names its
//! checkpoint topic (`__pipeline.<name>`), so it must not change between runs, and two pipelines of one broker
//! cannot share it. `examples/orders_enriched.rs`, `examples/revenue_by_country.rs` and
//! `examples/ad_attribution.rs` are the reference pipelines of `examples/pipelines/` written this way.

mod allocator;
mod bench;
pub mod pipelines;

#[cfg(test)]
mod example_tests;

// The examples are compiled into this crate's tests (example_tests.rs), where they name it `millrace`.
#[cfg(test)]
extern crate self as millrace;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use millrace_processor::Job;

#[derive(Parser)]
#[command(
    name = "millrace",
    version,
    about = "A Kafka-compatible broker and stream processor in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// Address to listen on (setting `listen`; default 127.0.0.1:9092). Port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
        /// HOST:PORT clients are told to connect to (setting `advertised.listener`; default: the bound address).
        #[arg(long)]
        advertised_listener: Option<String>,
        /// Data directory (setting `data.dir`; default ./millrace-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML configuration file with Kafka setting names (e.g. `"log.retention.ms" = 3600000`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A pipeline file to run inside the broker (repeatable); see the README's "Pipeline files".
        #[arg(long = "pipeline", value_name = "FILE")]
        pipelines: Vec<PathBuf>,
    },
    /// Pipeline files.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Load-test any Kafka-compatible broker (produce, consume, end-to-end latency).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Validates a pipeline file and prints its plan; errors name the line.
    Check { file: PathBuf },
    /// Runs a batch pipeline (every source bounded: `end = ...`) over a data directory to the end: it reads
    /// every source to its end, fires every window, commits, and exits 0. The directory must not be in use
    /// by a running broker.
    Run {
        file: PathBuf,
        /// Data directory (setting `data.dir`; default ./millrace-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML configuration file with Kafka setting names (as for `serve`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The `millrace` command line with `jobs` built in: logging to stderr (filter `MILLRACE_LOG`, default
/// `info`; left alone if the program already installed a subscriber), then [`run`] with the process's
/// arguments. `serve` runs `jobs` alongside the `--pipeline` files.
pub fn main_with(jobs: Vec<Job>) -> anyhow::Result<()> {
    allocator::tune();
    // Fails only when a global subscriber is already set: the program's own, which is then used.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    run(std::env::args_os(), jobs)
}

/// Runs the command line `args` (the first is the program name), as the `millrace` binary does; `serve` also
/// runs `jobs`, as it runs the pipelines of `--pipeline` files: each started before the broker serves,
/// supervised (restarted from its checkpoint when it fails) and stopped with a final checkpoint at shutdown.
/// Other commands ignore `jobs`. Bad arguments, `--help` and `--version` print and exit the process, as
/// clap does.
pub fn run<I, T>(args: I, jobs: Vec<Job>) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Serve {
            listen,
            advertised_listener,
            data_dir,
            config,
            pipelines,
        } => {
            let mut flags = Vec::new();
            if let Some(v) = listen {
                flags.push(("listen".to_string(), v));
            }
            if let Some(v) = advertised_listener {
                flags.push(("advertised.listener".to_string(), v));
            }
            if let Some(v) = data_dir {
                flags.push(("data.dir".to_string(), v.display().to_string()));
            }
            let env = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
            let config = millrace_broker::BrokerConfig::load(config.as_deref(), env, flags)?;
            raise_open_file_limit();
            // Pipeline files are checked before anything is opened, so a typo fails fast.
            let mut all = jobs;
            for p in &pipelines {
                all.push(millrace_processor::file::load(p)?);
            }
            check_names(&all)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(config, all))
        }
        Command::Pipeline {
            command: PipelineCommand::Check { file },
        } => match millrace_processor::file::load(&file) {
            Ok(job) => {
                print!("{}", job.plan());
                println!("ok");
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Command::Pipeline {
            command:
                PipelineCommand::Run {
                    file,
                    data_dir,
                    config,
                },
        } => {
            let job = millrace_processor::file::load(&file)?;
            let mut flags = Vec::new();
            if let Some(v) = data_dir {
                flags.push(("data.dir".to_string(), v.display().to_string()));
            }
            let env = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
            let config = millrace_broker::BrokerConfig::load(config.as_deref(), env, flags)?;
            let metrics = run_batch(config, &job)?;
            println!(
                "pipeline {} done: read {}, wrote {}, late {}, {} checkpoints",
                metrics.name,
                metrics.records_read,
                metrics.records_written,
                metrics.late_written,
                metrics.checkpoints
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    }
}

/// Runs a batch pipeline to its end over the broker storage of `config` (opened without listening), then
/// closes the logs cleanly.
pub fn run_batch(
    config: millrace_broker::BrokerConfig,
    job: &Job,
) -> anyhow::Result<millrace_processor::PipelineMetrics> {
    if !job.graph().is_bounded() {
        anyhow::bail!(
            "pipeline {} has an unbounded source: `pipeline run` needs every source to name an end \
             (end = \"end\", {{ offset = n }} or {{ time_ms = n }}); run it with `serve --pipeline` instead",
            job.name()
        );
    }
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let broker = millrace_broker::state::Broker::open(config, "127.0.0.1".into(), 0)?;
    let host: std::sync::Arc<dyn millrace_processor::Host> =
        std::sync::Arc::new(pipelines::BrokerHost {
            broker: broker.clone(),
        });
    let result = millrace_processor::start(job, host, runtime.handle().clone())
        .and_then(millrace_processor::RunningPipeline::wait);
    broker.close()?;
    Ok(result?)
}

/// Refuses two pipelines with one name: they would share one checkpoint topic.
fn check_names(jobs: &[Job]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for j in jobs {
        if !seen.insert(j.name()) {
            anyhow::bail!(
                "two pipelines are named {:?}: a pipeline's name names its checkpoints, so it must be unique",
                j.name()
            );
        }
    }
    Ok(())
}

/// Below this many partitions' worth of open files the broker warns at start (Kafka's docs ask operators for
/// 100,000 or more; 10,000 partitions is what one node is benchmarked with).
const FEW_PARTITIONS: u64 = 10_000;

/// Raises the soft limit on open files to the hard limit, as Kafka's docs tell operators to do and as e.g.
/// Redpanda does itself: a partition keeps one file open, so the limit is how many partitions the broker can
/// hold. Never fails: a limit that cannot be raised is logged and the broker runs within it.
fn raise_open_file_limit() {
    let before = rlimit::Resource::NOFILE.get().ok();
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            match before {
                Some((soft, _)) => soft,
                None => return,
            }
        }
    };
    let hard = before.map(|(_, hard)| hard);
    let partitions = soft.saturating_sub(millrace_broker::descriptors::RESERVED)
        / millrace_broker::descriptors::PER_PARTITION;
    tracing::info!(
        soft,
        hard,
        raised_from = before.map(|(s, _)| s).filter(|&s| s != soft),
        partitions,
        "open-file limit (RLIMIT_NOFILE)"
    );
    if partitions < FEW_PARTITIONS {
        tracing::warn!(
            limit = soft,
            "the open-file limit allows about {partitions} partitions on this broker; raise the hard limit \
             (ulimit -Hn, LimitNOFILE=) for more"
        );
    }
}

/// Opens the broker with `config`, starts `jobs` over its storage, and serves until SIGTERM or SIGINT; then
/// the pipelines take their final checkpoint while the broker still serves, and the broker shuts down.
///
/// Runs on a multi-threaded tokio runtime (the first start of each pipeline blocks in place). A pipeline that
/// cannot start (a bad checkpoint, a refused topic) is an error and the broker does not start; later failures
/// are restarted by a supervisor ([`pipelines::Supervised`]).
pub async fn serve(config: millrace_broker::BrokerConfig, jobs: Vec<Job>) -> anyhow::Result<()> {
    check_names(&jobs)?;
    let bound = millrace_broker::bind(config).await?;
    let host: std::sync::Arc<dyn millrace_processor::Host> =
        std::sync::Arc::new(pipelines::BrokerHost {
            broker: bound.broker.clone(),
        });
    let handle = tokio::runtime::Handle::current();
    // The first start is synchronous, so that a pipeline that cannot start (a bad checkpoint, a refused
    // topic) stops the broker from starting; later failures are restarted by a supervisor.
    let running = tokio::task::block_in_place(|| {
        jobs.into_iter()
            .map(|j| {
                let first = millrace_processor::start(&j, host.clone(), handle.clone())?;
                Ok(pipelines::Supervised::new(
                    j,
                    host.clone(),
                    handle.clone(),
                    first,
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    bound
        .run(async move {
            shutdown_signal().await;
            let _ = tokio::task::spawn_blocking(move || {
                for p in running {
                    tracing::debug!(pipeline = p.name(), "stopping pipeline");
                    p.stop();
                }
            })
            .await;
        })
        .await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
