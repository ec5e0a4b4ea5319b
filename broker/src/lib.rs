//! millrace's Kafka server.
//!
//! - [`server`]: the accept loop, connection cap and graceful shutdown ([`shutdown`]).
//! - [`connection`]: frames in, responses out in request order, with pipelining.
//! - [`handlers`]: one file per API; Kafka error codes are chosen there.
//! - [`state`]: the shared [`Broker`]: settings ([`config`]), the topic registry ([`topics`]) over storage.
//! - [`descriptors`]: the open-file budget that CreateTopics checks (a partition keeps one file open).
//! - [`producers`]: InitProducerId and idempotent-producer bookkeeping that is not per partition.

pub mod config;
pub mod connection;
pub mod descriptors;
pub mod error;
pub mod groups;
pub mod handlers;
pub mod log_config;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use config::BrokerConfig;
pub use error::{Error, Result};
pub use state::Broker;

/// The Kafka code for a storage error.
pub(crate) fn storage_code(
    e: &millrace_storage::Error,
) -> millrace_protocol::error_code::ErrorCode {
    log_config::storage_error_code(e)
}

/// Binds the listener, opens the data directory, prints the ready line and serves until `signal` resolves.
pub async fn serve(config: BrokerConfig, signal: impl Future) -> Result<()> {
    bind(config).await?.run(signal).await;
    Ok(())
}

/// A broker whose listener is bound and whose data directory is open (recovered), not yet serving: what runs
/// beside the broker (pipelines) starts here, before the ready line.
pub struct Bound {
    listener: tokio::net::TcpListener,
    bound: SocketAddr,
    pub broker: std::sync::Arc<Broker>,
}

/// Binds the listener and opens (recovering) the data directory.
pub async fn bind(config: BrokerConfig) -> Result<Bound> {
    let listen = config.get("listen");
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let bound: SocketAddr = listener.local_addr()?;
    let (host, port) = match config.get("advertised.listener").as_str() {
        "" => (bound.ip().to_string(), i32::from(bound.port())),
        adv => parse_host_port(adv)?,
    };
    let broker = tokio::task::block_in_place(|| Broker::open(config, host, port))?;
    Ok(Bound {
        listener,
        bound,
        broker,
    })
}

impl Bound {
    /// Prints the ready line and serves until `signal` resolves; then flushes and closes every log.
    pub async fn run(self, signal: impl Future) {
        println!(
            "millrace listening on {} (advertised {}:{}), data in {}",
            self.bound,
            self.broker.advertised_host,
            self.broker.advertised_port,
            self.broker.data_dir.display()
        );
        server::run(self.listener, self.broker, signal, Duration::from_secs(4)).await;
    }
}

fn parse_host_port(s: &str) -> Result<(String, i32)> {
    let s = s.rsplit("://").next().unwrap_or(s);
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("advertised listener {s:?} is not HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Error::Config(format!("advertised listener {s:?} has a bad port")))?;
    Ok((host.trim_matches(['[', ']']).to_string(), i32::from(port)))
}
