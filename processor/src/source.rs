//! Reading source partitions: record batches from a zero-copy read of the log, decoded into [`Message`]s.
//!
//! Stored batches were CRC-checked when they were appended; here they are still parsed defensively (they come
//! from disk): a malformed batch is an error for the caller, never a panic.

use bytes::Bytes;
use millrace_protocol::records::{
    attributes, compression, BatchIter, Compression, RecordIter, BATCH_HEADER_LEN,
};

use crate::error::Result;
use crate::record::Message;

/// Calls `f` for every record at or after `from` in `batches` (whole batches as a log read returns them);
/// control batches (transaction markers) are skipped. Returns the offset after the last batch seen, or `from`
/// if there was none.
pub fn for_each_record(
    batches: &Bytes,
    from: i64,
    partition: i32,
    mut f: impl FnMut(Message),
) -> Result<i64> {
    let mut next = from;
    let mut pos = 0usize;
    for item in BatchIter::new(batches) {
        let (h, raw) = item?;
        let start = pos;
        pos += raw.len();
        let batch_next = h.last_offset() + 1;
        if batch_next <= from {
            continue;
        }
        next = next.max(batch_next);
        if h.attributes & attributes::CONTROL != 0 || h.records_count == 0 {
            continue;
        }
        let body = batches.slice(start + BATCH_HEADER_LEN..start + raw.len());
        let body = match h.compression()? {
            Compression::None => body,
            codec => compression::decompress(codec, &body)?,
        };
        let log_append = h.attributes & attributes::TIMESTAMP_LOG_APPEND != 0;
        for rec in RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count) {
            let rec = rec?;
            if rec.offset < from {
                continue;
            }
            f(Message {
                partition,
                offset: rec.offset,
                timestamp: if log_append {
                    h.max_timestamp
                } else {
                    rec.timestamp
                },
                key: rec.key,
                value: rec.value,
                headers: rec.headers,
            });
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `checkpoint` fuzz target: a batch whose base offset is near i64::MAX made the next offset
    /// (`last_offset() + 1`) overflow. It is now a corrupt batch.
    #[test]
    fn a_batch_at_the_end_of_the_offsets_is_an_error() {
        let data: &[u8] = &[
            0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf8, 0x00, 0x00, 0x00, 0x32, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x00, 0x60, 0x00, 0x00, 0x00, 0x01, 0x07, 0x00, 0x00, 0x00, 0x04,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff,
            0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2d, 0x00,
            0x07, 0x00, 0xff, 0xff, 0xc5, 0xff, 0x40, 0xff, 0xff,
        ];
        assert!(for_each_record(&Bytes::copy_from_slice(data), 0, 0, |_| {}).is_err());
    }
    use millrace_protocol::records::{set_base_offset, BatchBuilder};

    fn batch(base: i64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000);
        for i in 0..n {
            b.push(
                1000 + i as i64,
                Some(b"k"),
                Some(format!("v{i}").as_bytes()),
                &[],
            );
        }
        let mut v = b.finish().to_vec();
        set_base_offset(&mut v, base);
        v
    }

    #[test]
    fn skips_records_before_from() {
        let mut all = batch(0, 3);
        all.extend(batch(3, 2));
        let bytes = Bytes::from(all);
        let mut seen = Vec::new();
        let next = for_each_record(&bytes, 2, 0, |m| seen.push(m.offset)).unwrap_or(-1);
        assert_eq!(seen, vec![2, 3, 4]);
        assert_eq!(next, 5);
    }

    #[test]
    fn garbage_is_an_error() {
        let bytes = Bytes::from(vec![0u8; 70]);
        assert!(for_each_record(&bytes, 0, 0, |_| {}).is_err());
    }
}
