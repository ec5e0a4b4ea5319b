//! The storage crate's one error type.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] Arc<std::io::Error>),
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    #[error("batch of {size} bytes is larger than the limit of {max}")]
    MessageTooLarge { size: usize, max: u64 },
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer {producer_id}: sequence {got} out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("unknown producer id {producer_id}")]
    UnknownProducerId { producer_id: i64 },
    #[error("log {0} was deleted")]
    Deleted(String),
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
