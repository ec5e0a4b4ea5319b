//! The bridge from settings (by Kafka's names) to storage: a topic's resolved settings become a
//! [`millrace_storage::LogConfig`], and storage errors become Kafka error codes.

use std::collections::BTreeMap;

use millrace_protocol::error_code::{self, ErrorCode};
use millrace_storage::{Error as StorageError, LogConfig, TimestampType};

use crate::config::BrokerConfig;

/// Resolves a topic's settings (its overrides over the broker's) into the storage configuration.
pub fn log_config(config: &BrokerConfig, overrides: &BTreeMap<String, String>) -> LogConfig {
    let get = |name: &str| config.topic_i64(overrides, name);
    let ts_type = config
        .topic_value(overrides, "message.timestamp.type")
        .map(|(v, _)| v);
    let policy = config
        .topic_value(overrides, "cleanup.policy")
        .map(|(v, _)| v)
        .unwrap_or_default();
    LogConfig {
        segment_bytes: get("segment.bytes").max(1024) as u64,
        segment_ms: get("segment.ms"),
        retention_ms: get("retention.ms"),
        retention_bytes: get("retention.bytes"),
        index_interval_bytes: get("index.interval.bytes").max(1) as u64,
        segment_index_bytes: get("segment.index.bytes").max(4096) as u64,
        max_message_bytes: get("max.message.bytes").max(0) as u64,
        message_timestamp_type: if ts_type.as_deref() == Some("LogAppendTime") {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        flush_messages: get("flush.messages"),
        flush_ms: get("flush.ms"),
        cleanup_delete: policy.split(',').any(|p| p.trim() == "delete"),
        cleanup_compact: policy.split(',').any(|p| p.trim() == "compact"),
        delete_retention_ms: get("delete.retention.ms"),
    }
}

/// The Kafka error code a client sees for a storage error.
pub fn storage_error_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::OffsetOutOfRange { .. } => error_code::OFFSET_OUT_OF_RANGE,
        StorageError::CorruptBatch(_) => error_code::CORRUPT_MESSAGE,
        StorageError::MessageTooLarge { .. } => error_code::MESSAGE_TOO_LARGE,
        StorageError::InvalidProducerEpoch { .. } => error_code::INVALID_PRODUCER_EPOCH,
        StorageError::OutOfOrderSequence { .. } => error_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        StorageError::UnknownProducerId { .. } => error_code::UNKNOWN_PRODUCER_ID,
        _ => error_code::KAFKA_STORAGE_ERROR,
    }
}
