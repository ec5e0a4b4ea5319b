//! The data directory: one folder per partition (`<topic>-<partition>`), the open logs, and the background
//! maintenance (retention, flush.ms) over them.
//!
//! Invariants: at most one open [`Log`] per partition folder (all opens go through the `logs` map); `shutdown`
//! stops the maintenance task and closes every log cleanly. Topic ids and topic settings are the broker's: it
//! hands each partition its [`LogConfig`] when it opens or creates it, and may open every partition found on
//! disk at start ([`LogManager::open_all`], recovering them in parallel).
//!
//! Thread safety: `Send + Sync`; the map is behind a mutex held only to look up or insert, never while a log
//! recovers or does I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::checkpoint::sync_dir;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::names::{parse_partition_dir, partition_dir};

/// Kafka's default `log.retention.check.interval.ms`: five minutes.
pub const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Threads that close logs at shutdown (fsync-bound, so more than the cores).
pub const CLOSE_THREADS: usize = 16;

/// How often the maintenance task looks for logs whose `flush.ms` has passed.
pub const FLUSH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LogManager {
    dir: PathBuf,
    /// `<dir>/.lock`, held with an exclusive flock for the manager's life: two processes writing one data
    /// directory would corrupt it (a broker and `millrace pipeline run`, or two brokers).
    _lock: std::fs::File,
    logs: Mutex<HashMap<(String, i32), Arc<Log>>>,
    /// Flipped to `true` by `shutdown`; the maintenance task watches it.
    stopping: watch::Sender<bool>,
}

impl LogManager {
    /// Opens (creating if needed) a data directory. Partitions are opened by [`LogManager::open_partition`] or
    /// [`LogManager::open_all`]: storage does not know which topics exist or their settings.
    pub fn open(dir: &Path) -> Result<LogManager> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::DirectoryInUse(dir.display().to_string()))
            }
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
        Ok(LogManager {
            dir: dir.to_path_buf(),
            _lock: lock,
            logs: Mutex::new(HashMap::new()),
            stopping: watch::channel(false).0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition folders on disk, as (topic, partition), sorted.
    pub fn discover(&self) -> Result<Vec<(String, i32)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if !e.file_type()?.is_dir() {
                continue;
            }
            if let Some(tp) = parse_partition_dir(&e.file_name().to_string_lossy()) {
                out.push(tp);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens every partition found on disk for which `config_for` gives settings (folders it returns `None` for
    /// are left alone), recovering them in parallel. Returns the logs opened.
    pub fn open_all(
        &self,
        config_for: impl Fn(&str, i32) -> Option<LogConfig>,
    ) -> Result<Vec<Arc<Log>>> {
        let wanted = self
            .discover()?
            .into_iter()
            .filter_map(|(t, p)| config_for(&t, p).map(|c| (t, p, c)))
            .collect();
        self.open_partitions(wanted)
    }

    /// Opens (recovering) several partitions in parallel, on up to 8 threads per core (at most 32): recovery is
    /// CRC-bound on unclean shutdowns and fsync-bound otherwise, and partitions are independent. Returns the logs in the order asked;
    /// the first error, after every partition was tried.
    pub fn open_partitions(&self, parts: Vec<(String, i32, LogConfig)>) -> Result<Vec<Arc<Log>>> {
        // Recovery after a crash is CRC-bound on the data it validates, but each partition also waits on a few
        // fsyncs (the recovered tail, its checkpoints): more threads than cores keep the disk and the CPUs busy.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_mul(8)
            .clamp(1, 32)
            .min(parts.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Arc<Log>>>>> =
            Mutex::new((0..parts.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((topic, partition, config)) = parts.get(i) else {
                        break;
                    };
                    let r = self.open_partition(topic, *partition, config.clone());
                    results.lock()[i] = Some(r);
                });
            }
        });
        results
            .into_inner()
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(std::io::Error::other("partition was not opened").into()))
            })
            .collect()
    }

    /// Opens (recovering) an existing partition, or creates it empty. Returns the open log if it is open already.
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
        // Two racing opens of one partition: the first one in wins, the other's log is dropped unused.
        Ok(self.logs.lock().entry(key).or_insert(log).clone())
    }

    /// Creates a new, empty partition (a leftover folder of a deleted topic of the same name, not open, is
    /// removed first). Returns the open log if the partition is open already. See
    /// [`LogManager::create_partitions`], the faster way to create many.
    pub fn create_partition(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Arc<Log>> {
        let mut logs = self.create_partitions(topic, partition..partition + 1, config)?;
        logs.pop()
            .ok_or_else(|| std::io::Error::other("partition was not created").into())
    }

    /// Creates the new, empty partitions `partitions` of `topic`, all or none (a leftover folder of a deleted
    /// topic of the same name, not open, is removed first; a partition open already is returned as it is).
    ///
    /// Durable when it returns, at the cost of about one journal commit rather than two per partition: every
    /// folder is created without an fsync, then each new folder is fsynced (its segment's names: the file system
    /// answers all but the first from the one commit that the first one forced), then the data directory once
    /// (the folders' names), before the caller may write a registry that names them or acknowledge anything in
    /// them.
    ///
    /// If any partition cannot be created (a full disk, too many open files), the ones this call created are
    /// removed again, so a failed creation leaves no folder and no open file behind, and the error is returned.
    pub fn create_partitions(
        &self,
        topic: &str,
        partitions: std::ops::Range<i32>,
        config: LogConfig,
    ) -> Result<Vec<Arc<Log>>> {
        let mut logs = Vec::with_capacity(partitions.len());
        let mut created = Vec::new();
        let result = (|| {
            for p in partitions.clone() {
                let key = (topic.to_string(), p);
                if let Some(log) = self.logs.lock().get(&key) {
                    logs.push(log.clone());
                    continue;
                }
                let dir = partition_dir(&self.dir, topic, p);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                let log = Arc::new(Log::create_unsynced(&dir, topic, p, config.clone())?);
                created.push(p);
                logs.push(self.logs.lock().entry(key).or_insert(log).clone());
            }
            for &p in &created {
                sync_dir(&partition_dir(&self.dir, topic, p))?;
            }
            sync_dir(&self.dir)
        })();
        match result {
            Ok(()) => Ok(logs),
            Err(e) => {
                drop(logs);
                for p in created {
                    if let Err(undo) = self.remove_partition(topic, p) {
                        tracing::warn!(topic, partition = p, error = %undo, "could not remove a partition of a failed creation");
                    }
                }
                Err(e)
            }
        }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Log>> {
        self.logs
            .lock()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Deletes every partition of a topic: partitions `0..partitions` (the ones the caller knows of) and any other
    /// partition of the topic that is open or on disk. Holders of a deleted log get [`Error::Deleted`] on append.
    pub fn remove_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let mut doomed: Vec<i32> = (0..partitions).collect();
        doomed.extend(
            self.logs
                .lock()
                .keys()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p),
        );
        doomed.extend(
            self.discover()?
                .into_iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| p),
        );
        doomed.sort_unstable();
        doomed.dedup();
        for p in doomed {
            self.remove_partition(topic, p)?;
        }
        Ok(())
    }

    /// Deletes one partition: its open log (holders get [`Error::Deleted`] on append) or else its folder, if any.
    pub fn remove_partition(&self, topic: &str, partition: i32) -> Result<()> {
        let log = self.logs.lock().remove(&(topic.to_string(), partition));
        match log {
            Some(log) => log.delete(),
            None => match std::fs::remove_dir_all(partition_dir(&self.dir, topic, partition)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Every open log.
    pub fn all(&self) -> Vec<Arc<Log>> {
        self.logs.lock().values().cloned().collect()
    }

    /// One retention pass over every open log (see [`Log::apply_retention`]); returns the segments deleted.
    /// Errors are logged, not returned: one bad partition must not stop retention of the others.
    pub fn apply_retention(&self, now_ms: i64) -> usize {
        let mut deleted = 0;
        for log in self.all() {
            match log.apply_retention(now_ms) {
                Ok(n) => deleted += n,
                Err(Error::Deleted(_)) => {}
                Err(e) => {
                    tracing::warn!(topic = log.topic(), partition = log.partition(), error = %e, "retention failed")
                }
            }
        }
        deleted
    }

    /// fsyncs every log whose `flush.ms` (or [`crate::log::RECOVERY_FLUSH_MS`]) has passed since its oldest
    /// unflushed append, and writes the active recovery points that fsyncs have moved.
    pub fn flush_due(&self, now_ms: i64) {
        for log in self.all() {
            if let Err(e) = log.flush_if_due(now_ms) {
                tracing::warn!(topic = log.topic(), partition = log.partition(), error = %e, "flush failed");
            }
            if let Err(e) = log.write_recovery_point() {
                tracing::warn!(topic = log.topic(), partition = log.partition(), error = %e,
                    "writing the active recovery point failed");
            }
        }
    }

    /// Starts the background maintenance task on the current tokio runtime: retention every
    /// `retention_check_interval` (Kafka's `log.retention.check.interval.ms`, default
    /// [`DEFAULT_RETENTION_CHECK_INTERVAL`]) and the `flush.ms` policy every [`FLUSH_CHECK_INTERVAL`]. The work
    /// runs on the blocking pool. The task ends at [`LogManager::shutdown`] or when the manager is dropped.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        retention_check_interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let manager: Weak<LogManager> = Arc::downgrade(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut retention = tokio::time::interval(retention_check_interval);
            let mut flush = tokio::time::interval(FLUSH_CHECK_INTERVAL);
            retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick of an interval is immediate: retention waits one period, like Kafka's scheduler.
            retention.tick().await;
            loop {
                let retention_due = tokio::select! {
                    _ = stopping.wait_for(|s| *s) => return,
                    _ = retention.tick() => true,
                    _ = flush.tick() => false,
                };
                let Some(m) = manager.upgrade() else { return };
                let now = crate::log::now_ms();
                let _ = tokio::task::spawn_blocking(move || {
                    if retention_due {
                        m.apply_retention(now);
                    } else {
                        m.flush_due(now);
                    }
                })
                .await;
            }
        })
    }

    /// Stops the maintenance task, then flushes and cleanly closes every log; returns the first error after
    /// trying them all. Logs close in parallel on [`CLOSE_THREADS`] threads: a close is a handful of fsyncs of
    /// one partition's files, which wait on the disk, not the CPU, so with thousands of partitions a serial
    /// shutdown would take tens of seconds.
    pub fn shutdown(&self) -> Result<()> {
        self.stopping.send_replace(true);
        let logs = self.all();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..CLOSE_THREADS.min(logs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(log) = logs.get(i) else {
                        break;
                    };
                    if let Err(e) = log.close() {
                        tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "close failed");
                        first.lock().get_or_insert(e);
                    }
                });
            }
        });
        match first.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
