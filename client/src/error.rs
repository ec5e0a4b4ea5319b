//! The client crate's one error type.

use millrace_protocol::error_code;

/// Why a call to a broker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (connect, read or write).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Nothing came back in time.
    #[error("{0}")]
    Timeout(String),
    /// The broker's bytes could not be decoded, or ours could not be encoded.
    #[error("{what}: {source}")]
    Codec {
        what: String,
        #[source]
        source: millrace_protocol::Error,
    },
    /// The broker answered with a Kafka error code.
    #[error("{what}: error code {code} {}", error_code::name(*.code))]
    Kafka { what: String, code: i16 },
    /// The broker did something a Kafka broker must not (closed the connection, answered out of order, lacks an
    /// API we need), or the caller asked for something impossible.
    #[error("{0}")]
    Broker(String),
}

impl Error {
    /// The Kafka error code, when the broker gave one.
    pub fn code(&self) -> Option<i16> {
        match self {
            Error::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after a metadata refresh and a reconnect) may succeed: network failures, timeouts
    /// and Kafka's retriable codes.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Timeout(_) => true,
            Error::Kafka { code, .. } => error_code::is_retriable(*code),
            Error::Broker(m) => m.contains("closed the connection"),
            Error::Codec { .. } => false,
        }
    }

    pub(crate) fn kafka(what: impl Into<String>, code: i16) -> Error {
        Error::Kafka {
            what: what.into(),
            code,
        }
    }

    pub(crate) fn codec(what: impl Into<String>) -> impl FnOnce(millrace_protocol::Error) -> Error {
        let what = what.into();
        move |source| Error::Codec { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
