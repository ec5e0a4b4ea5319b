//! The broker crate's one error type. Handlers turn these into Kafka error codes at the edge
//! ([`Error::code`]); lower layers never pick codes.

use std::sync::Arc;

use millrace_protocol::error_code::{self as code, ErrorCode};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] Arc<std::io::Error>),
    #[error(transparent)]
    Storage(#[from] millrace_storage::Error),
    #[error(transparent)]
    Protocol(#[from] millrace_protocol::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid value for {name}: {reason}")]
    InvalidConfigValue { name: String, reason: String },
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor {0}: this is a single-node broker")]
    InvalidReplicationFactor(i16),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// The Kafka error code a client should see for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Io(_) => code::KAFKA_STORAGE_ERROR,
            Error::Storage(e) => crate::storage_code(e),
            Error::Protocol(_) => code::CORRUPT_MESSAGE,
            Error::Config(_) | Error::InvalidConfigValue { .. } => code::INVALID_CONFIG,
            Error::UnknownTopicOrPartition => code::UNKNOWN_TOPIC_OR_PARTITION,
            Error::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
            Error::InvalidTopic(_) => code::INVALID_TOPIC_EXCEPTION,
            Error::InvalidPartitions(_) => code::INVALID_PARTITIONS,
            Error::InvalidReplicationFactor(_) => code::INVALID_REPLICATION_FACTOR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
