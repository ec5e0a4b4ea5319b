//! Building uncompressed batches: for internal topics, pipeline outputs, tests and the benchmark client.

use bytes::{BufMut, Bytes, BytesMut};

use super::batch::{BATCH_HEADER_LEN, CRC_START, LOG_OVERHEAD};
use crate::codec::{put_varint, put_varlong, uvarint_len};

/// Accumulates records, then [`BatchBuilder::finish`] writes the header and CRC.
///
/// Invariant: `buf` holds a reserved 61-byte header followed by the encoded records appended so far.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    base_offset: i64,
    partition_leader_epoch: i32,
    last_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
}

fn zigzag_len32(v: i32) -> usize {
    uvarint_len(u64::from(((v << 1) ^ (v >> 31)) as u32))
}
fn zigzag_len64(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> Self {
        BatchBuilder::with_buffer(BytesMut::with_capacity(1024), base_timestamp)
    }

    /// A builder whose buffer holds `bytes` before it grows: callers that know the batch's size (the
    /// processor's output batches) avoid the copies of repeated doubling.
    pub fn with_capacity(base_timestamp: i64, bytes: usize) -> Self {
        BatchBuilder::with_buffer(
            BytesMut::with_capacity(bytes.max(BATCH_HEADER_LEN)),
            base_timestamp,
        )
    }

    /// Like [`BatchBuilder::new`], but builds into `buf` (cleared first): a producer can recycle one buffer per
    /// partition (see `Bytes::try_into_mut`) instead of allocating and growing a new one for every batch.
    pub fn with_buffer(mut buf: BytesMut, base_timestamp: i64) -> Self {
        buf.clear();
        buf.put_bytes(0, BATCH_HEADER_LEN);
        BatchBuilder {
            buf,
            base_offset: 0,
            partition_leader_epoch: 0,
            last_delta: -1,
            base_timestamp,
            max_timestamp: base_timestamp,
            count: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
        }
    }

    /// Marks the batch as written by an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets the header's base offset and partition leader epoch (when rewriting a stored batch).
    pub fn offsets(mut self, base_offset: i64, partition_leader_epoch: i32) -> Self {
        self.base_offset = base_offset;
        self.partition_leader_epoch = partition_leader_epoch;
        self
    }

    pub fn attributes(mut self, attributes: i16) -> Self {
        self.attributes = attributes;
        self
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch will take once finished.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let next = self.last_delta + 1;
        self.push_at(next, timestamp, key, value, headers);
    }

    /// Appends a record at an explicit offset delta (strictly greater than the previous one). Gaps are allowed:
    /// compaction rewrites batches keeping each surviving record's original offset.
    pub fn push_at(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let ts_delta = timestamp.wrapping_sub(self.base_timestamp);
        let bytes_len = |b: Option<&[u8]>| match b {
            None => zigzag_len32(-1),
            Some(b) => zigzag_len32(b.len() as i32) + b.len(),
        };
        let mut body = 1
            + zigzag_len64(ts_delta)
            + zigzag_len32(offset_delta)
            + bytes_len(key)
            + bytes_len(value);
        body += zigzag_len32(headers.len() as i32);
        for (k, v) in headers {
            body += bytes_len(Some(k)) + bytes_len(*v);
        }
        let b = &mut self.buf;
        b.reserve(body + 5);
        put_varint(b, body as i32);
        b.put_i8(0);
        put_varlong(b, ts_delta);
        put_varint(b, offset_delta);
        for part in [key, value] {
            match part {
                None => put_varint(b, -1),
                Some(x) => {
                    put_varint(b, x.len() as i32);
                    b.put_slice(x);
                }
            }
        }
        put_varint(b, headers.len() as i32);
        for (k, v) in headers {
            put_varint(b, k.len() as i32);
            b.put_slice(k);
            match v {
                None => put_varint(b, -1),
                Some(x) => {
                    put_varint(b, x.len() as i32);
                    b.put_slice(x);
                }
            }
        }
        self.count += 1;
        self.last_delta = offset_delta;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    /// Writes the header and CRC; returns the finished batch.
    pub fn finish(mut self) -> Bytes {
        let total = self.buf.len();
        let h = &mut self.buf[..BATCH_HEADER_LEN];
        h[0..8].copy_from_slice(&self.base_offset.to_be_bytes());
        h[8..12].copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
        h[12..16].copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        h[16] = 2;
        h[21..23].copy_from_slice(&self.attributes.to_be_bytes());
        h[23..27].copy_from_slice(&self.last_delta.max(0).to_be_bytes());
        h[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        h[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        h[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        h[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[CRC_START..]);
        self.buf[17..21].copy_from_slice(&crc.to_be_bytes());
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{set_producer, validate_batch, RecordIter};
    use proptest::prelude::*;

    #[test]
    fn set_producer_keeps_the_batch_valid() {
        let mut b = BatchBuilder::new(5).producer(7, 0, 0);
        b.push(5, Some(b"k"), Some(b"v"), &[]);
        let mut v = b.finish().to_vec();
        set_producer(&mut v, 4242, 3, 17).expect("header is whole");
        let h = validate_batch(&v).expect("valid after the rewrite");
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (4242, 3, 17)
        );
        assert!(set_producer(&mut v[..20], 1, 1, 1).is_err());
    }

    proptest! {
        #[test]
        fn built_batches_validate_and_read_back(
            recs in proptest::collection::vec(
                (0i64..1_000_000, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 1..20)
        ) {
            let mut b = BatchBuilder::new(1_700_000_000_000);
            for (ts, k, v) in &recs {
                b.push(1_700_000_000_000 + ts, k.as_deref(), v.as_deref(), &[(b"h", Some(b"x"))]);
            }
            let batch = b.finish();
            let h = validate_batch(&batch).unwrap();
            prop_assert_eq!(h.records_count as usize, recs.len());
            let it = RecordIter::new(batch.slice(BATCH_HEADER_LEN..), 100, h.base_timestamp, h.records_count);
            for (i, (rec, (ts, k, v))) in it.zip(recs.iter()).enumerate() {
                let rec = rec.unwrap();
                prop_assert_eq!(rec.offset, 100 + i as i64);
                prop_assert_eq!(rec.timestamp, 1_700_000_000_000 + ts);
                prop_assert_eq!(rec.key.as_deref(), k.as_deref());
                prop_assert_eq!(rec.value.as_deref(), v.as_deref());
                prop_assert_eq!(rec.headers.len(), 1);
            }
        }

        #[test]
        fn corrupt_batches_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<usize>()) {
            let _ = validate_batch(&data);
            let mut b = BatchBuilder::new(0);
            b.push(0, Some(b"k"), Some(b"v"), &[]);
            let good = b.finish();
            let mut bad = good.to_vec();
            let i = flip % bad.len();
            bad[i] ^= 0x5a;
            if i >= CRC_START || i == 16 || (8..12).contains(&i) || (17..21).contains(&i) {
                prop_assert!(validate_batch(&bad).is_err());
            }
            data.extend_from_slice(&good);
            for _ in crate::records::BatchIter::new(&data) {}
        }
    }
}
