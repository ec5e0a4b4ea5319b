//! Removing data: time and size retention, DeleteRecords, truncation, and deleting the whole log.
//!
//! Whole segments are deleted; the log start offset moves to the first offset still readable and is
//! checkpointed, so it never moves back after a restart. Published bytes are never cut in place (readers may
//! hold slices of them): truncating inside a segment writes the kept prefix to a new file and renames it over the
//! old one.

use std::sync::atomic::Ordering;

use millrace_protocol::records::BatchHeader;

use super::{now_ms, rebuild_producers, Inner, Log};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::names::{LOG_START_CHECKPOINT, RECOVERY_CHECKPOINT};
use crate::producer_state::PRODUCER_ID_EXPIRATION_MS;
use crate::segment::{active_capacity, Segment};

impl Log {
    /// One retention pass (Kafka's `deleteOldSegments` for `cleanup.policy=delete`): from the oldest segment on,
    /// deletes segments whose newest record is older than `retention.ms`, or while the log is larger than
    /// `retention.bytes`, stopping at the first segment that must stay. A segment is deletable only when every
    /// offset in it is below the high watermark. Also forgets idle producers.
    ///
    /// As in Kafka, the active segment is deletable too when it is not empty: the log first rolls a new, empty
    /// active segment, so there always is one, and a partition that stopped receiving data still ages out. An
    /// empty active segment is never deleted. Returns the number of segments deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        self.check_live()?;
        let config = self.config.read().clone();
        let mut inner = self.inner.write();
        inner.producers.expire(now_ms, PRODUCER_ID_EXPIRATION_MS);
        if !config.cleanup_delete {
            return Ok(0);
        }
        let high_watermark = inner.next_offset;
        let mut total: i64 = inner.segments.values().map(|s| s.size() as i64).sum();
        let mut doomed = Vec::new();
        for (&base, seg) in &inner.segments {
            let end = inner.end_of(base);
            let is_last = inner.segments.range(base + 1..).next().is_none();
            if is_last && seg.is_empty() {
                break;
            }
            let expired = config.retention_ms >= 0
                && now_ms.saturating_sub(seg.retention_timestamp()) > config.retention_ms;
            let oversize =
                config.retention_bytes >= 0 && total - seg.size() as i64 >= config.retention_bytes;
            if !(expired || oversize) || end > high_watermark {
                break;
            }
            total -= seg.size() as i64;
            doomed.push(base);
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        if doomed.len() == inner.segments.len() {
            self.roll_locked(&mut inner, &config, active_capacity(&config, 0), now_ms)?;
        }
        for base in &doomed {
            if let Some(seg) = inner.segments.remove(base) {
                seg.delete();
            }
        }
        self.advance_start_to_first_segment(&mut inner)?;
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            deleted = doomed.len(),
            log_start_offset = inner.log_start_offset,
            "retention deleted segments"
        );
        Ok(doomed.len())
    }

    /// Moves the log start offset up to the first segment's base, if it is below it.
    fn advance_start_to_first_segment(&self, inner: &mut Inner) -> Result<()> {
        let first = inner
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.next_offset);
        if first > inner.log_start_offset {
            inner.log_start_offset = first;
            checkpoint::write_offset(&self.dir, LOG_START_CHECKPOINT, first)?;
        }
        Ok(())
    }

    /// DeleteRecords: moves the log start offset forward to `offset` (never back) and deletes the segments wholly
    /// below it; returns the new log start offset. `offset` above the high watermark is
    /// [`Error::OffsetOutOfRange`] (the broker maps Kafka's -1, "the high watermark", before calling).
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.check_live()?;
        let mut inner = self.inner.write();
        if offset < 0 || offset > inner.next_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: inner.log_start_offset,
                log_end: inner.next_offset,
            });
        }
        if offset > inner.log_start_offset {
            checkpoint::write_offset(&self.dir, LOG_START_CHECKPOINT, offset)?;
            inner.log_start_offset = offset;
        }
        // Segments whose successor starts at or below the log start hold nothing readable. The active segment
        // stays even then: it goes at the next roll or retention pass.
        loop {
            let mut keys = inner.segments.keys();
            let (Some(&first), Some(&second)) = (keys.next(), keys.next()) else {
                break;
            };
            if second > inner.log_start_offset {
                break;
            }
            if let Some(seg) = inner.segments.remove(&first) {
                seg.delete();
            }
        }
        Ok(inner.log_start_offset)
    }

    /// Removes every batch holding an offset at or after `offset`, so that the log ends at the base offset of the
    /// batch that held `offset` (or at `offset` when it is a batch boundary). Below the log start it empties the
    /// log and restarts it at `offset`, as Kafka's `truncateFullyAndStartAt`. Producer state is rebuilt for the
    /// shorter log; waiters in [`Log::wait_durable`] for removed offsets get an error.
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        self.check_live()?;
        if offset < 0 {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset(),
                log_end: self.log_end_offset(),
            });
        }
        let config = self.config.read().clone();
        let now = now_ms();
        let mut inner = self.inner.write();
        if offset >= inner.next_offset {
            return Ok(());
        }
        if inner.closed {
            checkpoint::clear_clean(&self.dir)?;
            inner.closed = false;
        }
        // Seals queued before the cut must not write snapshots or checkpoints for offsets that are going away,
        // nor may an earlier fsync vouch for the active segment's bytes the cut replaces.
        let _io = self.sealer.invalidate();
        self.forget_recovery_point()?;
        let new_end = if offset <= inner.log_start_offset {
            for (_, seg) in std::mem::take(&mut inner.segments) {
                seg.delete();
            }
            let seg =
                Segment::create(&self.dir, offset, active_capacity(&config, 0), &config, now)?;
            inner.segments.insert(offset, seg);
            inner.log_start_offset = offset;
            checkpoint::write_offset(&self.dir, LOG_START_CHECKPOINT, offset)?;
            offset
        } else {
            // Whole segments at or after the cut go; the one holding it keeps the batches before it.
            let gone: Vec<i64> = inner.segments.range(offset..).map(|(b, _)| *b).collect();
            for base in gone {
                if let Some(seg) = inner.segments.remove(&base) {
                    seg.delete();
                }
            }
            let last = inner.segments.values().next_back().map(|seg| {
                let keep = seg.position_of(offset);
                let data = seg.all_bytes();
                let end = data
                    .get(keep..)
                    .and_then(|b| BatchHeader::parse(b).ok())
                    .map_or(seg.next_offset(), |h| h.base_offset);
                (seg.base_offset(), keep, data, end)
            });
            match last {
                Some((base, keep, data, end)) if keep < data.len() => {
                    Segment::write_replacement(&self.dir, base, &data[..keep])?;
                    drop(inner.segments.remove(&base));
                    let seg = Segment::install_replacement(&self.dir, base, &config, true, now)?;
                    inner.segments.insert(base, seg);
                    end
                }
                // The last segment ends before `offset` already (a gap left by compaction).
                Some((_, _, _, end)) => end,
                None => {
                    let seg = Segment::create(
                        &self.dir,
                        offset,
                        active_capacity(&config, 0),
                        &config,
                        now,
                    )?;
                    inner.segments.insert(offset, seg);
                    offset
                }
            }
        };
        inner.next_offset = new_end.max(inner.log_start_offset);
        let active_base = inner.active()?.base_offset();
        let point = checkpoint::read_offset(&self.dir, RECOVERY_CHECKPOINT).unwrap_or(0);
        if point > active_base {
            checkpoint::write_offset(&self.dir, RECOVERY_CHECKPOINT, active_base)?;
        }
        inner.producers = rebuild_producers(&self.dir, &inner.segments, inner.next_offset)?;
        self.sealer.retreat(inner.next_offset);
        tracing::info!(
            topic = %self.topic,
            partition = self.partition,
            log_end_offset = inner.next_offset,
            "truncated"
        );
        Ok(())
    }

    /// Marks the log deleted (appends fail from now on) and removes its folder. Readers holding slices keep them.
    pub fn delete(&self) -> Result<()> {
        let _inner = self.inner.write();
        self.deleted.store(true, Ordering::Release);
        // Queued seals must not write into the folder as it goes.
        let _io = self.sealer.invalidate();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
