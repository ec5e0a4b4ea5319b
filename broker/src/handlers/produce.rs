//! Produce: validate each partition's batch, append it, and answer after the write (acks=1), after an fsync that
//! covers it (acks=all, group-committed by storage), or not at all (acks=0).
//!
//! Per partition, in Kafka's order of checks: unknown topic or partition, internal topic, exactly one well-formed
//! magic-2 batch (INVALID_RECORD otherwise), CRC-32C (CORRUPT_MESSAGE), size against `max.message.bytes`
//! (MESSAGE_TOO_LARGE), then the idempotent-producer checks inside storage. Nothing is stored for a partition
//! whose batch fails a check.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::error_code::{self, ErrorCode};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::produce_request::ProduceRequest;
use millrace_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use millrace_protocol::records::{validate_batch, BatchHeader};
use millrace_storage::Log;

use super::{respond, respond_later, Reply};
use crate::state::{now_ms, Broker};
use crate::topics::Topic;

fn partition_error(
    index: i32,
    code: ErrorCode,
    message: Option<String>,
) -> PartitionProduceResponse {
    PartitionProduceResponse {
        index,
        error_code: code,
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
        error_message: message,
        ..Default::default()
    }
}

/// Checks the records of one partition; returns the batch header when they may be appended.
fn check_records(
    topic: &Topic,
    records: &Option<Bytes>,
    max_message_bytes: i64,
) -> Result<BatchHeader, (ErrorCode, String)> {
    let records = records
        .as_ref()
        .ok_or((error_code::INVALID_RECORD, "null records".to_string()))?;
    let header = BatchHeader::parse(records).map_err(|e| match e {
        millrace_protocol::Error::CorruptBatch(m) if m.contains("magic") => (
            error_code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            "only magic 2 record batches are accepted".to_string(),
        ),
        e => (error_code::CORRUPT_MESSAGE, e.to_string()),
    })?;
    if header.total_len() != records.len() {
        if header.total_len() > records.len() {
            return Err((
                error_code::CORRUPT_MESSAGE,
                "record batch is truncated".into(),
            ));
        }
        return Err((
            error_code::INVALID_RECORD,
            "produce requests must carry exactly one record batch per partition".into(),
        ));
    }
    if records.len() as i64 > max_message_bytes {
        return Err((
            error_code::MESSAGE_TOO_LARGE,
            format!(
                "batch of {} bytes exceeds max.message.bytes {max_message_bytes} of {}",
                records.len(),
                topic.name
            ),
        ));
    }
    validate_batch(records).map_err(|e| (error_code::CORRUPT_MESSAGE, e.to_string()))?;
    if header.records_count <= 0
        || i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1
    {
        // A producer's batch has one record per offset (gaps only appear in compacted logs).
        return Err((
            error_code::INVALID_RECORD,
            "record count does not match the batch's offset span".into(),
        ));
    }
    if header.is_control() {
        return Err((
            error_code::INVALID_RECORD,
            "clients may not write control batches".into(),
        ));
    }
    if header.is_transactional() {
        return Err((
            error_code::INVALID_TXN_STATE,
            "transactions are not supported by this broker yet".into(),
        ));
    }
    Ok(header)
}

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> Result<Reply, String> {
    let acks = req.acks;
    let timeout_ms = req.timeout_ms;
    let mut durable_waits: Vec<(usize, usize, Arc<Log>, i64)> = Vec::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    let fixed_error = if header.api_version < 3 {
        // Kafka 4 advertises Produce from v0 (KAFKA-18659) but only accepts magic-2 batches, v3 and later.
        Some(error_code::UNSUPPORTED_VERSION)
    } else if !matches!(acks, -1..=1) {
        Some(error_code::INVALID_REQUIRED_ACKS)
    } else if req.transactional_id.is_some() {
        Some(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else {
        None
    };
    let now = now_ms();
    for (ti, topic_data) in req.topic_data.into_iter().enumerate() {
        let topic = broker.topics.get(&topic_data.name);
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for (pi, part) in topic_data.partition_data.into_iter().enumerate() {
            let index = part.index;
            if let Some(code) = fixed_error {
                partitions.push(partition_error(index, code, None));
                continue;
            }
            let Some(topic) = topic.as_ref() else {
                partitions.push(partition_error(
                    index,
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    None,
                ));
                continue;
            };
            let Some(log) = topic.partition(index) else {
                partitions.push(partition_error(
                    index,
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    None,
                ));
                continue;
            };
            if topic.internal {
                partitions.push(partition_error(
                    index,
                    error_code::INVALID_TOPIC_EXCEPTION,
                    Some(format!("cannot append to internal topic {}", topic.name)),
                ));
                continue;
            }
            let max = broker.config.topic_i64(&topic.configs, "max.message.bytes");
            if let Err((code, message)) = check_records(topic, &part.records, max) {
                tracing::debug!(topic = %topic.name, partition = index, code, %message, "produce rejected");
                partitions.push(partition_error(index, code, Some(message)));
                continue;
            }
            let Some(records) = part.records else {
                continue;
            };
            // Straight from the receive buffer to the log: storage writes the new base offset beside it.
            match log.append_slice(&records, now) {
                Ok(info) => {
                    // A retried duplicate waits too: its original write may not be on disk yet (an earlier
                    // fsync can have timed out); when it is, the wait costs nothing.
                    if acks == -1 {
                        durable_waits.push((ti, pi, log.clone(), info.last_offset));
                    }
                    partitions.push(PartitionProduceResponse {
                        index,
                        error_code: error_code::NONE,
                        base_offset: info.base_offset,
                        log_append_time_ms: info.log_append_time,
                        log_start_offset: info.log_start_offset,
                        ..Default::default()
                    });
                }
                Err(e) => {
                    let code = crate::storage_code(&e);
                    tracing::debug!(topic = %topic.name, partition = index, code, error = %e, "append failed");
                    partitions.push(partition_error(index, code, Some(e.to_string())));
                }
            }
        }
        responses.push(TopicProduceResponse {
            name: topic_data.name,
            partition_responses: partitions,
            ..Default::default()
        });
    }
    let mut resp = ProduceResponse {
        responses,
        ..Default::default()
    };
    if acks == 0 {
        return Ok(Reply::None);
    }
    if durable_waits.is_empty() || !broker.config.get_bool("millrace.acks.all.fsync") {
        return Ok(Reply::Ready(respond(header, |w, v| resp.encode(w, v))?));
    }
    let header = header.clone();
    // The request's timeout bounds the wait for the fsync, as it bounds the wait for replicas in Kafka.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    Ok(Reply::Later(Box::pin(async move {
        for (ti, pi, log, offset) in durable_waits {
            let outcome = tokio::time::timeout_at(deadline, log.wait_durable(offset)).await;
            let p = &mut resp.responses[ti].partition_responses[pi];
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    *p = partition_error(
                        p.index,
                        error_code::KAFKA_STORAGE_ERROR,
                        Some(e.to_string()),
                    )
                }
                Err(_) => *p = partition_error(p.index, error_code::REQUEST_TIMED_OUT, None),
            }
        }
        respond_later(&header, |w, v| resp.encode(w, v))
    })))
}
