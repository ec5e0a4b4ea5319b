//! The storage crate's one error type. The broker maps each variant to a Kafka error code at its edge.

use std::sync::Arc;

/// Everything that can go wrong in storage. `Clone` (I/O errors are shared behind an `Arc`) so that one failed
/// fsync can be reported to every waiter it was meant to serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another LogManager in this one) holds the data directory.
    #[error("data directory {0} is in use by another process (its .lock is held)")]
    DirectoryInUse(String),
    /// A file system operation failed (KAFKA_STORAGE_ERROR).
    #[error("I/O: {0}")]
    Io(#[from] Arc<std::io::Error>),
    /// A read, DeleteRecords, truncation or durability wait for an offset the log does not hold.
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// Appended bytes are not whole, well-formed batches (CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// One batch is larger than `max.message.bytes`.
    #[error("batch of {size} bytes is larger than the limit of {max}")]
    MessageTooLarge { size: usize, max: u64 },
    /// The producer was fenced by a newer epoch of the same producer id.
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// An idempotent batch does not continue its producer's sequence.
    #[error("producer {producer_id}: sequence {got} out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// Kept for the broker's error mapping; storage accepts unknown producers at any sequence, as Kafka 3.x/4.x
    /// does (see [`crate::producer_state`]), so it never returns this.
    #[error("unknown producer id {producer_id}")]
    UnknownProducerId { producer_id: i64 },
    /// The log was deleted (its topic removed) while someone still held it.
    #[error("log {0} was deleted")]
    Deleted(String),
    /// A log without segments: an earlier roll or truncation failed half-way (reopen the log to repair it).
    #[error("the log has no active segment")]
    NoActiveSegment,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<millrace_protocol::Error> for Error {
    fn from(e: millrace_protocol::Error) -> Self {
        Error::CorruptBatch(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
