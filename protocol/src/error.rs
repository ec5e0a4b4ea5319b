//! The protocol crate's one error type.

/// Why bytes could not be decoded or a value could not be encoded.
///
/// Decoding errors never carry a Kafka error code: the broker edge chooses the code (or closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the value did.
    #[error("truncated input: needed {needed} more bytes")]
    Truncated { needed: usize },
    /// A length or count was negative where that means nothing, or larger than what is left.
    #[error("invalid length {0}")]
    InvalidLength(i64),
    /// A string field was not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A varint ran past its maximum width.
    #[error("varint is too long")]
    VarintOverflow,
    /// A non-nullable field was null on the wire, or a null was asked to be encoded in a version without nulls.
    #[error("null value in non-nullable field {0}")]
    UnexpectedNull(&'static str),
    /// The API key is not one this crate knows.
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    /// The API is known but not at this version.
    #[error("API key {api_key} does not support version {version}")]
    UnsupportedVersion { api_key: i16, version: i16 },
    /// A record batch is malformed: wrong magic, bad CRC, impossible lengths.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(&'static str),
    /// A compression codec the crate does not implement.
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u8),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
