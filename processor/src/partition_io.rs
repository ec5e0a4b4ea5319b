//! Where a pipeline's partitions live: a log of this broker, or a partition of a remote cluster (a source's or
//! sink's `bootstrap.servers`, see [`crate::remote`]). The runtime reads and writes both through these.

use std::sync::Arc;
use std::time::Duration;

use millrace_storage::Log;

use crate::remote::source::RemotePartition;

/// A source partition.
#[derive(Clone)]
pub enum SourcePartition {
    Local(Arc<Log>),
    Remote(Arc<RemotePartition>),
}

impl SourcePartition {
    pub fn partition(&self) -> i32 {
        match self {
            SourcePartition::Local(l) => l.partition(),
            SourcePartition::Remote(r) => r.partition,
        }
    }

    /// The offset after the last record known to be readable.
    pub fn end_offset(&self) -> i64 {
        match self {
            SourcePartition::Local(l) => l.log_end_offset(),
            SourcePartition::Remote(r) => r.end_offset(),
        }
    }

    /// Waits (on `rt`, up to `timeout`) until records at or after `from` may be readable.
    pub fn wait(&self, rt: &tokio::runtime::Handle, from: i64, timeout: Duration) {
        match self {
            SourcePartition::Local(log) => rt.block_on(async {
                let appended = log.appended().notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                if log.log_end_offset() > from {
                    return;
                }
                let _ = tokio::time::timeout(timeout, appended).await;
            }),
            SourcePartition::Remote(r) => rt.block_on(async {
                let fetched = r.fetched.notified();
                tokio::pin!(fetched);
                fetched.as_mut().enable();
                if r.end_offset() > from {
                    return;
                }
                let _ = tokio::time::timeout(timeout, fetched).await;
            }),
        }
    }

    /// Stops a remote partition's fetcher (a local log needs nothing).
    pub fn stop(&self) {
        if let SourcePartition::Remote(r) = self {
            r.stop();
        }
    }
}

/// A sink partition: a local log, or partition `partition` of the committer's remote sink `sink`.
#[derive(Clone)]
pub enum SinkPartition {
    Local(Arc<Log>),
    Remote { sink: usize },
}
