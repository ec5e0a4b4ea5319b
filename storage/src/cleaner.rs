//! Log compaction for `cleanup.policy=compact`: keep only the latest record of each key in the closed segments,
//! keep every surviving record at its original offset, and drop tombstones (null values) once they are older
//! than `delete.retention.ms`.
//!
//! The cleaner works on a copy: it reads the sealed segments (immutable) without holding the log's lock, writes
//! each changed segment to `<base>.log.cleaned`, fsyncs it, and only then swaps it in under the write lock, so
//! appends are never blocked for more than a rename, and a crash leaves either the old or the new segment
//! (a stray `.cleaned` file is deleted on open). The active segment is never cleaned.

use std::collections::HashMap;

use bytes::Bytes;
use millrace_protocol::records::{
    attributes, compression, BatchBuilder, BatchHeader, BatchIter, Record, RecordIter,
    BATCH_HEADER_LEN,
};

use crate::error::Result;

/// What one cleaning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_rewritten: usize,
    pub records_removed: usize,
    /// When the oldest kept tombstone becomes removable (i64::MAX when none is kept).
    pub next_tombstone_expiry: i64,
}

/// The records of one batch (decompressed when needed). Control batches and undecodable ones yield `None`:
/// they are kept as they are.
pub fn batch_records(h: &BatchHeader, batch: &Bytes) -> Option<Vec<Record>> {
    if h.is_control() {
        return None;
    }
    let codec = h.compression().ok()?;
    let body = compression::decompress(codec, batch.get(BATCH_HEADER_LEN..)?).ok()?;
    RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count)
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

/// Walks the batches of a segment's bytes.
pub fn for_each_batch(data: &Bytes, mut f: impl FnMut(&BatchHeader, Bytes)) {
    let mut pos = 0;
    for (h, slice) in BatchIter::new(data).map_while(Result::ok) {
        f(&h, data.slice(pos..pos + slice.len()));
        pos += slice.len();
    }
}

/// The offset of the latest record of every key in `segments` (oldest first).
pub fn latest_offsets(segments: &[Bytes]) -> HashMap<Bytes, i64> {
    let mut latest = HashMap::new();
    for data in segments {
        for_each_batch(data, |h, batch| {
            for r in batch_records(h, &batch).unwrap_or_default() {
                if let Some(k) = r.key {
                    latest.insert(k, r.offset);
                }
            }
        });
    }
    latest
}

/// The cleaned content of one segment, or `None` when nothing in it can go.
pub fn clean_segment(
    data: &Bytes,
    latest: &HashMap<Bytes, i64>,
    now_ms: i64,
    delete_retention_ms: i64,
    stats: &mut CleanStats,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut changed = false;
    for_each_batch(data, |h, batch| {
        let Some(records) = batch_records(h, &batch) else {
            out.extend_from_slice(&batch);
            return;
        };
        let mut keep = |r: &Record| -> bool {
            let Some(k) = &r.key else { return true };
            if latest.get(k) != Some(&r.offset) {
                return false;
            }
            if r.value.is_none() {
                let expiry = r.timestamp.saturating_add(delete_retention_ms);
                if now_ms >= expiry {
                    return false;
                }
                stats.next_tombstone_expiry = stats.next_tombstone_expiry.min(expiry);
            }
            true
        };
        let kept: Vec<&Record> = records.iter().filter(|r| keep(r)).collect();
        if kept.len() == records.len() {
            out.extend_from_slice(&batch);
            return;
        }
        changed = true;
        stats.records_removed += records.len() - kept.len();
        if kept.is_empty() {
            return;
        }
        // Survivors keep their offsets and timestamps; the batch is rewritten uncompressed.
        let attrs = h.attributes & !attributes::COMPRESSION_MASK;
        let mut b = BatchBuilder::new(h.base_timestamp)
            .offsets(h.base_offset, h.partition_leader_epoch)
            .producer(h.producer_id, h.producer_epoch, h.base_sequence)
            .attributes(attrs);
        for r in kept {
            let headers: Vec<(&[u8], Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|x| (&x.key[..], x.value.as_deref()))
                .collect();
            b.push_at(
                (r.offset - h.base_offset) as i32,
                r.timestamp,
                r.key.as_deref(),
                r.value.as_deref(),
                &headers,
            );
        }
        out.extend_from_slice(&b.finish());
    });
    changed.then_some(out)
}
