//! OffsetFetch: committed offsets of one group (v1-7) or several (v8+); a null topic list means every
//! committed partition of the group; an unknown partition answers offset -1.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use millrace_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};

use super::respond;
use crate::state::Broker;

/// (topic, [(partition, offset, leader epoch, metadata)]) for a group.
type Answer = Vec<(String, Vec<(i32, i64, i32, Option<String>)>)>;

fn lookup(broker: &Broker, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Answer {
    match topics {
        Some(list) => list
            .into_iter()
            .map(|(name, parts)| {
                let rows = parts
                    .into_iter()
                    .map(|p| match broker.groups.offsets.get(group, &name, p) {
                        Some(c) => (p, c.offset, c.leader_epoch, c.metadata),
                        None => (p, -1, -1, Some(String::new())),
                    })
                    .collect();
                (name, rows)
            })
            .collect(),
        None => {
            let mut out: Answer = Vec::new();
            for ((topic, p), c) in broker.groups.offsets.all(group) {
                match out.last_mut() {
                    Some((t, rows)) if *t == topic => {
                        rows.push((p, c.offset, c.leader_epoch, c.metadata))
                    }
                    _ => out.push((topic, vec![(p, c.offset, c.leader_epoch, c.metadata)])),
                }
            }
            out
        }
    }
}

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: OffsetFetchRequest,
) -> Result<Vec<Bytes>, String> {
    let mut resp = OffsetFetchResponse::default();
    if header.api_version >= 8 {
        resp.groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                OffsetFetchResponseGroup {
                    topics: lookup(broker, &g.group_id, topics)
                        .into_iter()
                        .map(|(name, rows)| OffsetFetchResponseTopics {
                            name,
                            partitions: rows
                                .into_iter()
                                .map(|(p, o, e, m)| OffsetFetchResponsePartitions {
                                    partition_index: p,
                                    committed_offset: o,
                                    committed_leader_epoch: e,
                                    metadata: m,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    group_id: g.group_id,
                    ..Default::default()
                }
            })
            .collect();
    } else {
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        resp.topics = lookup(broker, &req.group_id, topics)
            .into_iter()
            .map(|(name, rows)| OffsetFetchResponseTopic {
                name,
                partitions: rows
                    .into_iter()
                    .map(|(p, o, e, m)| OffsetFetchResponsePartition {
                        partition_index: p,
                        committed_offset: o,
                        committed_leader_epoch: e,
                        metadata: m,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
    }
    respond(header, |w, v| resp.encode(w, v))
}
