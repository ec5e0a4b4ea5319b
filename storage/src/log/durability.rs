//! Durability: fsync on demand, on policy (flush.messages / flush.ms), for acks=all with group commit, and at
//! clean close.
//!
//! Only the data of segments not yet known durable needs an fsync here: the active one, and right after a roll
//! the one being sealed in the background (see `sealer`). Indexes never do: the active segment's are rebuilt from
//! the log whenever it was not sealed, and sealed ones are fsynced by the sealer before the recovery checkpoint
//! vouches for them. Every fsync runs outside the log's lock, so appends and reads go on while it runs.
//!
//! Group commit ([`Log::wait_durable`]): waiters queue on one async mutex. The first takes it, notes the log
//! end, fsyncs, and advances `durable` to that end; each waiter behind it then usually finds its offset already
//! covered and returns without an fsync. Under load one fsync serves every producer that appended while the
//! previous one ran, so fsyncs per second stay bounded by the disk's fsync latency, not by the request rate.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sealer::write_snapshot;
use super::Log;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::names::RECOVERY_CHECKPOINT;

/// How long appended data may wait for an fsync when nothing else asks for one (acks=1 and no flush policy):
/// the periodic task then fsyncs it, which moves the active recovery point, so that recovery after a crash reads
/// at most about this much of recent appends rather than the whole active segment. The kernel would write these
/// pages back within 30 s anyway (`vm.dirty_expire_centisecs`), so this costs writes earlier, not more writes.
pub const RECOVERY_FLUSH_MS: i64 = 5_000;

/// What an fsync about to run will cover of the active segment, and the truncation generation it started in.
#[derive(Debug, Clone, Copy)]
struct Covered {
    point: checkpoint::ActivePoint,
    generation: u64,
}

impl Log {
    /// The files an fsync must cover to make everything appended durable: every segment that is not yet known
    /// durable (the active one, and a just-rolled one whose background seal has not finished), with the log end
    /// they will cover. Resets the flush-policy counters: the coming fsync satisfies them.
    fn unsynced(&self) -> Result<(Vec<Arc<File>>, i64, Covered)> {
        let generation = self.points.lock().generation;
        let mut inner = self.inner.write();
        inner.unflushed_messages = 0;
        inner.first_unflushed_ms = i64::MAX;
        let durable = self.sealer.durable();
        let mut files = Vec::with_capacity(1);
        let mut end = inner.next_offset;
        for (base, seg) in inner.segments.iter().rev() {
            if end <= durable {
                break;
            }
            files.push(seg.data_file()?);
            end = *base;
        }
        let active = inner.active()?;
        if files.is_empty() {
            files.push(active.data_file()?);
        }
        let covered = Covered {
            point: active.durable_point(),
            generation,
        };
        Ok((files, inner.next_offset, covered))
    }

    fn record_fsync(&self, target: i64, covered: Covered) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.sealer.advance(target);
        let mut points = self.points.lock();
        let newer = points.synced.is_none_or(|p| {
            (p.base_offset, p.position) < (covered.point.base_offset, covered.point.position)
        });
        if points.generation == covered.generation && newer {
            points.synced = Some(covered.point);
        }
    }

    /// fsyncs everything appended so far (blocking).
    pub fn flush(&self) -> Result<()> {
        let (files, target, covered) = self.unsynced()?;
        for f in &files {
            f.sync_data()?;
        }
        self.record_fsync(target, covered);
        Ok(())
    }

    /// Flushes if the flush.ms policy says so, or if data has waited [`RECOVERY_FLUSH_MS`] for an fsync (for a
    /// periodic task: appends only check the policy when they come). Returns whether it flushed.
    pub fn flush_if_due(&self, now_ms: i64) -> Result<bool> {
        let flush_ms = self.config.read().flush_ms.min(RECOVERY_FLUSH_MS);
        let first = self.inner.read().first_unflushed_ms;
        if first == i64::MAX || now_ms.saturating_sub(first) < flush_ms {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Writes the active recovery point if an fsync has moved it since it was last written (for the periodic
    /// task: the write is kept off the fsync paths, so acks=all pays nothing for it). Returns whether it wrote.
    pub fn write_recovery_point(&self) -> Result<bool> {
        let mut points = self.points.lock();
        let Some(synced) = points.synced.filter(|p| points.written != Some(*p)) else {
            return Ok(false);
        };
        if self.deleted.load(Ordering::Acquire) {
            return Ok(false);
        }
        checkpoint::write_active_point(&self.dir, &synced)?;
        points.written = Some(synced);
        Ok(true)
    }

    /// Before a cut of the active segment: no fsync from before it may vouch for what replaces the cut bytes.
    pub(super) fn forget_recovery_point(&self) -> Result<()> {
        let mut points = self.points.lock();
        points.generation += 1;
        points.synced = None;
        points.written = None;
        checkpoint::remove_active_point(&self.dir)
    }

    /// Resolves once every offset up to and including `offset` is fsynced (acks=all). Concurrent callers share
    /// fsyncs (see the module documentation). An offset the log does not hold (not appended yet, or truncated
    /// away) is [`Error::OffsetOutOfRange`].
    pub async fn wait_durable(&self, offset: i64) -> Result<()> {
        loop {
            if self.sealer.durable() > offset {
                return Ok(());
            }
            let _turn = self.flush_lock.lock().await;
            if self.sealer.durable() > offset {
                return Ok(());
            }
            self.check_live()?;
            let (files, target, covered) = self.unsynced()?;
            if target <= offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: self.log_start_offset(),
                    log_end: target,
                });
            }
            // The fsync blocks for milliseconds: not on a runtime worker.
            tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
                .await
                .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e))))??;
            self.record_fsync(target, covered);
        }
    }

    /// Closes the log cleanly: waits for background seals, seals the active segment (data and indexes fsynced),
    /// writes the producer snapshot and the recovery checkpoint at the log end, then the clean-shutdown marker, so
    /// the next open reads no batch it does not have to. The log stays usable: a later append reopens it for
    /// writing.
    pub fn close(&self) -> Result<()> {
        let mut inner = self.inner.write();
        if self.deleted.load(Ordering::Acquire) || inner.closed {
            return Ok(());
        }
        self.sealer.wait_idle();
        let next = inner.next_offset;
        inner.active_mut()?.seal()?;
        self.sealer.advance(next);
        let _io = self.sealer.invalidate();
        write_snapshot(&self.dir, next, &inner.producers.to_bytes())?;
        checkpoint::write_offset(&self.dir, RECOVERY_CHECKPOINT, next)?;
        checkpoint::mark_clean(&self.dir)?;
        inner.closed = true;
        Ok(())
    }
}
