//! Records inside an uncompressed batch body.
//!
//! Record layout: length (varint), attributes (i8), timestamp_delta (varlong), offset_delta (varint), key (varint
//! length, -1 = null), value (likewise), header count (varint), headers (key: varint length + bytes, value: varint
//! length + bytes, -1 = null).

use bytes::Bytes;

use crate::codec::Reader;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// One record with its absolute offset and timestamp. Keys and values are slices of the batch (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Iterates over the records of an uncompressed record section.
#[derive(Debug)]
pub struct RecordIter {
    r: Reader,
    base_offset: i64,
    base_timestamp: i64,
    left: i32,
}

impl RecordIter {
    /// `records` is the section after the 61-byte batch header; `count` the header's records_count.
    pub fn new(records: Bytes, base_offset: i64, base_timestamp: i64, count: i32) -> Self {
        RecordIter {
            r: Reader::new(records),
            base_offset,
            base_timestamp,
            left: count,
        }
    }

    fn varbytes(r: &mut Reader) -> Result<Option<Bytes>> {
        let len = r.varint()?;
        if len < 0 {
            return Ok(None);
        }
        r.take(len as usize).map(Some)
    }

    fn read_one(&mut self) -> Result<Record> {
        let len = self.r.varint()?;
        if len < 0 || len as usize > self.r.remaining() {
            return Err(Error::CorruptBatch("record length out of range"));
        }
        // Fields are read straight from the section (no sub-slice per record, so one refcount increment less
        // per record on the processor's hot path), then checked to have stayed inside the record.
        let left_after = self.r.remaining() - len as usize;
        let r = &mut self.r;
        let _attributes = r.i8()?;
        let ts_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = Self::varbytes(r)?;
        let value = Self::varbytes(r)?;
        let n = r.varint()?;
        if n < 0 || n as usize > r.remaining().saturating_sub(left_after) {
            return Err(Error::CorruptBatch("header count out of range"));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let key = Self::varbytes(r)?.ok_or(Error::CorruptBatch("null header key"))?;
            let value = Self::varbytes(r)?;
            headers.push(Header { key, value });
        }
        let remaining = r.remaining();
        if remaining < left_after {
            return Err(Error::CorruptBatch("record fields overrun its length"));
        }
        // Bytes the record declares beyond its fields (a newer format's additions) are skipped.
        r.skip(remaining - left_after)?;
        Ok(Record {
            // A record's own delta is not bound by its batch's last offset delta: saturate, never overflow.
            offset: self.base_offset.saturating_add(i64::from(offset_delta)),
            timestamp: self.base_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.left <= 0 {
            return None;
        }
        self.left -= 1;
        let out = self.read_one();
        if out.is_err() {
            self.left = 0;
        }
        Some(out)
    }
}
