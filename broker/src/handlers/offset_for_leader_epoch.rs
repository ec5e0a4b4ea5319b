//! OffsetForLeaderEpoch: a single node has only leader epoch 0, which ends at the log end offset. Clients use
//! this after a leader change to detect truncation; here the answer never shows any.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use millrace_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use super::respond;
use crate::state::Broker;

pub const LEADER_EPOCH: i32 = 0;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: OffsetForLeaderEpochRequest,
) -> Result<Vec<Bytes>, String> {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.topic);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut out = EpochEndOffset {
                        partition: p.partition,
                        leader_epoch: -1,
                        end_offset: -1,
                        ..Default::default()
                    };
                    let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                        out.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                        return out;
                    };
                    // With one epoch (0) ever, a newer one is unknown; no valid epoch can be older (-1 means "none").
                    if p.current_leader_epoch > LEADER_EPOCH {
                        out.error_code = error_code::UNKNOWN_LEADER_EPOCH;
                    } else if p.leader_epoch >= LEADER_EPOCH {
                        out.leader_epoch = LEADER_EPOCH;
                        out.end_offset = log.log_end_offset();
                    }
                    out
                })
                .collect();
            OffsetForLeaderTopicResult {
                topic: t.topic,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    let resp = OffsetForLeaderEpochResponse {
        topics,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
