//! Committed offsets, kept in memory and made durable as records in the internal topic `__consumer_offsets`
//! (partition = hash of the group id), written with acks=all durability and replayed on start.
//!
//! Record format: key = Kafka's OffsetCommitKey, version 1 (version i16, group and topic as length-prefixed
//! strings, partition i32), so any group id or topic name round-trips; value (ours) = offset (i64), leader
//! epoch (i32), commit time (i64), metadata flag and bytes, big-endian; a null value is a deletion.
//!
//! Keys written before that were `o` 0x00 group 0x00 topic 0x00 partition (decimal), which a group id holding
//! a NUL broke. They are still read; the first write of such an entry also writes a tombstone for its old key,
//! so that compaction cannot bring an old value back after a newer deletion.
//!
//! Invariant: the in-memory map equals the replay of the topic's records in offset order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use millrace_protocol::records::{
    BatchBuilder, BatchHeader, BatchIter, RecordIter, BATCH_HEADER_LEN,
};
use millrace_storage::Log;
use parking_lot::Mutex;

use crate::error::{Error, Result};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

type GroupOffsets = BTreeMap<(String, i32), Committed>;

pub struct OffsetStore {
    logs: Vec<Arc<Log>>,
    map: Mutex<HashMap<String, GroupOffsets>>,
    /// Entries whose latest record has a legacy key: (group, topic, partition).
    legacy: Mutex<std::collections::HashSet<(String, String, i32)>>,
}

/// Offsets applied by [`OffsetStore::apply`], on their way to disk.
pub struct Durable {
    log: Arc<Log>,
    last: i64,
}

impl Durable {
    /// Resolves once the records are fsynced.
    pub async fn wait(self) -> Result<()> {
        self.log.wait_durable(self.last).await?;
        Ok(())
    }
}

/// Kafka's partitioning of groups over the offsets topic: the Java String hash, made non-negative.
pub fn partition_for(group: &str, partitions: usize) -> usize {
    let mut h: i32 = 0;
    for c in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(c));
    }
    (h & 0x7fff_ffff) as usize % partitions.max(1)
}

/// Kafka's OffsetCommitKey version 1; None when a string is longer than a protocol string can be (the
/// wire never carries one).
fn key(group: &str, topic: &str, partition: i32) -> Option<Vec<u8>> {
    let (g, t) = (group.as_bytes(), topic.as_bytes());
    let mut v = BytesMut::with_capacity(10 + g.len() + t.len());
    v.put_i16(1);
    v.put_i16(i16::try_from(g.len()).ok()?);
    v.put_slice(g);
    v.put_i16(i16::try_from(t.len()).ok()?);
    v.put_slice(t);
    v.put_i32(partition);
    Some(v.to_vec())
}

fn legacy_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    format!("o\0{group}\0{topic}\0{partition}").into_bytes()
}

/// (group, topic, partition, written in the legacy format).
fn parse_key(k: &[u8]) -> Option<(String, String, i32, bool)> {
    if let [0, 0 | 1, rest @ ..] = k {
        let mut r = rest;
        let mut string = || -> Option<String> {
            let n = usize::try_from(i16::from_be_bytes(r.get(..2)?.try_into().ok()?)).ok()?;
            let s = std::str::from_utf8(r.get(2..2 + n)?).ok()?.to_string();
            r = &r[2 + n..];
            Some(s)
        };
        let group = string()?;
        let topic = string()?;
        let partition = i32::from_be_bytes(r.get(..4)?.try_into().ok()?);
        return (r.len() == 4).then_some((group, topic, partition, false));
    }
    parse_legacy_key(k).map(|(g, t, p)| (g, t, p, true))
}

fn parse_legacy_key(k: &[u8]) -> Option<(String, String, i32)> {
    let s = std::str::from_utf8(k).ok()?;
    let mut parts = s.split('\0');
    if parts.next()? != "o" {
        return None;
    }
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let partition = parts.next()?.parse().ok()?;
    Some((group, topic, partition))
}

fn value(c: &Committed) -> Vec<u8> {
    let mut v = BytesMut::with_capacity(20 + c.metadata.as_ref().map_or(0, String::len));
    v.put_i64(c.offset);
    v.put_i32(c.leader_epoch);
    v.put_i64(c.commit_ms);
    if let Some(m) = &c.metadata {
        v.put_u8(1);
        v.put_slice(m.as_bytes());
    } else {
        v.put_u8(0);
    }
    v.to_vec()
}

fn parse_value(v: &[u8]) -> Option<Committed> {
    let offset = i64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let leader_epoch = i32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
    let commit_ms = i64::from_be_bytes(v.get(12..20)?.try_into().ok()?);
    let metadata = match v.get(20)? {
        0 => None,
        _ => Some(String::from_utf8_lossy(v.get(21..)?).to_string()),
    };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_ms,
    })
}

impl OffsetStore {
    /// Replays every partition of the offsets topic.
    pub fn load(logs: Vec<Arc<Log>>) -> Result<OffsetStore> {
        let mut map: HashMap<String, GroupOffsets> = HashMap::new();
        let mut legacy = std::collections::HashSet::new();
        for log in &logs {
            let mut offset = log.log_start_offset();
            while offset < log.log_end_offset() {
                let slice = log.read(offset, 8 << 20, true)?;
                if slice.records.is_empty() {
                    break;
                }
                for item in BatchIter::new(&slice.records) {
                    let (h, bytes): (BatchHeader, &[u8]) = item?;
                    offset = h.last_offset() + 1;
                    let start = bytes.as_ptr() as usize - slice.records.as_ptr() as usize;
                    let body = slice
                        .records
                        .slice(start + BATCH_HEADER_LEN..start + bytes.len());
                    for rec in
                        RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count)
                    {
                        let rec = rec?;
                        let Some((group, topic, partition, old)) =
                            rec.key.as_deref().and_then(parse_key)
                        else {
                            continue;
                        };
                        let id = (group.clone(), topic.clone(), partition);
                        if old {
                            legacy.insert(id);
                        } else {
                            legacy.remove(&id);
                        }
                        let entry = map.entry(group).or_default();
                        match rec.value.as_deref().and_then(parse_value) {
                            Some(c) => {
                                entry.insert((topic, partition), c);
                            }
                            None => {
                                entry.remove(&(topic, partition));
                            }
                        }
                    }
                }
            }
        }
        map.retain(|_, v| !v.is_empty());
        Ok(OffsetStore {
            logs,
            map: Mutex::new(map),
            legacy: Mutex::new(legacy),
        })
    }

    fn log_for(&self, group: &str) -> Result<&Arc<Log>> {
        self.logs
            .get(partition_for(group, self.logs.len()))
            .ok_or_else(|| Error::Config("the offsets topic has no partitions".into()))
    }

    /// Writes commits (or, with `None`, deletions) durably, then applies them to the in-memory view.
    pub async fn write(
        &self,
        group: &str,
        entries: Vec<((String, i32), Option<Committed>)>,
        now_ms: i64,
    ) -> Result<()> {
        match self.apply(group, entries, now_ms)? {
            Some(d) => d.wait().await,
            None => Ok(()),
        }
    }

    /// Appends commits (or, with `None`, deletions) to the offsets topic and applies them to the in-memory
    /// view at once, so that a request pipelined behind them sees them; the returned [`Durable`] resolves
    /// when they are fsynced. The effect does not depend on anyone awaiting it.
    pub fn apply(
        &self,
        group: &str,
        entries: Vec<((String, i32), Option<Committed>)>,
        now_ms: i64,
    ) -> Result<Option<Durable>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let mut b = BatchBuilder::new(now_ms);
        let mut retired = Vec::new();
        {
            let legacy = self.legacy.lock();
            for ((topic, partition), c) in &entries {
                let id = (group.to_string(), topic.clone(), *partition);
                if legacy.contains(&id) {
                    // Written before the old key's tombstone, which compaction keeps until the new record.
                    b.push(
                        now_ms,
                        Some(&legacy_key(group, topic, *partition)),
                        None,
                        &[],
                    );
                    retired.push(id);
                }
                let Some(k) = key(group, topic, *partition) else {
                    return Err(Error::Config(format!(
                        "group id or topic longer than {} bytes",
                        i16::MAX
                    )));
                };
                let v = c.as_ref().map(value);
                b.push(now_ms, Some(&k), v.as_deref(), &[]);
            }
        }
        let batch: Bytes = b.finish();
        let log = self.log_for(group)?.clone();
        let info = log.append_slice(&batch, now_ms)?;
        {
            let mut legacy = self.legacy.lock();
            for id in retired {
                legacy.remove(&id);
            }
        }
        let mut map = self.map.lock();
        let g = map.entry(group.to_string()).or_default();
        for (k, c) in entries {
            match c {
                Some(c) => {
                    g.insert(k, c);
                }
                None => {
                    g.remove(&k);
                }
            }
        }
        if g.is_empty() {
            map.remove(group);
        }
        Ok(Some(Durable {
            log,
            last: info.last_offset,
        }))
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.map
            .lock()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Every committed offset of a group.
    pub fn all(&self, group: &str) -> Vec<((String, i32), Committed)> {
        self.map
            .lock()
            .get(group)
            .map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        self.map.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        for g in ["g", "bar\0group\nwith-odd-bytes", "", "\u{1F600}\0\0"] {
            let k = key(g, "t.x", 7).unwrap();
            assert_eq!(parse_key(&k), Some((g.into(), "t.x".into(), 7, false)));
            for cut in 0..k.len() {
                assert_eq!(parse_key(&k[..cut]), None);
            }
        }
        // Kafka's own bytes for OffsetCommitKey v1 ("g", "t", 7).
        assert_eq!(
            key("g", "t", 7).unwrap(),
            [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]
        );
        // Keys written by earlier versions are still read.
        assert_eq!(
            parse_key(&legacy_key("g", "t.x", 7)),
            Some(("g".into(), "t.x".into(), 7, true))
        );
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: Some("m".into()),
            commit_ms: 9,
        };
        assert_eq!(parse_value(&value(&c)), Some(c));
        let c = Committed {
            offset: -1,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 0,
        };
        assert_eq!(parse_value(&value(&c)), Some(c));
        assert_eq!(parse_value(&[1, 2]), None);
    }

    fn store() -> (
        tempfile::TempDir,
        Arc<millrace_storage::LogManager>,
        Arc<Log>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(millrace_storage::LogManager::open(dir.path()).unwrap());
        let log = m
            .create_partition(OFFSETS_TOPIC, 0, millrace_storage::LogConfig::default())
            .unwrap();
        (dir, m, log)
    }

    fn committed(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 1,
        }
    }

    #[tokio::test]
    async fn odd_group_ids_survive_a_reload() {
        let (_dir, _m, log) = store();
        let s = OffsetStore::load(vec![log.clone()]).unwrap();
        let odd = "bar\0group\nwith-odd-bytes";
        s.write(odd, vec![(("t".into(), 0), Some(committed(5)))], 1)
            .await
            .unwrap();
        s.write(
            "bar",
            vec![(("group\nwith-odd-bytes\0t".into(), 0), Some(committed(9)))],
            1,
        )
        .await
        .unwrap();
        let s = OffsetStore::load(vec![log]).unwrap();
        assert_eq!(s.get(odd, "t", 0).map(|c| c.offset), Some(5));
        assert_eq!(s.all("bar").len(), 1);
        assert_eq!(s.groups().len(), 2);
    }

    #[tokio::test]
    async fn legacy_entries_are_read_and_retired_on_their_next_write() {
        let (_dir, _m, log) = store();
        let mut b = BatchBuilder::new(1);
        b.push(
            1,
            Some(&legacy_key("g", "t", 0)),
            Some(&value(&committed(3))),
            &[],
        );
        log.append_slice(&b.finish(), 1).unwrap();
        let s = OffsetStore::load(vec![log.clone()]).unwrap();
        assert_eq!(s.get("g", "t", 0).map(|c| c.offset), Some(3));
        // A deletion in the new format also deletes the old key, so that compaction cannot revive it.
        s.write("g", vec![(("t".into(), 0), None)], 2)
            .await
            .unwrap();
        assert!(s.get("g", "t", 0).is_none());
        let mut tombstones = 0;
        let slice = log.read(0, 1 << 20, true).unwrap();
        for item in BatchIter::new(&slice.records) {
            let (h, bytes) = item.unwrap();
            let start = bytes.as_ptr() as usize - slice.records.as_ptr() as usize;
            let body = slice
                .records
                .slice(start + BATCH_HEADER_LEN..start + bytes.len());
            for r in RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count) {
                let r = r.unwrap();
                if r.value.is_none() && r.key.as_deref() == Some(&legacy_key("g", "t", 0)[..]) {
                    tombstones += 1;
                }
            }
        }
        assert_eq!(tombstones, 1);
        let s = OffsetStore::load(vec![log]).unwrap();
        assert!(s.get("g", "t", 0).is_none());
    }

    #[test]
    fn partitioning_matches_kafka() {
        // Java: Math.abs("my-group".hashCode()) % 50 == "my-group".hashCode() & 0x7fffffff % 50
        assert_eq!(partition_for("", 50), 0);
        assert!(partition_for("my-group", 50) < 50);
        assert_eq!(partition_for("a", 50), 97 % 50);
    }
}
