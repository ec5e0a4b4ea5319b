//! Running pipelines over a bare [`LogManager`], without a broker: the [`Host`] that tests, benchmarks and
//! `millrace bench pipeline` use. Topics are just partition folders (created on first use with the partition
//! count asked for, or one); producer ids count up from 1.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use millrace_storage::{Log, LogConfig, LogManager};

use crate::error::Result;
use crate::runtime::Host;

pub struct LocalHost {
    pub logs: Arc<LogManager>,
    /// Settings of every partition created.
    pub config: LogConfig,
    next_producer_id: AtomicI64,
}

impl LocalHost {
    pub fn new(logs: Arc<LogManager>, config: LogConfig) -> LocalHost {
        LocalHost {
            logs,
            config,
            next_producer_id: AtomicI64::new(1),
        }
    }
}

impl Host for LocalHost {
    fn topic(&self, name: &str, partitions: Option<i32>) -> Result<Vec<Arc<Log>>> {
        let existing = self
            .logs
            .discover()?
            .into_iter()
            .filter(|(t, _)| t == name)
            .count() as i32;
        let n = partitions.unwrap_or(1).max(existing).max(1);
        (0..n)
            .map(|p| Ok(self.logs.open_partition(name, p, self.config.clone())?))
            .collect()
    }

    fn topic_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.logs.discover()?.into_iter().map(|(t, _)| t).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn checkpoint_log(&self, pipeline: &str) -> Result<Arc<Log>> {
        let config = LogConfig {
            max_message_bytes: 1 << 30,
            ..self.config.clone()
        };
        Ok(self
            .logs
            .open_partition(&format!("__pipeline.{pipeline}"), 0, config)?)
    }

    fn state_dir(&self, pipeline: &str) -> Result<std::path::PathBuf> {
        Ok(crate::keyed_state::state_dir(self.logs.dir(), pipeline))
    }

    fn new_producer_id(&self) -> Result<i64> {
        Ok(self.next_producer_id.fetch_add(1, Ordering::Relaxed))
    }
}
