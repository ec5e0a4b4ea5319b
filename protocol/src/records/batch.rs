//! The batch header and its validation.

use crate::error::{Error, Result};

/// Bytes before `batch_length` counts: base_offset (8) and batch_length (4).
pub const LOG_OVERHEAD: usize = 12;
/// The whole header, up to and including records_count.
pub const BATCH_HEADER_LEN: usize = 61;
/// Where the CRC-32C coverage starts (the attributes field).
pub const CRC_START: usize = 21;

/// Bits of the attributes field.
pub mod attributes {
    pub const COMPRESSION_MASK: i16 = 0x07;
    pub const TIMESTAMP_LOG_APPEND: i16 = 0x08;
    pub const TRANSACTIONAL: i16 = 0x10;
    pub const CONTROL: i16 = 0x20;
    pub const DELETE_HORIZON: i16 = 0x40;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(attrs: i16) -> Result<Compression> {
        Ok(match attrs & attributes::COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(Error::UnsupportedCompression(other as u8)),
        })
    }
}

/// The parsed fixed header of one batch.
///
/// Invariant (for a header returned by [`BatchHeader::parse`]): `batch_length >= BATCH_HEADER_LEN - LOG_OVERHEAD`,
/// `magic == 2`, `last_offset_delta >= 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks the shape (magic, lengths) but not the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(Error::Truncated {
                needed: BATCH_HEADER_LEN - buf.len(),
            });
        }
        let h = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if h.magic != 2 {
            return Err(Error::CorruptBatch("magic is not 2"));
        }
        if (h.batch_length as i64) < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(Error::CorruptBatch("batch length shorter than its header"));
        }
        if h.last_offset_delta < 0 || h.records_count < 0 {
            return Err(Error::CorruptBatch("negative record count or offset delta"));
        }
        // Every reader computes the next offset as `last_offset() + 1`: a batch whose last offset is the
        // largest i64 (or beyond) cannot be followed, and would overflow that sum.
        if h.base_offset
            .checked_add(i64::from(h.last_offset_delta) + 1)
            .is_none()
        {
            return Err(Error::CorruptBatch("last offset out of range"));
        }
        Ok(h)
    }

    /// The whole batch's size on disk and on the wire.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression(&self) -> Result<Compression> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & attributes::TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & attributes::CONTROL != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence of the batch's last record, wrapping at i32::MAX as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }
}

/// Validates one whole batch: shape, that `buf` holds exactly `total_len` bytes, and the CRC-32C.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader> {
    let h = BatchHeader::parse(buf)?;
    if buf.len() != h.total_len() {
        return Err(Error::CorruptBatch("batch length does not match its bytes"));
    }
    if crc32c::crc32c(&buf[CRC_START..]) != h.crc {
        return Err(Error::CorruptBatch("CRC-32C mismatch"));
    }
    if h.records_count > 0 && i64::from(h.records_count) != i64::from(h.last_offset_delta) + 1 {
        // Kafka requires records_count to match the offset span for batches straight from a producer.
        return Err(Error::CorruptBatch(
            "record count does not match last offset delta",
        ));
    }
    Ok(h)
}

/// Iterates over consecutive batches in a byte range, stopping (with an error) at the first malformed one.
/// Validates shape and length, not the CRC: callers that need it call [`validate_batch`] on each slice.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter { buf, pos: 0 }
    }

    /// Bytes consumed by the batches returned so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let h = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.pos = self.buf.len();
                return Some(Err(e));
            }
        };
        let len = h.total_len();
        if rest.len() < len {
            self.pos = self.buf.len();
            return Some(Err(Error::Truncated {
                needed: len - rest.len(),
            }));
        }
        self.pos += len;
        Some(Ok((h, &rest[..len])))
    }
}

/// Rewrites the base offset of a batch in place. The CRC does not cover it, so nothing else changes.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the producer id, epoch and base sequence of a whole batch in place and recomputes its CRC (which
/// covers them): a batch built for one cluster's producer id is sent to another cluster under that one's.
/// Errors if `buf` is shorter than a batch header.
pub fn set_producer(
    buf: &mut [u8],
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
) -> Result<()> {
    if buf.len() < BATCH_HEADER_LEN {
        return Err(Error::CorruptBatch("batch shorter than its header"));
    }
    buf[43..51].copy_from_slice(&producer_id.to_be_bytes());
    buf[51..53].copy_from_slice(&epoch.to_be_bytes());
    buf[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::BatchBuilder;

    /// A stored batch whose last offset would be i64::MAX or beyond is refused: every reader adds 1 to it.
    #[test]
    fn a_last_offset_at_the_end_of_i64_is_corrupt() {
        let mut b = BatchBuilder::new(0);
        b.push(0, Some(b"k"), Some(b"v"), &[]);
        b.push(0, Some(b"k"), Some(b"v"), &[]);
        let mut bytes = b.finish().to_vec();
        assert!(BatchHeader::parse(&bytes).is_ok());
        for base in [i64::MAX, i64::MAX - 1] {
            bytes[0..8].copy_from_slice(&base.to_be_bytes());
            assert!(
                matches!(BatchHeader::parse(&bytes), Err(Error::CorruptBatch(_))),
                "base offset {base}"
            );
        }
        bytes[0..8].copy_from_slice(&(i64::MAX - 2).to_be_bytes());
        let h = BatchHeader::parse(&bytes).expect("the last offset is i64::MAX - 1");
        assert_eq!(h.last_offset() + 1, i64::MAX);
    }
}
