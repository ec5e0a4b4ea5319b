//! A remote sink topic: the committer's idempotent producer on a remote cluster.
//!
//! Invariants of [`RemoteSink`]:
//! - every batch it writes carries its producer id, its epoch and, per partition, consecutive sequences, so
//!   the remote broker drops a batch sent twice (a retry after a timeout) and refuses a gap;
//! - a partition's batches are written in order, one in flight at a time per partition (a wave of requests
//!   holds at most one batch per partition, as Kafka requires of v3+ Produce);
//! - `known_end[p]` never exceeds partition `p`'s log end on the remote, so a batch written after it was
//!   recorded is found by scanning from it.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use millrace_client::cluster::{self, Topic, LATEST};
use millrace_client::Connection;
use millrace_protocol::error_code;
use millrace_protocol::messages::fetch_request::{self, FetchPartition, FetchRequest, FetchTopic};
use millrace_protocol::messages::fetch_response::FetchResponse;
use millrace_protocol::messages::init_producer_id_request::{self, InitProducerIdRequest};
use millrace_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use millrace_protocol::messages::produce_request::{
    self, PartitionProduceData, ProduceRequest, TopicProduceData,
};
use millrace_protocol::messages::produce_response::ProduceResponse;
use millrace_protocol::records::{set_producer, validate_batch, BatchIter};
use millrace_protocol::RequestBody;

use super::{connect, remote_error, retriable, CLIENT_ID, RETRY_FOR, RETRY_PAUSE};
use crate::error::{Error, Result};

/// How long the remote broker has to make a write durable (acks=all).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

/// One topic of a remote cluster that a pipeline writes.
pub struct RemoteSink {
    cluster: String,
    topic: Topic,
    producer_id: i64,
    epoch: i16,
    next_seq: Vec<i32>,
    known_end: Vec<i64>,
    conns: HashMap<String, Connection>,
}

/// Sequences wrap from i32::MAX to 0, as Kafka's do.
fn add_sequence(seq: i32, records: i32) -> i32 {
    ((i64::from(seq) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Errors that say the remote does not (any more) know the sequence a batch was numbered under.
fn sequence_lost(code: i16) -> bool {
    matches!(
        code,
        error_code::OUT_OF_ORDER_SEQUENCE_NUMBER
            | error_code::UNKNOWN_PRODUCER_ID
            | error_code::INVALID_PRODUCER_EPOCH
    )
}

impl RemoteSink {
    /// Opens `topic` on the cluster at `bootstrap` (created with `partitions`, or the cluster's default, when
    /// missing) with a new idempotent producer id of that cluster.
    pub async fn open(bootstrap: &str, topic: &str, partitions: Option<i32>) -> Result<RemoteSink> {
        let t = super::describe(bootstrap, topic, Some(partitions.unwrap_or(-1))).await?;
        let all: Vec<i32> = t.partitions.iter().map(|p| p.index).collect();
        let ends = super::offsets(bootstrap, &t, &all, LATEST).await?;
        let mut conn = cluster::bootstrap(bootstrap, CLIENT_ID)
            .await
            .map_err(|e| remote_error(bootstrap, e))?;
        let version = conn
            .versions()
            .get(init_producer_id_request::API_KEY)
            .map_err(|e| remote_error(bootstrap, e))?;
        let req = RequestBody::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 60_000,
            producer_id: -1,
            producer_epoch: -1,
            ..Default::default()
        });
        let mut r = conn
            .call(&req, version)
            .await
            .map_err(|e| remote_error(bootstrap, e))?;
        let resp = InitProducerIdResponse::decode(&mut r, version).map_err(|e| Error::Remote {
            cluster: bootstrap.to_string(),
            message: format!("malformed InitProducerId response: {e}"),
        })?;
        if resp.error_code != error_code::NONE {
            return Err(Error::Remote {
                cluster: bootstrap.to_string(),
                message: format!(
                    "InitProducerId refused: error code {} {}",
                    resp.error_code,
                    error_code::name(resp.error_code)
                ),
            });
        }
        Ok(RemoteSink {
            cluster: bootstrap.to_string(),
            next_seq: vec![0; t.partitions.len()],
            known_end: ends,
            topic: t,
            producer_id: resp.producer_id,
            epoch: resp.producer_epoch,
            conns: HashMap::new(),
        })
    }

    pub fn partitions(&self) -> usize {
        self.topic.partitions.len()
    }

    /// Where a batch written from now on will be found (a lower bound of the partition's end).
    pub fn search_from(&self, partition: i32) -> i64 {
        self.known_end.get(partition as usize).copied().unwrap_or(0)
    }

    /// Numbers `batch` for `partition` under this sink's producer: returns the producer id, the base
    /// sequence and the rewritten batch (one copy of the batch, to patch its header and CRC).
    pub fn assign(&mut self, partition: i32, batch: &Bytes) -> Result<(i64, i32, Bytes)> {
        let h = validate_batch(batch)?;
        let Some(seq) = self.next_seq.get_mut(partition as usize) else {
            return Err(self.error(format!("no partition {partition}")));
        };
        let base = *seq;
        *seq = add_sequence(base, h.records_count);
        let mut v = batch.to_vec();
        set_producer(&mut v, self.producer_id, self.epoch, base)?;
        Ok((self.producer_id, base, Bytes::from(v)))
    }

    fn error(&self, message: String) -> Error {
        Error::Remote {
            cluster: self.cluster.clone(),
            message: format!("{}: {message}", self.topic.name),
        }
    }

    fn leader(&self, partition: i32) -> Result<String> {
        self.topic
            .partitions
            .iter()
            .find(|p| p.index == partition)
            .map(|p| p.leader.clone())
            .ok_or_else(|| self.error(format!("partition {partition} has no leader")))
    }

    async fn conn(&mut self, addr: &str) -> Result<&mut Connection> {
        if !self.conns.contains_key(addr) {
            let c = connect(&self.cluster, addr).await?;
            self.conns.insert(addr.to_string(), c);
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| Error::Host("connection vanished".into()))
    }

    /// After a retriable failure: forget connections and leaders, and look the topic up again.
    async fn refresh(&mut self) -> Result<()> {
        self.conns.clear();
        let t = super::describe(&self.cluster, &self.topic.name, None).await?;
        if t.partitions.len() < self.topic.partitions.len() {
            return Err(self.error("the topic lost partitions".into()));
        }
        self.topic = t;
        Ok(())
    }

    /// Writes `batches` (partition, batch), each partition's in the order given, and waits until the remote
    /// has them durably (acks=all). With `renumber`, a batch the remote refuses because it no longer knows its
    /// producer's sequence (an old producer id replayed after a restart) is numbered afresh under this sink's
    /// producer and written: the caller has checked it is not on the partition.
    pub async fn write(&mut self, batches: Vec<(i32, Bytes)>, renumber: bool) -> Result<()> {
        // Waves: the k-th batch of every partition goes in wave k.
        let mut waves: Vec<Vec<(i32, Bytes)>> = Vec::new();
        let mut count: HashMap<i32, usize> = HashMap::new();
        for (p, b) in batches {
            let k = count.entry(p).or_insert(0);
            if waves.len() <= *k {
                waves.push(Vec::new());
            }
            waves[*k].push((p, b));
            *k += 1;
        }
        for mut wave in waves {
            let started = Instant::now();
            loop {
                match self.write_wave(&wave).await {
                    Ok(None) => break,
                    Ok(Some((p, code))) if renumber && sequence_lost(code) => {
                        if let Some(slot) = wave.iter_mut().find(|(q, _)| *q == p) {
                            let (_, _, b) = self.assign(p, &slot.1)?;
                            tracing::info!(cluster = %self.cluster, topic = %self.topic.name, partition = p,
                                "renumbered a checkpointed batch the remote no longer knew the producer of");
                            slot.1 = b;
                        }
                        // The wave's other batches landed or were duplicates: sending them again is harmless.
                    }
                    Ok(Some((p, code))) => {
                        return Err(self.error(format!(
                            "Produce to partition {p} refused: error code {code} {}",
                            error_code::name(code)
                        )))
                    }
                    Err((e, again)) => {
                        if !again || started.elapsed() > RETRY_FOR {
                            return Err(e);
                        }
                        tracing::warn!(cluster = %self.cluster, topic = %self.topic.name, error = %e,
                            "remote write failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(cluster = %self.cluster, error = %e, "metadata refresh failed");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One request per leader for the wave. Ok(None): all written; Ok(Some((p, code))): partition `p` was
    /// refused with a code that is not retriable; Err((e, retriable)).
    async fn write_wave(
        &mut self,
        wave: &[(i32, Bytes)],
    ) -> std::result::Result<Option<(i32, i16)>, (Error, bool)> {
        let mut by_leader: HashMap<String, Vec<(i32, Bytes)>> = HashMap::new();
        for (p, b) in wave {
            let leader = self.leader(*p).map_err(|e| (e, true))?;
            by_leader.entry(leader).or_default().push((*p, b.clone()));
        }
        let name = self.topic.name.clone();
        let cluster = self.cluster.clone();
        for (leader, parts) in by_leader {
            let counts: Vec<(i32, i64)> = parts
                .iter()
                .map(|(p, b)| {
                    let n = validate_batch(b).map_or(0, |h| i64::from(h.records_count));
                    (*p, n)
                })
                .collect();
            let req = RequestBody::Produce(ProduceRequest {
                transactional_id: None,
                acks: -1,
                timeout_ms: PRODUCE_TIMEOUT_MS,
                topic_data: vec![TopicProduceData {
                    name: name.clone(),
                    partition_data: parts
                        .into_iter()
                        .map(|(index, batch)| PartitionProduceData {
                            index,
                            records: Some(batch),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            let conn = self.conn(&leader).await.map_err(|e| (e, true))?;
            let version = conn
                .versions()
                .get(produce_request::API_KEY)
                .map_err(|e| (remote_error(&cluster, e), false))?;
            let mut r = match conn.call(&req, version).await {
                Ok(r) => r,
                Err(e) => {
                    let again = retriable(&e);
                    return Err((remote_error(&cluster, e), again));
                }
            };
            let resp = ProduceResponse::decode(&mut r, version).map_err(|e| {
                (
                    Error::Remote {
                        cluster: cluster.clone(),
                        message: format!("malformed Produce response: {e}"),
                    },
                    false,
                )
            })?;
            let mut answered = 0;
            for p in resp.responses.iter().flat_map(|t| &t.partition_responses) {
                answered += 1;
                match p.error_code {
                    error_code::NONE | error_code::DUPLICATE_SEQUENCE_NUMBER => {
                        let n = counts
                            .iter()
                            .find(|(q, _)| *q == p.index)
                            .map_or(0, |x| x.1);
                        if let Some(end) = self.known_end.get_mut(p.index as usize) {
                            if p.base_offset >= 0 {
                                *end = (*end).max(p.base_offset + n);
                            }
                        }
                    }
                    code if error_code::is_retriable(code) => {
                        return Err((
                            self.error(format!(
                                "Produce to partition {} failed: error code {code} {}",
                                p.index,
                                error_code::name(code)
                            )),
                            true,
                        ))
                    }
                    code => return Ok(Some((p.index, code))),
                }
            }
            if answered < counts.len() {
                return Err((self.error("Produce response lacks partitions".into()), true));
            }
        }
        Ok(None)
    }

    /// Whether `partition` holds, at or after `from`, a batch of `producer_id` with `base_sequence` (the
    /// restart's check before it writes a checkpointed batch again).
    pub async fn holds(
        &mut self,
        partition: i32,
        from: i64,
        producer_id: i64,
        base_sequence: i32,
    ) -> Result<bool> {
        let leader = self.leader(partition)?;
        let name = self.topic.name.clone();
        let id = self.topic.id;
        let cluster = self.cluster.clone();
        let conn = self.conn(&leader).await?;
        let version = conn
            .versions()
            .get(fetch_request::API_KEY)
            .map_err(|e| remote_error(&cluster, e))?;
        let mut offset = from;
        loop {
            let req = RequestBody::Fetch(FetchRequest {
                replica_id: -1,
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 4 << 20,
                isolation_level: 0,
                topics: vec![FetchTopic {
                    topic: name.clone(),
                    topic_id: id,
                    partitions: vec![FetchPartition {
                        partition,
                        fetch_offset: offset,
                        partition_max_bytes: 4 << 20,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
            let mut r = conn
                .call(&req, version)
                .await
                .map_err(|e| remote_error(&cluster, e))?;
            let resp = FetchResponse::decode(&mut r, version).map_err(|e| Error::Remote {
                cluster: cluster.clone(),
                message: format!("malformed Fetch response: {e}"),
            })?;
            let Some(p) = resp
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == partition)
            else {
                return Ok(false);
            };
            match p.error_code {
                error_code::NONE => {}
                error_code::OFFSET_OUT_OF_RANGE => return Ok(false),
                code => {
                    return Err(Error::Remote {
                        cluster,
                        message: format!(
                            "Fetch of {name}/{partition} refused: error code {code} {}",
                            error_code::name(code)
                        ),
                    })
                }
            }
            let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                return Ok(false);
            };
            let mut next = offset;
            for (h, _) in BatchIter::new(records).map_while(|r| r.ok()) {
                if h.producer_id == producer_id && h.base_sequence == base_sequence {
                    return Ok(true);
                }
                next = next.max(h.last_offset() + 1);
            }
            if next <= offset {
                return Ok(false);
            }
            offset = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_as_kafkas_do() {
        assert_eq!(add_sequence(0, 5), 5);
        assert_eq!(add_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 2, 5), 2);
    }
}
