//! Encoding operator state and checkpoints: a small length-prefixed binary format, and the [`StateCodec`] trait
//! that keys and accumulators implement so that keyed state can be snapshotted and restored.
//!
//! Every decoder here reads untrusted bytes (a checkpoint on disk may be damaged): lengths are checked against
//! the bytes left before anything is allocated, and failures are errors, never panics.

use bytes::Bytes;

use crate::error::{Error, Result};

/// Appends primitive values to a buffer.
#[derive(Debug, Default)]
pub struct StateWriter {
    pub buf: Vec<u8>,
}

impl StateWriter {
    pub fn new() -> Self {
        StateWriter { buf: Vec::new() }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads what a [`StateWriter`] wrote.
#[derive(Debug)]
pub struct StateReader<'a> {
    buf: &'a [u8],
}

fn short() -> Error {
    Error::CorruptState("truncated".into())
}

impl<'a> StateReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        StateReader { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(short());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            t => Err(Error::CorruptState(format!("bad option tag {t}"))),
        }
    }
    pub fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Error::CorruptState("bad utf-8".into()))
    }
    /// A count of items that each take at least `min_item` bytes: checked against the bytes left, so a corrupt
    /// count cannot make the caller allocate more than the input could hold.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(Error::CorruptState(format!(
                "count {n} larger than the data"
            )));
        }
        Ok(n)
    }
}

/// A value that can be written into a state snapshot and read back: keys and window accumulators.
pub trait StateCodec: Sized {
    fn encode(&self, w: &mut StateWriter);
    fn decode(r: &mut StateReader<'_>) -> Result<Self>;
}

/// A key of a keyed stream: hashed to pick the task that owns it, and snapshotted with its state.
pub trait Key: StateCodec + Clone + Eq + std::hash::Hash + Ord + Send + 'static {
    /// The bytes the partitioner hashes (and that a sink writes as the record key): for strings their UTF-8,
    /// for integers their big-endian bytes, as Kafka's serializers write them.
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]>;

    /// The key as state keeps it for long: a key read from storage may share the buffer of the whole batch
    /// it came in, which state must not pin (a `Bytes` key is copied out; other keys own their bytes).
    fn to_stored(&self) -> Self {
        self.clone()
    }
}

impl StateCodec for u64 {
    fn encode(&self, w: &mut StateWriter) {
        w.u64(*self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.u64()
    }
}
impl StateCodec for i64 {
    fn encode(&self, w: &mut StateWriter) {
        w.i64(*self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.i64()
    }
}
impl StateCodec for f64 {
    fn encode(&self, w: &mut StateWriter) {
        w.f64(*self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.f64()
    }
}
impl StateCodec for String {
    fn encode(&self, w: &mut StateWriter) {
        w.str(self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.str().map(str::to_string)
    }
}
impl StateCodec for Bytes {
    fn encode(&self, w: &mut StateWriter) {
        w.bytes(self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.bytes().map(Bytes::copy_from_slice)
    }
}
impl StateCodec for Vec<u8> {
    fn encode(&self, w: &mut StateWriter) {
        w.bytes(self)
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        r.bytes().map(<[u8]>::to_vec)
    }
}
impl<T: StateCodec> StateCodec for Option<T> {
    fn encode(&self, w: &mut StateWriter) {
        match self {
            None => w.u8(0),
            Some(v) => {
                w.u8(1);
                v.encode(w);
            }
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(None),
            1 => T::decode(r).map(Some),
            t => Err(Error::CorruptState(format!("bad option tag {t}"))),
        }
    }
}
impl<A: StateCodec, B: StateCodec> StateCodec for (A, B) {
    fn encode(&self, w: &mut StateWriter) {
        self.0.encode(w);
        self.1.encode(w);
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        Ok((A::decode(r)?, B::decode(r)?))
    }
}

impl Key for Bytes {
    fn to_stored(&self) -> Self {
        Bytes::copy_from_slice(self)
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
    }
}
impl Key for String {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }
}
impl Key for i64 {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.to_be_bytes().to_vec())
    }
}
impl Key for u64 {
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.to_be_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn values_round_trip(a in any::<u64>(), b in any::<i64>(), s in ".*", v in proptest::collection::vec(any::<u8>(), 0..64),
                             o in proptest::option::of(any::<i64>())) {
            let mut w = StateWriter::new();
            a.encode(&mut w);
            b.encode(&mut w);
            s.clone().encode(&mut w);
            v.clone().encode(&mut w);
            o.encode(&mut w);
            (a, b).encode(&mut w);
            let mut r = StateReader::new(&w.buf);
            prop_assert_eq!(u64::decode(&mut r).unwrap(), a);
            prop_assert_eq!(i64::decode(&mut r).unwrap(), b);
            prop_assert_eq!(String::decode(&mut r).unwrap(), s);
            prop_assert_eq!(Vec::<u8>::decode(&mut r).unwrap(), v);
            prop_assert_eq!(Option::<i64>::decode(&mut r).unwrap(), o);
            prop_assert_eq!(<(u64, i64)>::decode(&mut r).unwrap(), (a, b));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = StateReader::new(&data);
            let _ = String::decode(&mut r);
            let mut r = StateReader::new(&data);
            let _ = r.count(8);
            let _ = Option::<(Bytes, f64)>::decode(&mut r);
        }
    }
}
