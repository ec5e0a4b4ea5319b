//! The data directory: one folder per partition (`<topic>-<partition>`), opened on demand by the broker, which
//! knows which topics exist and with what settings.
//!
//! Invariant: at most one open [`Log`] per partition folder; `shutdown` closes every log cleanly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::LogConfig;
use crate::error::Result;
use crate::log::Log;
use crate::names::partition_dir;

#[derive(Debug)]
pub struct LogManager {
    dir: PathBuf,
    logs: Mutex<HashMap<(String, i32), Arc<Log>>>,
}

impl LogManager {
    pub fn open(dir: &Path) -> Result<LogManager> {
        std::fs::create_dir_all(dir)?;
        Ok(LogManager {
            dir: dir.to_path_buf(),
            logs: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (recovering) an existing partition, or creates it empty.
    pub fn open_partition(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Arc<Log>> {
        let key = (topic.to_string(), partition);
        if let Some(log) = self.logs.lock().get(&key) {
            return Ok(log.clone());
        }
        let log = Arc::new(Log::open(
            &partition_dir(&self.dir, topic, partition),
            topic,
            partition,
            config,
        )?);
        self.logs.lock().insert(key, log.clone());
        Ok(log)
    }

    /// Creates a new, empty partition (any leftover folder of a deleted topic of the same name is removed).
    pub fn create_partition(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Arc<Log>> {
        let dir = partition_dir(&self.dir, topic, partition);
        if dir.exists()
            && !self
                .logs
                .lock()
                .contains_key(&(topic.to_string(), partition))
        {
            std::fs::remove_dir_all(&dir)?;
        }
        self.open_partition(topic, partition, config)
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Log>> {
        self.logs
            .lock()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Deletes every partition of a topic.
    pub fn remove_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        for p in 0..partitions {
            let log = self.logs.lock().remove(&(topic.to_string(), p));
            match log {
                Some(log) => log.delete()?,
                None => {
                    let dir = partition_dir(&self.dir, topic, p);
                    if dir.exists() {
                        std::fs::remove_dir_all(dir)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn all(&self) -> Vec<Arc<Log>> {
        self.logs.lock().values().cloned().collect()
    }

    /// Flushes and cleanly closes every log; returns the first error after trying them all.
    pub fn shutdown(&self) -> Result<()> {
        let mut first = Ok(());
        for log in self.all() {
            if let Err(e) = log.close() {
                tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "close failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
