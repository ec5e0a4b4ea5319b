//! The millrace binary: `millrace serve` runs the broker (and the pipelines given with `--pipeline`),
//! `millrace pipeline check` validates a pipeline file, `millrace bench` load-tests any Kafka-compatible broker.

mod bench;
mod pipelines;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
            let jobs = pipelines
                .iter()
                .map(|p| millrace_processor::file::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(config, jobs))
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
        Command::Bench(args) => bench::run(args),
    }
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

/// Opens the broker, starts the pipelines over its storage, serves; on SIGTERM/SIGINT the pipelines take their
/// final checkpoint while the broker still serves, then the broker shuts down.
async fn serve(
    config: millrace_broker::BrokerConfig,
    jobs: Vec<millrace_processor::Job>,
) -> anyhow::Result<()> {
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
