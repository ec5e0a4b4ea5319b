//! `millrace bench`: a load generator for any Kafka-compatible broker, written directly on `millrace-protocol`
//! (no librdkafka), so that the client is rarely what limits a measurement.
//!
//! - [`client`]: one connection (framing, correlation ids, pipelining, ApiVersions negotiation).
//! - [`cluster`]: metadata, topic creation, leaders, offsets.
//! - [`payload`]: the records sent (keys, values, timestamps) and the batches that carry them.
//! - [`produce`], [`consume`], [`e2e`], [`metadata`]: the workloads against a broker.
//! - [`pipeline`]: the stream processor's throughput, in this process.
//! - [`report`]: live progress, latency histograms and the final summary (text or `--json`).

use millrace_client::cluster;
use millrace_client::connection as client;
mod consume;
mod e2e;
mod metadata;
mod payload;
mod pipeline;
mod produce;
mod report;
mod state;

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use millrace_protocol::error_code;
use millrace_protocol::records::Compression;

/// Arguments of `millrace bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Produce as fast as possible (or at --rate): throughput and produce request latency.
    Produce(ProduceArgs),
    /// Fetch a topic as fast as possible: throughput (records counted from batch headers).
    Consume(ConsumeArgs),
    /// Produce at a fixed --rate while consuming: end-to-end latency from send to arrival.
    E2e(E2eArgs),
    /// Time Metadata requests for one topic (creating it with --partitions if missing).
    Metadata(MetadataArgs),
    /// The stream processor's throughput partition to partition, in this process (no broker needed).
    Pipeline(pipeline::PipelineArgs),
}

/// Options every workload has.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to use.
    #[arg(long, default_value = "millrace-bench")]
    pub topic: String,
    /// Stop after this many records (in total, across connections).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms, 2m). Default 10s when --count is not given.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print one JSON object with the results on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    /// The time limit: --duration, else 10 s unless a --count bounds the run.
    pub fn time_limit(&self) -> Option<Duration> {
        match (self.duration, self.count) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }
}

/// How the producer sends.
#[derive(Args, Debug, Clone)]
pub struct ProducerArgs {
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Bytes of each record value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Record keys: none, uniform:N (random among N keys) or sequential (the record's number).
    #[arg(long, default_value = "none", value_parser = parse_key_distribution)]
    pub key_distribution: KeyDistribution,
    /// Acknowledgements: 0, 1 or all (-1).
    #[arg(long, default_value = "1", value_parser = parse_acks, allow_hyphen_values = true)]
    pub acks: i16,
    /// Largest record batch in bytes (before compression).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size: usize,
    /// Largest produce request in bytes (its batches together): brokers close connections whose frames pass
    /// socket.request.max.bytes (100 MiB by default in Kafka and millrace).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// How long a batch may wait for more records before it is sent (only matters with --rate).
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Compression codec of the batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Connections per partition leader.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// Records per second in total; unlimited when not given.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// How the consumer fetches.
#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// fetch.max.bytes of each Fetch request.
    #[arg(long, default_value_t = 52_428_800)]
    pub fetch_max_bytes: i32,
    /// max.partition.fetch.bytes of each partition in a Fetch.
    #[arg(long, default_value_t = 10_485_760)]
    pub partition_max_bytes: i32,
    /// Consumer connections; the topic's partitions are dealt out among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Where to start: the earliest or the latest offset of each partition.
    #[arg(long, value_enum, default_value_t = StartFrom::Earliest)]
    pub from: StartFrom,
}

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MetadataArgs {
    /// Bootstrap broker, HOST:PORT[,HOST:PORT...].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to describe.
    #[arg(long, default_value = "millrace-bench-metadata")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 10_000)]
    pub partitions: i32,
    /// Metadata requests to time (one at a time).
    #[arg(long, default_value_t = 200)]
    pub count: u64,
    /// Print one JSON object with the results on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// Accepted for symmetry with the other workloads (this one prints no progress).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    None,
    Uniform(u64),
    Sequential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    pub fn codec(self) -> Compression {
        match self {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(format!("acks must be 0, 1 or all, not {s:?}")),
    }
}

fn parse_key_distribution(s: &str) -> Result<KeyDistribution, String> {
    match s {
        "none" => Ok(KeyDistribution::None),
        "sequential" => Ok(KeyDistribution::Sequential),
        _ => match s.strip_prefix("uniform:").map(str::parse::<u64>) {
            Some(Ok(n)) if n > 0 => Ok(KeyDistribution::Uniform(n)),
            _ => Err(format!(
                "key distribution must be none, sequential or uniform:N with N > 0, not {s:?}"
            )),
        },
    }
}

/// A Kafka error code as people read it: `3 UNKNOWN_TOPIC_OR_PARTITION`.
/// The client id in every request `millrace bench` sends.
pub const CLIENT_ID: &str = "millrace-bench";

pub fn kafka_error(code: i16) -> String {
    format!("error code {code} {}", error_code::name(code))
}

/// Runs a `millrace bench` subcommand to completion. A failure is printed as one line (with its causes) and
/// exits with status 1, whatever `RUST_BACKTRACE` says: it is the broker's or the network's failure, not ours.
pub fn run(args: BenchArgs) -> Result<()> {
    if let Err(e) = run_inner(args) {
        eprintln!("millrace bench: error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn run_inner(args: BenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            BenchCommand::Produce(a) => {
                check_producer(&a.producer)?;
                produce::run(a).await
            }
            BenchCommand::Consume(a) => consume::run(a).await,
            BenchCommand::E2e(a) => {
                check_producer(&a.producer)?;
                e2e::run(a).await
            }
            BenchCommand::Metadata(a) => metadata::run(a).await,
            BenchCommand::Pipeline(a) => {
                let rt = tokio::runtime::Handle::current();
                tokio::task::block_in_place(|| pipeline::run(a, rt))
            }
        }
    })
}

fn check_producer(p: &ProducerArgs) -> Result<()> {
    if p.connections == 0 || p.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    if p.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    if let Some(r) = p.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of records per second");
        }
    }
    Ok(())
}
