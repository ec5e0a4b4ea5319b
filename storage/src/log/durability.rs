//! Durability: fsync on demand, on policy (flush.messages / flush.ms), for acks=all with group commit, and at
//! clean close.
//!
//! Only the active segment ever needs an fsync here: older segments were fsynced when sealed at roll, and the
//! active segment's indexes are rebuilt from the log whenever it was not sealed, so their durability never
//! matters. Every fsync runs outside the log's lock, so appends and reads go on while it runs.
//!
//! Group commit ([`Log::wait_durable`]): waiters queue on one async mutex. The first takes it, notes the log
//! end, fsyncs, and advances `durable` to that end; each waiter behind it then usually finds its offset already
//! covered and returns without an fsync. Under load one fsync serves every producer that appended while the
//! previous one ran, so fsyncs per second stay bounded by the disk's fsync latency, not by the request rate.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Log;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::names::RECOVERY_CHECKPOINT;

impl Log {
    /// The active segment's file and the log end an fsync of it will cover. Resets the flush-policy counters:
    /// the coming fsync satisfies them.
    fn flush_target(&self) -> Result<(Arc<File>, i64)> {
        let mut inner = self.inner.write();
        inner.unflushed_messages = 0;
        inner.first_unflushed_ms = i64::MAX;
        Ok((inner.active()?.data_file(), inner.next_offset))
    }

    fn fsync(&self, file: &File, target: i64) -> Result<()> {
        file.sync_data()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// fsyncs everything appended so far (blocking).
    pub fn flush(&self) -> Result<()> {
        let (file, target) = self.flush_target()?;
        self.fsync(&file, target)
    }

    /// Flushes if the flush.ms policy says so (for a periodic task: appends only check it when they come).
    /// Returns whether it flushed.
    pub fn flush_if_due(&self, now_ms: i64) -> Result<bool> {
        let flush_ms = self.config.read().flush_ms;
        let first = self.inner.read().first_unflushed_ms;
        if first == i64::MAX || now_ms.saturating_sub(first) < flush_ms {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Resolves once every offset up to and including `offset` is fsynced (acks=all). Concurrent callers share
    /// fsyncs (see the module documentation). An offset the log does not hold (not appended yet, or truncated
    /// away) is [`Error::OffsetOutOfRange`].
    pub async fn wait_durable(&self, offset: i64) -> Result<()> {
        loop {
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            let _turn = self.flush_lock.lock().await;
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            self.check_live()?;
            let (file, target) = self.flush_target()?;
            if target <= offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    log_start: self.log_start_offset(),
                    log_end: target,
                });
            }
            // The fsync blocks for milliseconds: not on a runtime worker.
            let f = file.clone();
            tokio::task::spawn_blocking(move || f.sync_data())
                .await
                .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e))))??;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.durable.fetch_max(target, Ordering::AcqRel);
        }
    }

    /// Closes the log cleanly: seals the active segment (data and indexes fsynced, preallocation cut), writes the
    /// producer snapshot and the recovery checkpoint at the log end, then the clean-shutdown marker, so the next
    /// open reads no batch it does not have to. The log stays usable: a later append reopens it for writing.
    pub fn close(&self) -> Result<()> {
        let mut inner = self.inner.write();
        if self.deleted.load(Ordering::Acquire) || inner.closed {
            return Ok(());
        }
        let next = inner.next_offset;
        inner.active_mut()?.seal()?;
        self.durable.fetch_max(next, Ordering::AcqRel);
        self.write_snapshot(&inner, next)?;
        checkpoint::write_offset(&self.dir, RECOVERY_CHECKPOINT, next)?;
        checkpoint::mark_clean(&self.dir)?;
        inner.closed = true;
        Ok(())
    }
}
