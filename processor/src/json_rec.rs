//! The element of a graph pipeline file: a record with its value parsed as JSON once, at the source.
//!
//! Invariant: `raw` is `Some` only while `value` is still exactly what the source record held (a sink then
//! writes the original bytes, and a late record goes out unchanged); every step that changes `value`
//! clears it.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Header, Message, OutRecord};
use crate::state::{StateCodec, StateReader, StateWriter};

#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    pub key: Option<Bytes>,
    /// Event time.
    pub timestamp: i64,
    /// The value as JSON (`Null` when the value was missing or not JSON).
    pub value: Value,
    pub raw: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl Rec {
    /// A source record; its event time is `timestamp`.
    pub fn from_message(m: Message, timestamp: i64) -> Rec {
        let value = m
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(Value::Null);
        Rec {
            key: m.key,
            timestamp,
            value,
            raw: m.value,
            headers: m.headers,
        }
    }

    /// A record made by a step (its value is new).
    pub fn derived(key: Option<Bytes>, timestamp: i64, value: Value) -> Rec {
        Rec {
            key,
            timestamp,
            value,
            raw: None,
            headers: Vec::new(),
        }
    }

    /// The value at a dotted path (a field whose name is the whole path wins).
    pub fn get(&self, path: &str) -> Option<&Value> {
        lookup(&self.value, path)
    }

    /// The record as a sink writes it, keyed by `key`.
    pub fn into_record(self, key: Option<Bytes>) -> OutRecord {
        let value = match self.raw {
            Some(raw) => Some(raw),
            None if self.value.is_null() => None,
            None => serde_json::to_vec(&self.value).ok().map(Bytes::from),
        };
        OutRecord {
            key,
            value,
            timestamp: self.timestamp,
            headers: self.headers,
        }
    }
}

impl From<Rec> for OutRecord {
    fn from(r: Rec) -> OutRecord {
        let key = r.key.clone();
        r.into_record(key)
    }
}

/// The value at a dotted path of a JSON object (a field whose name is the whole path wins: projections keep
/// `a.b` as one field).
pub fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    v.get(path)
        .or_else(|| path.split('.').try_fold(v, |v, part| v.get(part)))
}

/// Key bytes from a JSON value: strings as their text, anything else as its JSON.
pub fn key_of(v: &Value) -> Bytes {
    match v {
        Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
        other => Bytes::from(other.to_string()),
    }
}

impl StateCodec for Rec {
    fn encode(&self, w: &mut StateWriter) {
        w.opt_bytes(self.key.as_deref());
        w.i64(self.timestamp);
        match &self.raw {
            Some(raw) => {
                w.u8(1);
                w.bytes(raw);
            }
            None => {
                w.u8(0);
                w.bytes(&serde_json::to_vec(&self.value).unwrap_or_default());
            }
        }
        w.u32(self.headers.len() as u32);
        for h in &self.headers {
            w.bytes(&h.key);
            w.opt_bytes(h.value.as_deref());
        }
    }

    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let key = r.opt_bytes()?.map(Bytes::copy_from_slice);
        let timestamp = r.i64()?;
        let (raw, value) = match r.u8()? {
            1 => {
                let raw = Bytes::copy_from_slice(r.bytes()?);
                let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                (Some(raw), value)
            }
            0 => {
                let value = serde_json::from_slice(r.bytes()?)
                    .map_err(|e| Error::CorruptState(format!("a record's JSON: {e}")))?;
                (None, value)
            }
            t => return Err(Error::CorruptState(format!("bad record tag {t}"))),
        };
        let mut headers = Vec::new();
        for _ in 0..r.count(5)? {
            headers.push(Header {
                key: Bytes::copy_from_slice(r.bytes()?),
                value: r.opt_bytes()?.map(Bytes::copy_from_slice),
            });
        }
        Ok(Rec {
            key,
            timestamp,
            value,
            raw,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_raw_and_derived() {
        let m = Message::new(Some(b"k"), Some(br#"{"a": {"b": 1}}"#), 5);
        let r = Rec::from_message(m, 7);
        assert_eq!(r.get("a.b"), Some(&Value::from(1)));
        let d = Rec::derived(None, 9, serde_json::json!({"x": [1, 2]}));
        for rec in [r, d] {
            let mut w = StateWriter::new();
            rec.encode(&mut w);
            let back = Rec::decode(&mut StateReader::new(&w.buf)).unwrap();
            assert_eq!(back, rec);
            for cut in 0..w.buf.len() {
                assert!(Rec::decode(&mut StateReader::new(&w.buf[..cut])).is_err());
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Rec::decode(&mut StateReader::new(&data));
        }
    }
}
