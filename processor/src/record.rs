//! The records that flow into and out of a pipeline.

use bytes::Bytes;
pub use millrace_protocol::records::Header;

/// A record read from a source partition. Key, value and headers are zero-copy slices of the stored batch (or
/// of its decompressed body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp as stored (CreateTime or LogAppendTime).
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl Message {
    /// A message for tests and the test driver.
    pub fn new(key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> Message {
        Message {
            partition: 0,
            offset: 0,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: Vec::new(),
        }
    }
}

/// A record a pipeline writes to a topic. The sink picks the partition from the key (Kafka's default
/// partitioner: murmur2 of the key bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp: i64,
    pub headers: Vec<Header>,
}

impl OutRecord {
    pub fn new(key: Option<Bytes>, value: Option<Bytes>, timestamp: i64) -> OutRecord {
        OutRecord {
            key,
            value,
            timestamp,
            headers: Vec::new(),
        }
    }

    /// Bytes this record adds to a batch, roughly (used to bound what a checkpoint carries).
    pub fn approx_size(&self) -> usize {
        16 + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 4)
                .sum::<usize>()
    }
}

impl From<Message> for OutRecord {
    /// The record unchanged (late records go to their side topic this way).
    fn from(m: Message) -> OutRecord {
        OutRecord {
            key: m.key,
            value: m.value,
            timestamp: m.timestamp,
            headers: m.headers,
        }
    }
}

/// The result of a window aggregation: one per (key, window).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult<K, V> {
    pub key: K,
    /// Inclusive, epoch milliseconds.
    pub window_start: i64,
    /// Exclusive, epoch milliseconds.
    pub window_end: i64,
    pub value: V,
}
