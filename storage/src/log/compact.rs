//! Swapping compacted segments into the log (the cleaning itself is in [`crate::cleaner`]).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Log;
use crate::cleaner::{self, CleanStats};
use crate::error::Result;
use crate::segment::Segment;

impl Log {
    /// One compaction pass over the sealed segments (a no-op unless the log is compacted). The cleaner reads the
    /// sealed segments (immutable) without the log's lock, writes each changed one beside it and fsyncs it; only
    /// the swap takes the write lock. A crash leaves either the old or the new segment: a stray replacement file
    /// is deleted on open. The active segment is never cleaned.
    pub fn compact(&self, now_ms: i64) -> Result<CleanStats> {
        let config = self.config.read().clone();
        let mut stats = CleanStats {
            next_tombstone_expiry: i64::MAX,
            ..CleanStats::default()
        };
        if !config.cleanup_compact {
            return Ok(stats);
        }
        let sealed: Vec<(i64, Bytes)> = {
            let inner = self.inner.read();
            let n = inner.segments.len().saturating_sub(1);
            inner
                .segments
                .iter()
                .take(n)
                .map(|(b, s)| (*b, s.all_bytes()))
                .collect()
        };
        if sealed.is_empty() {
            return Ok(stats);
        }
        let all: Vec<Bytes> = sealed.iter().map(|(_, d)| d.clone()).collect();
        let latest = cleaner::latest_offsets(&all);
        for (base, data) in &sealed {
            let Some(cleaned) = cleaner::clean_segment(
                data,
                &latest,
                now_ms,
                config.delete_retention_ms,
                &mut stats,
            ) else {
                continue;
            };
            Segment::write_replacement(&self.dir, *base, &cleaned)?;
            let mut inner = self.inner.write();
            let still_there = inner
                .segments
                .get(base)
                .is_some_and(|s| s.size() == data.len())
                && inner.segments.keys().next_back() != Some(base);
            if !still_there || self.deleted.load(Ordering::Acquire) {
                // Retention, DeleteRecords, truncation or deletion got there first.
                Segment::discard_replacement(&self.dir, *base);
                continue;
            }
            // Readers holding slices of the old file keep its mapping; only the name moves.
            drop(inner.segments.remove(base));
            let seg = Segment::install_replacement(&self.dir, *base, &config, false, now_ms)?;
            inner.segments.insert(*base, seg);
            stats.segments_rewritten += 1;
        }
        if stats.segments_rewritten > 0 {
            tracing::info!(
                topic = %self.topic,
                partition = self.partition,
                segments = stats.segments_rewritten,
                removed = stats.records_removed,
                "compacted"
            );
        }
        Ok(stats)
    }
}
