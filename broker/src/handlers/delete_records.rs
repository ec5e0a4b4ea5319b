//! DeleteRecords: move a partition's log start offset forward (-1 means the high watermark).

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::delete_records_request::DeleteRecordsRequest;
use millrace_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: DeleteRecordsRequest,
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
                    let mut out = DeleteRecordsPartitionResult {
                        partition_index: p.partition_index,
                        low_watermark: -1,
                        ..Default::default()
                    };
                    let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        out.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                        return out;
                    };
                    let target = if p.offset == -1 {
                        log.log_end_offset()
                    } else {
                        p.offset
                    };
                    if target < 0 || target > log.log_end_offset() {
                        out.error_code = error_code::OFFSET_OUT_OF_RANGE;
                        return out;
                    }
                    match log.delete_records_before(target) {
                        Ok(low) => out.low_watermark = low,
                        Err(e) => out.error_code = crate::storage_code(&e),
                    }
                    out
                })
                .collect();
            DeleteRecordsTopicResult {
                name: t.name,
                partitions,
                ..Default::default()
            }
        })
        .collect();
    let resp = DeleteRecordsResponse {
        topics,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
