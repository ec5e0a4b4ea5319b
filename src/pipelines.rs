//! Pipelines in the broker process: the processor's [`Host`] over the broker's topic registry, and loading
//! pipeline files for `millrace serve --pipeline`.

use std::collections::BTreeMap;
use std::sync::Arc;

use millrace_broker::Broker;
use millrace_processor::{Error, Host, Result};
use millrace_storage::Log;

/// Prefix of the internal one-partition topics holding pipeline checkpoints (internal: clients cannot write
/// them).
pub const CHECKPOINT_TOPIC_PREFIX: &str = "__pipeline.";

pub struct BrokerHost {
    pub broker: Arc<Broker>,
}

fn host_err(e: millrace_broker::Error) -> Error {
    Error::Host(e.to_string())
}

impl BrokerHost {
    fn get_or_create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Vec<Arc<Log>>> {
        if let Some(t) = self.broker.topics.get(name) {
            return Ok(t.partitions.clone());
        }
        match self
            .broker
            .topics
            .create(&self.broker.config, name, partitions, configs)
        {
            Ok(t) => Ok(t.partitions.clone()),
            Err(millrace_broker::Error::TopicExists(_)) => self
                .broker
                .topics
                .get(name)
                .map(|t| t.partitions.clone())
                .ok_or_else(|| Error::Host(format!("topic {name} vanished while being created"))),
            Err(e) => Err(host_err(e)),
        }
    }
}

impl Host for BrokerHost {
    fn topic(&self, name: &str, partitions: Option<i32>) -> Result<Vec<Arc<Log>>> {
        if millrace_broker::topics::is_internal(name) {
            return Err(Error::Host(format!(
                "topic {name} is internal: pipelines cannot read or write it"
            )));
        }
        let default = self
            .broker
            .config
            .get_i64("num.partitions")
            .clamp(1, 100_000) as i32;
        let logs = self.get_or_create(name, partitions.unwrap_or(default), BTreeMap::new())?;
        if let Some(p) = partitions {
            if logs.len() != p as usize {
                tracing::warn!(
                    topic = name,
                    existing = logs.len(),
                    asked = p,
                    "topic exists with another partition count; using it as it is"
                );
            }
        }
        Ok(logs)
    }

    fn checkpoint_log(&self, pipeline: &str) -> Result<Arc<Log>> {
        let name = format!("{CHECKPOINT_TOPIC_PREFIX}{pipeline}");
        // One record per checkpoint, which may carry a whole state snapshot: allow large batches. Older
        // checkpoints are removed with DeleteRecords after every commit, so time retention is not needed.
        let configs = [
            ("max.message.bytes", "1073741824"),
            ("segment.bytes", "67108864"),
            ("retention.ms", "-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let logs = self.get_or_create(&name, 1, configs)?;
        logs.into_iter()
            .next()
            .ok_or_else(|| Error::Host(format!("checkpoint topic {name} has no partition")))
    }

    fn topic_names(&self) -> Result<Vec<String>> {
        Ok(self
            .broker
            .topics
            .all()
            .into_iter()
            .map(|t| t.name.clone())
            .filter(|n| !millrace_broker::topics::is_internal(n))
            .collect())
    }

    fn state_dir(&self, pipeline: &str) -> Result<std::path::PathBuf> {
        Ok(millrace_processor::keyed_state::state_dir(
            &self.broker.data_dir,
            pipeline,
        ))
    }

    fn new_producer_id(&self) -> Result<i64> {
        self.broker
            .topics
            .next_producer_id(&self.broker.config)
            .map_err(host_err)
    }
}

/// A pipeline kept running: when it fails (an output topic deleted, a disk error), it is started again from its
/// last checkpoint after a backoff that doubles from 1 s to 60 s, and resets once a run has lasted a minute.
/// Exactly-once holds across these restarts as across a crash.
pub struct Supervised {
    name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

const POLL: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

impl Supervised {
    pub fn new(
        job: millrace_processor::Job,
        host: Arc<dyn Host>,
        rt: tokio::runtime::Handle,
        first: millrace_processor::RunningPipeline,
    ) -> std::io::Result<Supervised> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = job.name().to_string();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("supervise-{name}"))
            .spawn(move || supervise(job, host, rt, first, &flag))?;
        Ok(Supervised { name, stop, thread })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the pipeline (final checkpoint) and its supervisor.
    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.thread.join();
    }
}

fn supervise(
    job: millrace_processor::Job,
    host: Arc<dyn Host>,
    rt: tokio::runtime::Handle,
    first: millrace_processor::RunningPipeline,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let name = job.name().to_string();
    let mut running = Some(first);
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        if let Some(p) = running.take() {
            let started = Instant::now();
            loop {
                if stop.load(Ordering::Acquire) {
                    if let Err(e) = p.stop() {
                        tracing::error!(pipeline = %name, error = %e, "pipeline stopped with an error");
                    }
                    return;
                }
                if p.error().is_some() {
                    let e = p.stop().err().map(|e| e.to_string()).unwrap_or_default();
                    if started.elapsed() >= MAX_BACKOFF {
                        backoff = std::time::Duration::from_secs(1);
                    }
                    tracing::error!(pipeline = %name, error = %e, retry_in = ?backoff, "pipeline failed");
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(POLL);
        }
        match millrace_processor::start(&job, host.clone(), rt.clone()) {
            Ok(p) => {
                tracing::info!(pipeline = %name, "pipeline restarted");
                running = Some(p);
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %e, retry_in = ?backoff, "pipeline restart failed");
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
