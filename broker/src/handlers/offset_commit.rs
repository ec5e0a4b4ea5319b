//! OffsetCommit: checked against the group's member and generation (simple commits with generation -1 are
//! accepted while the group has no members), then written durably to `__consumer_offsets` before answering.

use std::sync::Arc;

use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::offset_commit_request::OffsetCommitRequest;
use millrace_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};

use super::{respond_later, Reply};
use crate::groups::Committed;
use crate::state::{now_ms, Broker};

/// Kafka's offset.metadata.max.bytes default.
const MAX_METADATA: usize = 4096;

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: OffsetCommitRequest,
) -> Result<Reply, String> {
    let check = broker.groups.check_commit(
        &req.group_id,
        req.generation_id_or_member_epoch,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    let now = now_ms();
    let mut writes = Vec::new();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let known = broker.topics.get(&t.name);
        let partitions = t
            .partitions
            .into_iter()
            .map(|p| {
                let code = if check != error_code::NONE {
                    check
                } else if known
                    .as_ref()
                    .and_then(|k| k.partition(p.partition_index))
                    .is_none()
                {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                } else if p
                    .committed_metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_METADATA)
                {
                    error_code::OFFSET_METADATA_TOO_LARGE
                } else {
                    writes.push((
                        (t.name.clone(), p.partition_index),
                        Some(Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.clone(),
                            commit_ms: now,
                        }),
                    ));
                    error_code::NONE
                };
                OffsetCommitResponsePartition {
                    partition_index: p.partition_index,
                    error_code: code,
                    ..Default::default()
                }
            })
            .collect();
        topics.push(OffsetCommitResponseTopic {
            name: t.name,
            partitions,
            ..Default::default()
        });
    }
    let mut resp = OffsetCommitResponse {
        topics,
        ..Default::default()
    };
    let header = header.clone();
    let group = req.group_id;
    // The commit takes effect now, in request order (an OffsetFetch pipelined behind it sees it); the reply
    // only waits for the fsync, and a connection closed before it is written cancels nothing.
    let fail = |resp: &mut OffsetCommitResponse| {
        for t in &mut resp.topics {
            for p in &mut t.partitions {
                if p.error_code == error_code::NONE {
                    p.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
                }
            }
        }
    };
    let durable = match broker.groups.offsets.apply(&group, writes, now) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%group, error = %e, "offset commit failed");
            fail(&mut resp);
            None
        }
    };
    Ok(Reply::Later(Box::pin(async move {
        if let Some(d) = durable {
            if let Err(e) = d.wait().await {
                tracing::warn!(%group, error = %e, "offset commit not made durable");
                fail(&mut resp);
            }
        }
        respond_later(&header, |w, v| resp.encode(w, v))
    })))
}
