//! Hand-written wire primitives: the cursor that decodes, the writer that encodes, varints and the compact
//! (flexible-version) forms of strings, bytes and arrays. The generated message codecs are built only from these.

use bytes::{BufMut, Bytes, BytesMut};
use nom::number::complete::{be_f64, be_i16, be_i32, be_i64, be_i8, be_u16, be_u32};

use crate::error::{Error, Result};

/// A 16-byte UUID, as Kafka sends topic ids.
pub type Uuid = [u8; 16];

/// A tagged field this crate does not know, kept verbatim so that it survives a decode/encode round trip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawTaggedField {
    pub tag: u32,
    pub data: Bytes,
}

/// A cursor over one received frame.
///
/// Invariant: `pos <= buf.len()`. Byte and record fields are returned as slices of `buf` (no copy), so a decoded
/// Produce request keeps its record batches in the receive buffer.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

type NomResult<'a, T> = nom::IResult<&'a [u8], T, ()>;

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn need(&self, n: usize) -> Result<()> {
        if self.remaining() < n {
            Err(Error::Truncated {
                needed: n - self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    /// Runs a fixed-width nom parser at the cursor.
    fn fixed<T>(
        &mut self,
        width: usize,
        parser: impl for<'b> Fn(&'b [u8]) -> NomResult<'b, T>,
    ) -> Result<T> {
        self.need(width)?;
        let (_, value) = parser(self.rest()).map_err(|_| Error::Truncated { needed: width })?;
        self.pos += width;
        Ok(value)
    }

    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.i8()? != 0)
    }
    pub fn i8(&mut self) -> Result<i8> {
        self.fixed(1, |b| be_i8::<_, ()>(b))
    }
    pub fn i16(&mut self) -> Result<i16> {
        self.fixed(2, |b| be_i16::<_, ()>(b))
    }
    pub fn u16(&mut self) -> Result<u16> {
        self.fixed(2, |b| be_u16::<_, ()>(b))
    }
    pub fn i32(&mut self) -> Result<i32> {
        self.fixed(4, |b| be_i32::<_, ()>(b))
    }
    pub fn u32(&mut self) -> Result<u32> {
        self.fixed(4, |b| be_u32::<_, ()>(b))
    }
    pub fn i64(&mut self) -> Result<i64> {
        self.fixed(8, |b| be_i64::<_, ()>(b))
    }
    pub fn f64(&mut self) -> Result<f64> {
        self.fixed(8, |b| be_f64::<_, ()>(b))
    }

    pub fn uuid(&mut self) -> Result<Uuid> {
        self.need(16)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.buf[self.pos..self.pos + 16]);
        self.pos += 16;
        Ok(id)
    }

    /// Takes `n` bytes as a zero-copy slice of the frame.
    pub fn take(&mut self, n: usize) -> Result<Bytes> {
        self.need(n)?;
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.need(n)?;
        self.pos += n;
        Ok(())
    }

    /// An unsigned LEB128 varint of at most 32 bits (compact lengths, tags).
    pub fn uvarint(&mut self) -> Result<u32> {
        let (value, used) = decode_uvarint(self.rest())?;
        self.pos += used;
        u32::try_from(value).map_err(|_| Error::VarintOverflow)
    }

    /// A zigzag varint of at most 32 bits (record fields).
    pub fn varint(&mut self) -> Result<i32> {
        let (value, used) = decode_uvarint(self.rest())?;
        if value > u64::from(u32::MAX) {
            return Err(Error::VarintOverflow);
        }
        self.pos += used;
        let v = value as u32;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    /// A zigzag varint of at most 64 bits (record timestamps and offsets).
    pub fn varlong(&mut self) -> Result<i64> {
        let (value, used) = decode_uvarint(self.rest())?;
        self.pos += used;
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    /// Reads a length that must fit in what is left; `None` for the null marker (-1).
    fn checked_len(&self, len: i64) -> Result<Option<usize>> {
        if len == -1 {
            return Ok(None);
        }
        if len < 0 || len as u64 > self.remaining() as u64 {
            return Err(Error::InvalidLength(len));
        }
        Ok(Some(len as usize))
    }

    /// A length prefix: i16 for classic strings, i32 for classic bytes/arrays, uvarint(n+1) when compact.
    pub fn length(&mut self, compact: bool, wide: bool) -> Result<Option<usize>> {
        let len = if compact {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        self.checked_len(len)
    }

    pub fn nullable_string(&mut self, compact: bool) -> Result<Option<String>> {
        match self.length(compact, false)? {
            None => Ok(None),
            Some(n) => {
                let raw = &self.buf[self.pos..self.pos + n];
                let s = std::str::from_utf8(raw)
                    .map_err(|_| Error::InvalidUtf8)?
                    .to_owned();
                self.pos += n;
                Ok(Some(s))
            }
        }
    }

    pub fn string(&mut self, compact: bool, field: &'static str) -> Result<String> {
        self.nullable_string(compact)?
            .ok_or(Error::UnexpectedNull(field))
    }

    pub fn nullable_bytes(&mut self, compact: bool) -> Result<Option<Bytes>> {
        match self.length(compact, true)? {
            None => Ok(None),
            Some(n) => self.take(n).map(Some),
        }
    }

    pub fn bytes(&mut self, compact: bool, field: &'static str) -> Result<Bytes> {
        self.nullable_bytes(compact)?
            .ok_or(Error::UnexpectedNull(field))
    }

    /// An array count, `None` for a null array. A count larger than the bytes left is rejected before anything is
    /// allocated: every element takes at least one byte on the wire.
    pub fn array_len(&mut self, compact: bool) -> Result<Option<usize>> {
        self.length(compact, true)
    }

    /// Reads a tagged-field section, handing known tags to `known` (which returns false for tags it does not know)
    /// and keeping the rest verbatim.
    pub fn tagged_fields(
        &mut self,
        unknown: &mut Vec<RawTaggedField>,
        mut known: impl FnMut(u32, &mut Reader) -> Result<bool>,
    ) -> Result<()> {
        let count = self.uvarint()? as usize;
        if count > self.remaining() {
            return Err(Error::InvalidLength(count as i64));
        }
        for _ in 0..count {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            let data = self.take(size)?;
            let mut sub = Reader::new(data.clone());
            if !known(tag, &mut sub)? {
                unknown.push(RawTaggedField { tag, data });
            }
        }
        Ok(())
    }
}

/// Decodes an unsigned LEB128 varint of at most 10 bytes; returns the value and the bytes used.
pub fn decode_uvarint(buf: &[u8]) -> Result<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() < 10 {
        Err(Error::Truncated { needed: 1 })
    } else {
        Err(Error::VarintOverflow)
    }
}

pub fn put_uvarint(buf: &mut impl BufMut, mut value: u64) {
    if value < 0x80 {
        buf.put_u8(value as u8);
        return;
    }
    // Encoded on the stack and written with one call: record encoding writes several varints per record.
    let mut tmp = [0u8; 10];
    let mut n = 0;
    while value >= 0x80 {
        tmp[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    tmp[n] = value as u8;
    buf.put_slice(&tmp[..=n]);
}

pub fn put_varint(buf: &mut impl BufMut, value: i32) {
    put_uvarint(buf, u64::from(((value << 1) ^ (value >> 31)) as u32));
}

pub fn put_varlong(buf: &mut impl BufMut, value: i64) {
    put_uvarint(buf, ((value << 1) ^ (value >> 63)) as u64);
}

/// Size in bytes of `value` as an unsigned varint.
pub fn uvarint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

/// The encoder for one response (or request) frame.
///
/// Small fields go into a contiguous buffer; record sets at least `ZERO_COPY_MIN` long are kept as separate
/// `Bytes` chunks (slices of the mapped segment) so that a fetch response is written with vectored I/O and never
/// copies stored batches. The 4-byte size prefix is filled in by [`Writer::finish`].
#[derive(Debug, Default)]
pub struct Writer {
    buf: BytesMut,
    chunks: Vec<Bytes>,
    len: usize,
}

const ZERO_COPY_MIN: usize = 4096;

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: BytesMut::with_capacity(n),
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Bytes written so far, across chunks.
    pub fn len(&self) -> usize {
        self.len + self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn put_bool(&mut self, v: bool) {
        self.buf.put_i8(i8::from(v));
    }
    pub fn put_i8(&mut self, v: i8) {
        self.buf.put_i8(v);
    }
    pub fn put_i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }
    pub fn put_u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }
    pub fn put_i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }
    pub fn put_u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }
    pub fn put_i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    pub fn put_f64(&mut self, v: f64) {
        self.buf.put_f64(v);
    }
    pub fn put_uuid(&mut self, v: &Uuid) {
        self.buf.put_slice(v);
    }
    pub fn put_slice(&mut self, v: &[u8]) {
        self.buf.put_slice(v);
    }
    pub fn put_uvarint(&mut self, v: u64) {
        put_uvarint(&mut self.buf, v);
    }

    /// Appends a byte run, without copying it when it is large.
    pub fn put_bytes(&mut self, b: &Bytes) {
        if b.len() >= ZERO_COPY_MIN {
            if !self.buf.is_empty() {
                let head = self.buf.split().freeze();
                self.len += head.len();
                self.chunks.push(head);
            }
            self.len += b.len();
            self.chunks.push(b.clone());
        } else {
            self.buf.put_slice(b);
        }
    }

    /// Writes a length prefix in the classic (i16 or i32) or compact (uvarint n+1) form; `None` is null.
    pub fn put_length(&mut self, len: Option<usize>, compact: bool, wide: bool) {
        match (len, compact) {
            (None, true) => self.put_uvarint(0),
            (Some(n), true) => self.put_uvarint(n as u64 + 1),
            (None, false) if wide => self.put_i32(-1),
            (None, false) => self.put_i16(-1),
            (Some(n), false) if wide => self.put_i32(n as i32),
            (Some(n), false) => self.put_i16(n as i16),
        }
    }

    pub fn put_nullable_string(&mut self, v: Option<&str>, compact: bool) {
        self.put_length(v.map(str::len), compact, false);
        if let Some(s) = v {
            self.put_slice(s.as_bytes());
        }
    }

    pub fn put_nullable_bytes(&mut self, v: Option<&Bytes>, compact: bool) {
        self.put_length(v.map(Bytes::len), compact, true);
        if let Some(b) = v {
            self.put_bytes(b);
        }
    }

    /// Writes the tagged fields section: known fields (already encoded, sorted by tag) and unknown ones, merged in
    /// tag order as the spec requires.
    pub fn put_tagged_fields(&mut self, known: &mut [(u32, BytesMut)], unknown: &[RawTaggedField]) {
        self.put_uvarint((known.len() + unknown.len()) as u64);
        let mut unknown = unknown.iter().peekable();
        for (tag, data) in known.iter() {
            while let Some(u) = unknown.next_if(|u| u.tag < *tag) {
                self.put_raw_tag(u.tag, &u.data);
            }
            self.put_raw_tag(*tag, data);
        }
        for u in unknown {
            self.put_raw_tag(u.tag, &u.data);
        }
    }

    fn put_raw_tag(&mut self, tag: u32, data: &[u8]) {
        self.put_uvarint(u64::from(tag));
        self.put_uvarint(data.len() as u64);
        self.put_slice(data);
    }

    /// Encodes a nested value into a fresh buffer (used for tagged fields, whose size precedes them). Tagged
    /// values are small, so the copy is irrelevant.
    pub fn try_sub(f: impl FnOnce(&mut Writer) -> Result<()>) -> Result<BytesMut> {
        let mut w = Writer::new();
        f(&mut w)?;
        let mut out = BytesMut::with_capacity(w.len());
        for c in w.chunks {
            out.extend_from_slice(&c);
        }
        out.extend_from_slice(&w.buf);
        Ok(out)
    }

    /// Ends the frame: returns the chunks to write, the first one starting with the 4-byte size prefix.
    pub fn finish_frame(mut self) -> Vec<Bytes> {
        let total = self.len() as u32;
        let tail = self.buf.split().freeze();
        let mut out = Vec::with_capacity(self.chunks.len() + 2);
        out.push(Bytes::copy_from_slice(&total.to_be_bytes()));
        out.extend(self.chunks);
        if !tail.is_empty() {
            out.push(tail);
        }
        out
    }

    /// Ends an encoding without a size prefix, into one contiguous buffer (tests, requests we send).
    pub fn into_bytes(self) -> Bytes {
        if self.chunks.is_empty() {
            return self.buf.freeze();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&self.buf);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trips(v in any::<u32>()) {
            let mut w = Writer::new();
            w.put_uvarint(u64::from(v));
            prop_assert_eq!(w.len(), uvarint_len(u64::from(v)));
            let mut r = Reader::new(w.into_bytes());
            prop_assert_eq!(r.uvarint().unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn varint_and_varlong_round_trip(a in any::<i32>(), b in any::<i64>()) {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, a);
            put_varlong(&mut buf, b);
            let mut r = Reader::new(buf.freeze());
            prop_assert_eq!(r.varint().unwrap(), a);
            prop_assert_eq!(r.varlong().unwrap(), b);
        }

        #[test]
        fn strings_round_trip(s in proptest::option::of(".{0,40}"), compact in any::<bool>()) {
            let mut w = Writer::new();
            w.put_nullable_string(s.as_deref(), compact);
            let mut r = Reader::new(w.into_bytes());
            prop_assert_eq!(r.nullable_string(compact).unwrap(), s);
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(Bytes::from(data));
            let _ = r.nullable_string(true);
            let _ = r.array_len(false);
            let _ = r.varlong();
            let _ = r.tagged_fields(&mut Vec::new(), |_, _| Ok(false));
        }
    }

    #[test]
    fn varint_known_vectors() {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, -1);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, 300);
        assert_eq!(&buf[..], &[0x01, 0x02, 0xd8, 0x04]);
    }

    #[test]
    fn oversized_lengths_are_rejected_before_allocation() {
        let mut r = Reader::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]));
        assert_eq!(
            r.array_len(false),
            Err(Error::InvalidLength(i32::MAX as i64))
        );
    }

    #[test]
    fn large_bytes_stay_separate_chunks() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let mut w = Writer::new();
        w.put_i32(1);
        w.put_nullable_bytes(Some(&big), false);
        w.put_i16(2);
        let chunks = w.finish_frame();
        assert_eq!(chunks.len(), 4);
        assert_eq!(&chunks[0][..], &(4u32 + 4 + 10_000 + 2).to_be_bytes());
        assert_eq!(chunks[2].as_ptr(), big.as_ptr());
    }
}
