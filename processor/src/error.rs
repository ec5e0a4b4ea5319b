//! The processor crate's one error type.

use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed (reading inputs, appending outputs or checkpoints).
    #[error("storage: {0}")]
    Storage(#[from] millrace_storage::Error),
    /// A stored record batch could not be decoded.
    #[error("record batch: {0}")]
    Protocol(Arc<millrace_protocol::Error>),
    /// A pipeline is not well formed (built in Rust or read from a file).
    #[error("invalid pipeline: {0}")]
    Invalid(String),
    /// A pipeline file could not be parsed; the message points at the line.
    #[error("{0}")]
    File(String),
    /// A checkpoint or operator state snapshot could not be decoded.
    #[error("corrupt checkpoint: {0}")]
    CorruptState(String),
    /// The state store's files could not be read or written.
    #[error("state store: {0}")]
    StateIo(String),
    /// The host (the broker) refused a topic or producer id the pipeline needs.
    #[error("host: {0}")]
    Host(String),
    /// A remote cluster a source or sink names (`bootstrap.servers`) failed or refused a request.
    #[error("remote cluster {cluster}: {message}")]
    Remote { cluster: String, message: String },
    /// The pipeline was stopped, or one of its tasks failed.
    #[error("pipeline stopped: {0}")]
    Stopped(String),
}

impl From<millrace_protocol::Error> for Error {
    fn from(e: millrace_protocol::Error) -> Self {
        Error::Protocol(Arc::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
