//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, v7+), earliest local (-4, v8+), or the first
//! offset whose timestamp is at or after a given time (through the time index).

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::list_offsets_request::ListOffsetsRequest;
use millrace_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};

use super::respond;
use crate::state::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: ListOffsetsRequest,
) -> Result<Vec<Bytes>, String> {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut out = ListOffsetsPartitionResponse {
                        partition_index: p.partition_index,
                        timestamp: -1,
                        offset: -1,
                        leader_epoch: -1,
                        ..Default::default()
                    };
                    let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        out.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                        return out;
                    };
                    out.leader_epoch = 0;
                    match p.timestamp {
                        LATEST => out.offset = log.log_end_offset(),
                        EARLIEST | EARLIEST_LOCAL => out.offset = log.log_start_offset(),
                        MAX_TIMESTAMP => {
                            if let Some((ts, offset)) = log.max_timestamp() {
                                out.timestamp = ts;
                                out.offset = offset;
                            }
                        }
                        ts if ts >= 0 => {
                            if let Some((offset, found_ts)) = log.offset_for_timestamp(ts) {
                                out.offset = offset;
                                out.timestamp = found_ts;
                            }
                        }
                        _ => out.error_code = error_code::INVALID_REQUEST,
                    }
                    out
                })
                .collect();
            ListOffsetsTopicResponse {
                name: t.name,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    let resp = ListOffsetsResponse {
        topics,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
