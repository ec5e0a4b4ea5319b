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

    fn new_producer_id(&self) -> Result<i64> {
        self.broker
            .topics
            .next_producer_id(&self.broker.config)
            .map_err(host_err)
    }
}
