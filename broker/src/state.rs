//! The broker's shared state: settings, the topic registry over the storage layer, and who we say we are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use millrace_storage::LogManager;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::error::Result;
use crate::groups::{Coordinator, GroupConfig, OffsetStore, OFFSETS_TOPIC};
use crate::shutdown::Shutdown;
use crate::topics::{Topic, Topics};

/// Invariant: `topics` owns every open log of `logs`; handlers reach logs only through `topics`.
pub struct Broker {
    pub config: BrokerConfig,
    pub groups: Coordinator,
    pub logs: Arc<LogManager>,
    pub topics: Topics,
    pub node_id: i32,
    /// The host and port clients are told to connect to (Metadata, FindCoordinator, DescribeCluster).
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
}

impl Broker {
    /// Opens (and recovers) the data directory.
    pub fn open(
        config: BrokerConfig,
        advertised_host: String,
        advertised_port: i32,
    ) -> Result<Arc<Broker>> {
        let data_dir = PathBuf::from(config.get("data.dir"));
        std::fs::create_dir_all(&data_dir)?;
        let logs = Arc::new(LogManager::open(&data_dir)?);
        let topics = Topics::open(&data_dir, logs.clone(), &config)?;
        let node_id = config.get_i64("node.id") as i32;
        let groups = open_coordinator(&config, &topics)?;
        Ok(Arc::new(Broker {
            config,
            groups,
            logs,
            topics,
            node_id,
            advertised_host,
            advertised_port,
            data_dir,
        }))
    }

    /// Looks a topic up, creating it with the broker's defaults when `auto.create.topics.enable` allows it.
    /// Internal topics are never auto-created.
    pub fn topic_or_create(&self, name: &str, allow_create: bool) -> Result<Option<Arc<Topic>>> {
        if let Some(t) = self.topics.get(name) {
            return Ok(Some(t));
        }
        if !allow_create
            || !self.config.get_bool("auto.create.topics.enable")
            || crate::topics::is_internal(name)
        {
            return Ok(None);
        }
        let partitions = self.config.get_i64("num.partitions").clamp(1, 100_000) as i32;
        match self
            .topics
            .create(&self.config, name, partitions, Default::default())
        {
            Ok(t) => Ok(Some(t)),
            // Another connection created it first.
            Err(crate::Error::TopicExists(_)) => Ok(self.topics.get(name)),
            Err(e) => Err(e),
        }
    }

    /// Starts the background work: group timers (50 ms), committed-offset expiry, log compaction,
    /// retention and the flush policy, each on its own period, all stopping at shutdown.
    pub fn start_background(self: &Arc<Self>, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        let period = |name: &str| {
            Duration::from_millis(self.config.get_i64(name).clamp(10, 86_400_000) as u64)
        };
        let retention = self
            .config
            .get_i64("offsets.retention.minutes")
            .max(1)
            .saturating_mul(60_000);
        let b = self.clone();
        let groups = every(
            shutdown.clone_receiver(),
            Duration::from_millis(50),
            move || {
                b.groups.tick();
                async {}
            },
        );
        let b = self.clone();
        let expiry = every(
            shutdown.clone_receiver(),
            period("offsets.retention.check.interval.ms"),
            move || {
                let b = b.clone();
                async move {
                    b.groups.expire_offsets(now_ms(), retention).await;
                }
            },
        );
        let b = self.clone();
        let cleaner = every(
            shutdown.clone_receiver(),
            period("log.cleaner.backoff.ms"),
            move || {
                let b = b.clone();
                async move {
                    let _ = tokio::task::spawn_blocking(move || b.compact_logs()).await;
                }
            },
        );
        let b = self.clone();
        let retention_task = every(
            shutdown.clone_receiver(),
            period("log.retention.check.interval.ms"),
            move || {
                let b = b.clone();
                async move {
                    let _ = tokio::task::spawn_blocking(move || b.apply_retention()).await;
                }
            },
        );
        let b = self.clone();
        // flush.ms is checked on appends; this catches logs that went quiet, and fsyncs whatever has waited
        // RECOVERY_FLUSH_MS, which moves the active recovery points so that a crash costs little recovery.
        let flush_task = every(
            shutdown,
            millrace_storage::manager::FLUSH_CHECK_INTERVAL,
            move || {
                let b = b.clone();
                async move {
                    let _ = tokio::task::spawn_blocking(move || b.topics.flush_due(now_ms())).await;
                }
            },
        );
        vec![groups, expiry, cleaner, retention_task, flush_task]
    }

    fn apply_retention(&self) {
        let now = now_ms();
        for t in self.topics.all() {
            for log in &t.partitions {
                if let Err(e) = log.apply_retention(now) {
                    tracing::warn!(topic = %t.name, error = %e, "retention failed");
                }
            }
        }
    }

    /// One compaction pass over every compacted log (they skip themselves when not compacted).
    fn compact_logs(&self) {
        let now = now_ms();
        for t in self.topics.all() {
            for log in &t.partitions {
                if let Err(e) = log.compact(now) {
                    tracing::warn!(topic = %t.name, error = %e, "compaction failed");
                }
            }
        }
    }

    /// Flushes every log and marks them cleanly closed.
    pub fn close(&self) -> Result<()> {
        self.logs.shutdown()?;
        Ok(())
    }
}

/// Runs `work` every `period` (first after one period) until shutdown; a slow run delays the next, never
/// overlaps it.
fn every<F, Fut>(mut shutdown: Shutdown, period: Duration, mut work: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.tick().await;
        loop {
            tokio::select! {
                _ = t.tick() => work().await,
                _ = shutdown.recv() => return,
            }
        }
    })
}

/// Creates the internal offsets topic if needed and replays it.
fn open_coordinator(config: &BrokerConfig, topics: &Topics) -> Result<Coordinator> {
    let topic = match topics.get(OFFSETS_TOPIC) {
        Some(t) => t,
        None => {
            let partitions = config
                .get_i64("offsets.topic.num.partitions")
                .clamp(1, 1000) as i32;
            // Compaction is what bounds this topic in Kafka; until millrace compacts, it is kept whole.
            let configs = [
                ("cleanup.policy", "compact"),
                ("retention.ms", "-1"),
                ("segment.bytes", "104857600"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            topics.create(config, OFFSETS_TOPIC, partitions, configs)?
        }
    };
    let offsets = OffsetStore::load(topic.partitions.clone())?;
    let ms = |name: &str| Duration::from_millis(config.get_i64(name).max(0) as u64);
    Ok(Coordinator::new(
        GroupConfig {
            min_session: ms("group.min.session.timeout.ms"),
            max_session: ms("group.max.session.timeout.ms"),
            initial_rebalance_delay: ms("group.initial.rebalance.delay.ms"),
        },
        offsets,
    ))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
