//! The millrace binary: `millrace serve` runs the broker.

mod bench;

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
    },
    /// Load-test any Kafka-compatible broker (produce, consume, end-to-end latency).
    Bench(bench::BenchArgs),
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
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(millrace_broker::serve(config, shutdown_signal()))?;
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    }
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
