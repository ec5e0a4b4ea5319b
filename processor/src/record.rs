//! The records that flow into and out of a pipeline.

use bytes::Bytes;
pub use millrace_protocol::records::Header;

use crate::error::Result;
use crate::state::{StateCodec, StateReader, StateWriter};

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

/// So that joins and custom operators can buffer whole messages in their state. Decoding copies key, value and
/// headers out of the snapshot (the restored message no longer shares a batch).
impl StateCodec for Message {
    fn encode(&self, w: &mut StateWriter) {
        w.i32(self.partition);
        w.i64(self.offset);
        w.i64(self.timestamp);
        w.opt_bytes(self.key.as_deref());
        w.opt_bytes(self.value.as_deref());
        w.u32(self.headers.len() as u32);
        for h in &self.headers {
            w.bytes(&h.key);
            w.opt_bytes(h.value.as_deref());
        }
    }

    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let partition = r.i32()?;
        let offset = r.i64()?;
        let timestamp = r.i64()?;
        let key = r.opt_bytes()?.map(Bytes::copy_from_slice);
        let value = r.opt_bytes()?.map(Bytes::copy_from_slice);
        // A header takes at least its key's length (4) and its value's option tag (1).
        let n = r.count(5)?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let key = Bytes::copy_from_slice(r.bytes()?);
            let value = r.opt_bytes()?.map(Bytes::copy_from_slice);
            headers.push(Header { key, value });
        }
        Ok(Message {
            partition,
            offset,
            timestamp,
            key,
            value,
            headers,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn message_round_trips(partition in any::<i32>(), offset in any::<i64>(), ts in any::<i64>(),
                               key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                               value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                               headers in proptest::collection::vec(
                                   (proptest::collection::vec(any::<u8>(), 0..8),
                                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..4)) {
            let m = Message {
                partition,
                offset,
                timestamp: ts,
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers
                    .into_iter()
                    .map(|(k, v)| Header { key: k.into(), value: v.map(Bytes::from) })
                    .collect(),
            };
            let mut w = StateWriter::new();
            m.encode(&mut w);
            let mut r = StateReader::new(&w.buf);
            prop_assert_eq!(Message::decode(&mut r).unwrap(), m);
            prop_assert!(r.is_empty());
            // Every proper prefix is truncated, and says so.
            for cut in 0..w.buf.len() {
                prop_assert!(Message::decode(&mut StateReader::new(&w.buf[..cut])).is_err());
            }
        }

        #[test]
        fn message_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Message::decode(&mut StateReader::new(&data));
        }
    }
}
