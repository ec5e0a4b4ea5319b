//! Sources and sinks on a remote Kafka-compatible cluster (a source's or sink's `bootstrap.servers`), reached
//! through the client crate over TCP.
//!
//! - [`source`]: a background fetcher per remote partition fills a bounded buffer that the task reads as it
//!   reads a local log. It reads committed data only (Fetch at read_committed, aborted transactions dropped).
//!   The pipeline's checkpoint holds its offsets, as for a local source, so input is exactly-once.
//! - [`sink`]: the committer writes a checkpoint's outputs after the checkpoint is durable, as an idempotent
//!   producer with a producer id of the remote cluster, acks=all. A crash between the checkpoint and the
//!   write is mended at restart: each batch the checkpoint carries is looked for on the remote partition
//!   (by producer id and sequence) and written only if missing, so outputs are neither lost nor duplicated.

pub mod sink;
pub mod source;

use std::time::Duration;

use millrace_client::cluster::{self, Topic};
use millrace_client::Connection;

use crate::error::{Error, Result};

/// The client id remote clusters see.
pub const CLIENT_ID: &str = "millrace-pipeline";
/// How long a remote call keeps retrying retriable failures (leader moves, restarts) before the pipeline
/// fails.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// The pause between two tries.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Wraps a client error with the cluster it came from.
pub fn remote_error(cluster: &str, e: millrace_client::Error) -> Error {
    Error::Remote {
        cluster: cluster.to_string(),
        message: e.to_string(),
    }
}

/// Whether a remote failure may pass if tried again.
pub fn retriable(e: &millrace_client::Error) -> bool {
    e.is_retriable()
}

/// Describes `topic` on the cluster at `bootstrap`, creating it with `create` partitions (-1: the cluster's
/// default) when given and it is missing.
pub async fn describe(bootstrap: &str, topic: &str, create: Option<i32>) -> Result<Topic> {
    let mut conn = cluster::bootstrap(bootstrap, CLIENT_ID)
        .await
        .map_err(|e| remote_error(bootstrap, e))?;
    let (t, _) = cluster::topic(&mut conn, topic, create)
        .await
        .map_err(|e| remote_error(bootstrap, e))?;
    Ok(t)
}

/// Connects to one broker of the cluster.
pub async fn connect(bootstrap: &str, addr: &str) -> Result<Connection> {
    Connection::connect(addr, CLIENT_ID)
        .await
        .map_err(|e| remote_error(bootstrap, e))
}

/// The offsets of `partitions` at `timestamp` (LATEST, EARLIEST or a time), read_committed.
pub async fn offsets(
    bootstrap: &str,
    topic: &Topic,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(partitions.len());
    for (leader, parts) in topic.by_leader() {
        let wanted: Vec<i32> = parts
            .into_iter()
            .filter(|p| partitions.contains(p))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut conn = connect(bootstrap, &leader).await?;
        let got = cluster::offsets_isolated(&mut conn, &topic.name, &wanted, timestamp, true)
            .await
            .map_err(|e| remote_error(bootstrap, e))?;
        out.extend(got);
    }
    let mut v = Vec::with_capacity(partitions.len());
    for p in partitions {
        match out.iter().find(|(q, _)| q == p) {
            Some((_, o)) => v.push(*o),
            None => {
                return Err(Error::Remote {
                    cluster: bootstrap.to_string(),
                    message: format!("no offset for {}/{p}", topic.name),
                })
            }
        }
    }
    Ok(v)
}
