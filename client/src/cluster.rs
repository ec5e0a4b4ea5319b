//! What a workload needs to know about the cluster before it starts: which broker leads each partition of the
//! topic (creating the topic when asked), and where partitions start and end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use millrace_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use millrace_protocol::messages::create_topics_response::CreateTopicsResponse;
use millrace_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use millrace_protocol::messages::list_offsets_response::ListOffsetsResponse;
use millrace_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use millrace_protocol::messages::metadata_response::MetadataResponse;
use millrace_protocol::messages::{create_topics_request, list_offsets_request, metadata_request};
use millrace_protocol::{error_code, RequestBody, Uuid};

use crate::connection::Connection;
use crate::error::{Error, Result};

/// ListOffsets timestamps with special meanings.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// One partition and the address of its leader.
#[derive(Debug, Clone)]
pub struct Partition {
    pub index: i32,
    pub leader: String,
}

/// A topic as Metadata describes it.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Partition>,
}

impl Topic {
    /// Partition leaders, each with the partitions it leads (sorted), in a stable order.
    pub fn by_leader(&self) -> Vec<(String, Vec<i32>)> {
        let mut map: HashMap<&str, Vec<i32>> = HashMap::new();
        for p in &self.partitions {
            map.entry(&p.leader).or_default().push(p.index);
        }
        let mut out: Vec<(String, Vec<i32>)> = map
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (k.to_string(), v)
            })
            .collect();
        out.sort();
        out
    }
}

/// Connects to the first reachable broker of a comma-separated bootstrap list.
pub async fn bootstrap(brokers: &str, client_id: &str) -> Result<Connection> {
    let mut errors = Vec::new();
    for addr in brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Connection::connect(addr, client_id).await {
            Ok(c) => return Ok(c),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        return Err(Error::Broker(format!(
            "the bootstrap list {brokers:?} names no broker"
        )));
    }
    Err(Error::Broker(format!(
        "no broker reachable: {}",
        errors.join("; ")
    )))
}

/// One Metadata request for `topic`; `None` when the broker does not know it.
pub async fn describe(conn: &mut Connection, topic: &str) -> Result<Option<Topic>> {
    let version = conn.versions().get(metadata_request::API_KEY)?;
    let req = RequestBody::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some(topic.to_string()),
            ..Default::default()
        }]),
        allow_auto_topic_creation: false,
        ..Default::default()
    });
    let mut r = conn.call(&req, version).await?;
    let resp = MetadataResponse::decode(&mut r, version)
        .map_err(Error::codec("malformed Metadata response"))?;
    let brokers: HashMap<i32, String> = resp
        .brokers
        .iter()
        .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
        .collect();
    let t = resp
        .topics
        .iter()
        .find(|t| t.name.as_deref() == Some(topic))
        .ok_or_else(|| {
            Error::Broker(format!(
                "Metadata response does not mention topic {topic:?}"
            ))
        })?;
    match t.error_code {
        error_code::NONE => {}
        error_code::UNKNOWN_TOPIC_OR_PARTITION => return Ok(None),
        error_code::LEADER_NOT_AVAILABLE => {
            return Ok(Some(Topic {
                name: topic.to_string(),
                id: t.topic_id,
                partitions: Vec::new(),
            }))
        }
        code => {
            return Err(Error::kafka(
                format!("Metadata for topic {topic:?} refused"),
                code,
            ))
        }
    }
    let mut partitions = Vec::with_capacity(t.partitions.len());
    for p in &t.partitions {
        if p.error_code != error_code::NONE && p.error_code != error_code::LEADER_NOT_AVAILABLE {
            return Err(Error::kafka(
                format!("Metadata for {topic}/{}", p.partition_index),
                p.error_code,
            ));
        }
        if let Some(addr) = brokers.get(&p.leader_id) {
            partitions.push(Partition {
                index: p.partition_index,
                leader: addr.clone(),
            });
        }
    }
    if partitions.len() < t.partitions.len() {
        partitions.clear(); // some partition has no leader yet: the caller retries
    }
    partitions.sort_by_key(|p| p.index);
    Ok(Some(Topic {
        name: topic.to_string(),
        id: t.topic_id,
        partitions,
    }))
}

/// Describes `topic`, creating it with `partitions` partitions first when `create` is set and it is missing, and
/// waits (up to 30 s) until every partition has a leader.
pub async fn topic(
    conn: &mut Connection,
    topic: &str,
    create: Option<i32>,
) -> Result<(Topic, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut created = false;
    loop {
        match describe(conn, topic).await? {
            Some(t) if !t.partitions.is_empty() => return Ok((t, created)),
            Some(_) => {}
            None => match create {
                Some(n) if !created => {
                    create_topic(conn, topic, n).await?;
                    created = true;
                }
                Some(_) => {}
                None => {
                    return Err(Error::kafka(
                        format!("topic {topic:?} does not exist"),
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    ))
                }
            },
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "topic {topic:?} still has partitions without a leader after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `topic` with `partitions` partitions (-1: the broker's default); an existing topic is no error.
pub async fn create_topic(conn: &mut Connection, topic: &str, partitions: i32) -> Result<()> {
    let version = conn.versions().get(create_topics_request::API_KEY)?;
    let req = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: topic.to_string(),
            num_partitions: partitions,
            // -1 (the broker's default) exists from v4; before that, one replica.
            replication_factor: if version >= 4 { -1 } else { 1 },
            ..Default::default()
        }],
        timeout_ms: 30_000,
        ..Default::default()
    });
    let mut r = conn.call(&req, version).await?;
    let resp = CreateTopicsResponse::decode(&mut r, version)
        .map_err(Error::codec("malformed CreateTopics response"))?;
    for t in &resp.topics {
        if t.error_code != error_code::NONE && t.error_code != error_code::TOPIC_ALREADY_EXISTS {
            return Err(Error::kafka(
                format!(
                    "CreateTopics {:?} refused{}",
                    t.name,
                    t.error_message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                t.error_code,
            ));
        }
    }
    Ok(())
}

/// ListOffsets for `partitions` of `topic` on their leader: the offset at `timestamp` (LATEST or EARLIEST),
/// as a read_uncommitted consumer sees them.
pub async fn offsets(
    conn: &mut Connection,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<HashMap<i32, i64>> {
    offsets_isolated(conn, topic, partitions, timestamp, false).await
}

/// ListOffsets as [`offsets`], with the isolation level chosen: under read_committed, LATEST is the last stable
/// offset (no open transaction's records are counted). A time past every record gives -1, as Kafka answers.
pub async fn offsets_isolated(
    conn: &mut Connection,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    read_committed: bool,
) -> Result<HashMap<i32, i64>> {
    let version = conn.versions().get(list_offsets_request::API_KEY)?;
    let req = RequestBody::ListOffsets(ListOffsetsRequest {
        replica_id: -1,
        isolation_level: i8::from(read_committed),
        topics: vec![ListOffsetsTopic {
            name: topic.to_string(),
            partitions: partitions
                .iter()
                .map(|&p| ListOffsetsPartition {
                    partition_index: p,
                    timestamp,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut r = conn.call(&req, version).await?;
    let resp = ListOffsetsResponse::decode(&mut r, version)
        .map_err(Error::codec("malformed ListOffsets response"))?;
    let mut out = HashMap::new();
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != error_code::NONE {
                return Err(Error::kafka(
                    format!("ListOffsets {topic}/{} refused", p.partition_index),
                    p.error_code,
                ));
            }
            out.insert(p.partition_index, p.offset);
        }
    }
    for p in partitions {
        if !out.contains_key(p) {
            return Err(Error::Broker(format!(
                "ListOffsets response lacks {topic}/{p}"
            )));
        }
    }
    Ok(out)
}
