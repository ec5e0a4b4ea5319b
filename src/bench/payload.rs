//! The records a benchmark producer sends, and the batches that carry them.
//!
//! Values are `--record-size` bytes of random capital letters (as Kafka's producer-perf-test writes, so that
//! compression has something to do), generated once per connection. When the value has room, its first 8 bytes
//! are the send time in microseconds since the Unix epoch (big-endian): `bench e2e` reads it back for
//! sub-millisecond latency; the record timestamp (milliseconds) is the fallback. Nothing is allocated per record.

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use millrace_protocol::records::{
    compression, BatchBuilder, Compression, BATCH_HEADER_LEN, CRC_START, LOG_OVERHEAD,
};

use super::KeyDistribution;

/// Bytes at the start of a value that carry the send time.
pub const STAMP_LEN: usize = 8;

/// Generates records for one connection.
pub struct RecordGen {
    keys: KeyDistribution,
    value: Vec<u8>,
    rng: u64,
    /// Next sequential key, and the step between this connection's keys (connections interleave).
    seq: u64,
    seq_step: u64,
    key_buf: [u8; 20],
}

impl RecordGen {
    pub fn new(
        keys: KeyDistribution,
        record_size: usize,
        seed: u64,
        seq_start: u64,
        seq_step: u64,
    ) -> Self {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let value = (0..record_size)
            .map(|_| b'A' + (xorshift(&mut rng) % 26) as u8)
            .collect();
        RecordGen {
            keys,
            value,
            rng,
            seq: seq_start,
            seq_step: seq_step.max(1),
            key_buf: [0; 20],
        }
    }

    /// The longest key this generator makes, for sizing batches.
    pub fn max_key_len(&self) -> usize {
        match self.keys {
            KeyDistribution::None => 0,
            KeyDistribution::Uniform(n) => decimal_len(n.saturating_sub(1)),
            KeyDistribution::Sequential => 20,
        }
    }

    /// Sets the send time carried by the values that follow (no-op for values shorter than the stamp).
    pub fn stamp(&mut self, micros: i64) {
        if let Some(head) = self.value.get_mut(..STAMP_LEN) {
            head.copy_from_slice(&micros.to_be_bytes());
        }
    }

    /// Appends one record to `batch`; returns its payload bytes (key + value).
    pub fn push(&mut self, batch: &mut BatchBuilder, timestamp_ms: i64) -> usize {
        let key_len = match self.keys {
            KeyDistribution::None => None,
            KeyDistribution::Uniform(n) => {
                let k = xorshift(&mut self.rng) % n;
                Some(write_decimal(&mut self.key_buf, k))
            }
            KeyDistribution::Sequential => {
                let k = self.seq;
                self.seq += self.seq_step;
                Some(write_decimal(&mut self.key_buf, k))
            }
        };
        let key = key_len.map(|n| &self.key_buf[20 - n..]);
        batch.push(timestamp_ms, key, Some(&self.value), &[]);
        key_len.unwrap_or(0) + self.value.len()
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn decimal_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Writes `v` in decimal at the end of `buf`; returns how many digits.
fn write_decimal(buf: &mut [u8; 20], mut v: u64) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return buf.len() - i;
        }
    }
}

/// Finishes a batch, compressing its record section with `codec` (the header's attributes, length and CRC follow).
pub fn finish(batch: BatchBuilder, codec: Compression) -> Result<Bytes> {
    let plain = batch.finish();
    let bits: i16 = match codec {
        Compression::None => return Ok(plain),
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    };
    let packed = compression::compress(codec, &plain[BATCH_HEADER_LEN..])
        .with_context(|| format!("compressing a batch with {codec:?}"))?;
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + packed.len());
    out.extend_from_slice(&plain[..BATCH_HEADER_LEN]);
    out.extend_from_slice(&packed);
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let attrs = i16::from_be_bytes([out[21], out[22]]) | bits;
    out[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use millrace_protocol::records::{compression::decompress, validate_batch, RecordIter};

    #[test]
    fn batches_validate_and_decode_for_every_codec() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut g = RecordGen::new(KeyDistribution::Sequential, 100, 7, 5, 2);
            g.stamp(1234);
            let mut b = BatchBuilder::new(1000);
            for _ in 0..10 {
                g.push(&mut b, 1000);
            }
            let batch = finish(b, codec).unwrap();
            let h = validate_batch(&batch).unwrap();
            assert_eq!(h.records_count, 10);
            assert_eq!(h.compression().unwrap(), codec);
            let body = decompress(codec, &batch[BATCH_HEADER_LEN..]).unwrap();
            let recs: Vec<_> = RecordIter::new(body, 0, h.base_timestamp, h.records_count)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(recs[0].key.as_deref(), Some(&b"5"[..]));
            assert_eq!(recs[1].key.as_deref(), Some(&b"7"[..]));
            let v = recs[9].value.as_ref().unwrap();
            assert_eq!(v.len(), 100);
            assert_eq!(&v[..8], &1234i64.to_be_bytes());
        }
    }

    #[test]
    fn decimal_keys() {
        let mut buf = [0u8; 20];
        let n = write_decimal(&mut buf, 0);
        assert_eq!(&buf[20 - n..], b"0");
        let n = write_decimal(&mut buf, u64::MAX);
        assert_eq!(&buf[20 - n..], u64::MAX.to_string().as_bytes());
        assert_eq!(decimal_len(999), 3);
    }
}
