//! The topic registry: names, topic ids, partition logs and per-topic settings, persisted in `meta.toml` in the
//! data directory (written to a temporary file, fsynced, renamed, so a crash leaves the old or the new file).
//!
//! Invariants: a name maps to at most one [`Topic`]; `by_id` holds exactly the ids of the topics in `by_name`; a
//! `Topic` is immutable once published, and changes (partitions added, settings altered) publish a new `Arc`.
//! All changes are serialized by `write_lock` so that the file and the maps move together.
//!
//! Creating a topic (or adding partitions) is all or none: the partitions are created together (see
//! `LogManager::create_partitions`: durable before the registry names them, removed again if any one fails), and
//! if the registry then cannot be written they are removed too, so a failed CreateTopics leaves no folder, no
//! open file and no entry behind. A request for more partitions than there are free file descriptors is refused
//! up front (see [`crate::descriptors`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use millrace_protocol::Uuid;
use millrace_storage::{Log, LogConfig, LogManager};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::{validate_topic_setting, BrokerConfig};
use crate::error::{Error, Result};
use crate::log_config::log_config;

/// One topic.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Arc<Log>>,
    /// Topic-level overrides, by Kafka's topic setting names.
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<Log>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MetaFile {
    cluster_id: String,
    /// The first producer id not yet handed out in a block (see [`Topics::next_producer_id`]).
    producer_id_block_end: i64,
    #[serde(default)]
    broker_configs: BTreeMap<String, String>,
    #[serde(default)]
    topics: BTreeMap<String, TopicRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicRecord {
    id: String,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

const META_FILE: &str = "meta.toml";
/// Producer ids are handed out from blocks reserved in the meta file, so that an id is never reused after a crash
/// without writing the file on every InitProducerId.
const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct Topics {
    dir: PathBuf,
    logs: Arc<LogManager>,
    by_name: DashMap<String, Arc<Topic>>,
    by_id: DashMap<Uuid, String>,
    cluster_id: String,
    producer_ids: Mutex<(i64, i64)>, // (next, block end)
    write_lock: Mutex<()>,
}

/// Kafka's rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTopic(name.to_string()))
    }
}

pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

fn hex(id: &Uuid) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Uuid> {
    if s.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, out) in id.iter_mut().enumerate() {
        *out = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// A random version-4 UUID from the OS's entropy (topic ids, the cluster id).
pub fn random_uuid() -> Uuid {
    let mut id = [0u8; 16];
    // /dev/urandom never blocks after boot; fall back to time-derived bits only if it is missing.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        id.copy_from_slice(&t.to_le_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Kafka prints cluster ids as URL-safe base64 of 16 bytes, without padding.
fn base64_id(id: &Uuid) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut bits = 0u32;
    let mut n = 0;
    for &b in id {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ABC[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ABC[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

impl Topics {
    /// Loads the registry and opens every topic's partition logs (recovering them).
    pub fn open(dir: &Path, logs: Arc<LogManager>, config: &BrokerConfig) -> Result<Topics> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(META_FILE);
        let meta: MetaFile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetaFile::default(),
            Err(e) => return Err(e.into()),
        };
        let cluster_id = match config.explicit("cluster.id") {
            Some(id) => id,
            None if !meta.cluster_id.is_empty() => meta.cluster_id.clone(),
            None => base64_id(&random_uuid()),
        };
        config.restore_dynamic(meta.broker_configs.clone());
        let topics = Topics {
            dir: dir.to_path_buf(),
            logs,
            by_name: DashMap::new(),
            by_id: DashMap::new(),
            cluster_id,
            // Skip to a fresh block: ids of the block in use at a crash are never handed out again.
            producer_ids: Mutex::new((meta.producer_id_block_end, meta.producer_id_block_end)),
            write_lock: Mutex::new(()),
        };
        // Every partition of every topic is recovered in one parallel pass: after a crash, recovery is CRC- and
        // fsync-bound per partition, and one partition after another would add those up.
        let wanted: Vec<(String, i32, LogConfig)> = meta
            .topics
            .iter()
            .flat_map(|(name, rec)| {
                let cfg = log_config(config, &rec.configs);
                (0..rec.partitions).map(move |p| (name.clone(), p, cfg.clone()))
            })
            .collect();
        let mut opened = topics.logs.open_partitions(wanted)?.into_iter();
        for (name, rec) in meta.topics {
            let id =
                unhex(&rec.id).ok_or_else(|| Error::Config(format!("bad topic id for {name}")))?;
            let partitions: Vec<_> = opened
                .by_ref()
                .take(rec.partitions.max(0) as usize)
                .collect();
            topics.by_id.insert(id, name.clone());
            let internal = is_internal(&name);
            topics.by_name.insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    id,
                    partitions,
                    configs: rec.configs,
                    internal,
                }),
            );
        }
        topics.persist(config)?;
        Ok(topics)
    }

    /// Applies the flush policy to every log (see [`LogManager::flush_due`]).
    pub fn flush_due(&self, now_ms: i64) {
        self.logs.flush_due(now_ms);
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name.get(name).map(|t| t.value().clone())
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        let name = self.by_id.get(id)?.value().clone();
        self.get(&name)
    }

    /// All topics, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.by_name.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn persist(&self, config: &BrokerConfig) -> Result<()> {
        let block_end = self.producer_ids.lock().1;
        self.persist_with(config, block_end)
    }

    fn persist_with(&self, config: &BrokerConfig, block_end: i64) -> Result<()> {
        let meta = MetaFile {
            cluster_id: self.cluster_id.clone(),
            producer_id_block_end: block_end,
            broker_configs: config.dynamic_values(),
            topics: self
                .by_name
                .iter()
                .map(|e| {
                    let t = e.value();
                    (
                        t.name.clone(),
                        TopicRecord {
                            id: hex(&t.id),
                            partitions: t.partitions.len() as i32,
                            configs: t.configs.clone(),
                        },
                    )
                })
                .collect(),
        };
        let text = toml::to_string(&meta).map_err(|e| Error::Config(e.to_string()))?;
        write_atomically(&self.dir.join(META_FILE), text.as_bytes())
    }

    /// Validates a creation request without changing anything.
    pub fn check_create(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_topic_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        if partitions <= 0 {
            return Err(Error::InvalidPartitions(format!(
                "number of partitions must be larger than 0, got {partitions}"
            )));
        }
        if partitions > 100_000 {
            return Err(Error::InvalidPartitions(format!(
                "{partitions} partitions is more than this broker allows"
            )));
        }
        for (k, v) in configs {
            validate_topic_setting(k, v)?;
        }
        crate::descriptors::check_room(partitions)
    }

    pub fn create(
        &self,
        config: &BrokerConfig,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>> {
        let _guard = self.write_lock.lock();
        self.check_create(name, partitions, &configs)?;
        let logs = self
            .logs
            .create_partitions(name, 0..partitions, log_config(config, &configs))
            .inspect_err(|e| {
                tracing::warn!(topic = name, partitions, error = %e, "creating a topic failed; nothing was kept")
            })?;
        let mut id = random_uuid();
        while self.by_id.contains_key(&id) {
            id = random_uuid();
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id,
            partitions: logs,
            configs,
            internal: is_internal(name),
        });
        self.by_id.insert(id, name.to_string());
        self.by_name.insert(name.to_string(), topic.clone());
        if let Err(e) = self.persist(config) {
            // Forget the topic again. (Should the new file have been renamed into place before the error, a
            // restart finds the topic named and recreates its partitions empty, which is all they were.)
            self.by_name.remove(name);
            self.by_id.remove(&id);
            drop(topic);
            self.remove_new_partitions(name, 0..partitions);
            tracing::warn!(topic = name, error = %e, "writing the registry failed; the topic was not created");
            return Err(e);
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    pub fn delete(&self, config: &BrokerConfig, name: &str) -> Result<Arc<Topic>> {
        let _guard = self.write_lock.lock();
        let (_, topic) = self
            .by_name
            .remove(name)
            .ok_or(Error::UnknownTopicOrPartition)?;
        self.by_id.remove(&topic.id);
        // The registry forgets the topic first, so a crash part-way leaves orphan folders, never a topic
        // without its data.
        self.persist(config)?;
        self.logs
            .remove_topic(name, topic.partitions.len() as i32)?;
        tracing::info!(topic = name, "deleted topic");
        Ok(topic)
    }

    pub fn add_partitions(
        &self,
        config: &BrokerConfig,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<()> {
        let _guard = self.write_lock.lock();
        let old = self.get(name).ok_or(Error::UnknownTopicOrPartition)?;
        let current = old.partitions.len() as i32;
        if total <= current {
            return Err(Error::InvalidPartitions(format!(
                "topic currently has {current} partitions, which is higher than or equal to the requested {total}"
            )));
        }
        if total > 100_000 {
            return Err(Error::InvalidPartitions(format!(
                "{total} partitions is more than this broker allows"
            )));
        }
        crate::descriptors::check_room(total - current)?;
        if validate_only {
            return Ok(());
        }
        let mut partitions = old.partitions.clone();
        partitions.extend(self.logs.create_partitions(
            name,
            current..total,
            log_config(config, &old.configs),
        )?);
        self.publish(Topic {
            name: old.name.clone(),
            id: old.id,
            partitions,
            configs: old.configs.clone(),
            internal: old.internal,
        });
        if let Err(e) = self.persist(config) {
            self.by_name.insert(old.name.clone(), old);
            self.remove_new_partitions(name, current..total);
            return Err(e);
        }
        Ok(())
    }

    /// Undoes a creation whose registry write failed (best effort: leftovers are removed by the next creation of
    /// the same partitions anyway).
    fn remove_new_partitions(&self, name: &str, partitions: std::ops::Range<i32>) {
        for p in partitions {
            if let Err(e) = self.logs.remove_partition(name, p) {
                tracing::warn!(topic = name, partition = p, error = %e, "could not remove a partition");
            }
        }
    }

    /// Replaces a topic's overrides (after validation) and applies them to its logs.
    pub fn set_configs(
        &self,
        config: &BrokerConfig,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock();
        let old = self.get(name).ok_or(Error::UnknownTopicOrPartition)?;
        for (k, v) in &configs {
            validate_topic_setting(k, v)?;
        }
        let cfg = log_config(config, &configs);
        for log in &old.partitions {
            log.set_config(cfg.clone());
        }
        self.publish(Topic {
            name: old.name.clone(),
            id: old.id,
            partitions: old.partitions.clone(),
            configs,
            internal: old.internal,
        });
        self.persist(config)
    }

    /// Re-applies broker-level defaults to every log (after a dynamic broker setting changed).
    pub fn reapply_broker_config(&self, config: &BrokerConfig) -> Result<()> {
        let _guard = self.write_lock.lock();
        for t in self.all() {
            let cfg = log_config(config, &t.configs);
            for log in &t.partitions {
                log.set_config(cfg.clone());
            }
        }
        self.persist(config)
    }

    fn publish(&self, topic: Topic) {
        self.by_name.insert(topic.name.clone(), Arc::new(topic));
    }

    /// Hands out a producer id, reserving a new block in the meta file when the current one is used up.
    pub fn next_producer_id(&self, config: &BrokerConfig) -> Result<i64> {
        loop {
            {
                let mut ids = self.producer_ids.lock();
                if ids.0 < ids.1 {
                    let id = ids.0;
                    ids.0 += 1;
                    return Ok(id);
                }
            }
            // The new block end is written to the file before the fast path above may hand out any id of it.
            let _guard = self.write_lock.lock();
            let next = self.producer_ids.lock().0;
            let new_end = next + PRODUCER_ID_BLOCK;
            self.persist_with(config, new_end)?;
            let mut ids = self.producer_ids.lock();
            ids.1 = ids.1.max(new_end);
        }
    }
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        for bad in ["", ".", "..", "a b", "x/y", &"a".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    fn open(dir: &Path) -> (Topics, BrokerConfig) {
        let config = BrokerConfig::load(None, Vec::new(), Vec::new()).unwrap();
        let logs = Arc::new(LogManager::open(dir).unwrap());
        (Topics::open(dir, logs, &config).unwrap(), config)
    }

    fn folders(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != META_FILE && n != ".lock")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_creation_that_fails_part_way_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (topics, config) = open(dir.path());
        // Partition 4's folder cannot be made: a file has its name.
        std::fs::write(dir.path().join("t-4"), b"in the way").unwrap();
        let err = topics
            .create(&config, "t", 10, BTreeMap::new())
            .unwrap_err();
        assert_eq!(
            err.code(),
            millrace_protocol::error_code::KAFKA_STORAGE_ERROR
        );
        assert!(topics.get("t").is_none());
        assert_eq!(folders(dir.path()), ["t-4"]);
        for p in 0..10 {
            assert!(topics.logs.get("t", p).is_none());
        }
        // The registry never named it, and the same creation works once the obstacle is gone.
        drop(topics);
        std::fs::remove_file(dir.path().join("t-4")).unwrap();
        let (topics, config) = open(dir.path());
        assert!(topics.get("t").is_none());
        assert_eq!(
            topics
                .create(&config, "t", 10, BTreeMap::new())
                .unwrap()
                .partitions
                .len(),
            10
        );
        // Adding partitions is all or none too.
        std::fs::write(dir.path().join("t-12"), b"in the way").unwrap();
        assert!(topics.add_partitions(&config, "t", 15, false).is_err());
        assert_eq!(topics.get("t").unwrap().partitions.len(), 10);
        assert!(topics.logs.get("t", 10).is_none());
        assert!(!dir.path().join("t-10").exists());
        std::fs::remove_file(dir.path().join("t-12")).unwrap();
        topics.add_partitions(&config, "t", 15, false).unwrap();
        assert_eq!(folders(dir.path()).len(), 15);
    }

    #[test]
    fn more_partitions_than_free_descriptors_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let (topics, config) = open(dir.path());
        let (limit, _) = crate::descriptors::usage().unwrap();
        let too_many = i32::try_from(limit).unwrap_or(i32::MAX).min(99_999);
        for err in [
            topics
                .check_create("big", too_many, &BTreeMap::new())
                .unwrap_err(),
            topics
                .create(&config, "big", too_many, BTreeMap::new())
                .unwrap_err(),
        ] {
            assert_eq!(
                err.code(),
                millrace_protocol::error_code::INVALID_PARTITIONS
            );
            assert!(err.to_string().contains("open-file limit"), "{err}");
        }
        assert!(folders(dir.path()).is_empty());
    }

    #[test]
    fn uuid_hex_round_trip() {
        let id = random_uuid();
        assert_eq!(unhex(&hex(&id)), Some(id));
        assert_eq!(base64_id(&[0u8; 16]).len(), 22);
    }
}
