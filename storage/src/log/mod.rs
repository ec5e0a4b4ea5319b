//! One partition's log: an ordered set of segments, the last of which is active.
//!
//! Invariants:
//! - `segments` is never empty; segments are keyed by base offset, their offset ranges do not overlap, and only
//!   the last one (the active segment) takes appends; every other one is sealed (fsynced, never written again).
//! - `log_start_offset <= next_offset`; every offset below `log_start_offset` is unreadable even if still on disk.
//! - `durable <= next_offset`, and every batch below `durable` has been fsynced.
//! - Producer state reflects exactly the batches in `[log start of the log on disk, next_offset)`.
//!
//! Thread safety: `Log` is `Send + Sync` and shared as `Arc<Log>`. One `RwLock` guards the segments and offsets:
//! reads share it, appends (and roll, retention, truncation, deletion) take it exclusively but only for the
//! `pwrite` and bookkeeping: fsyncs for `wait_durable` and `flush` run outside it. Readers get `Bytes` slices of
//! the mapping that stay valid after the lock is released (see [`crate::mmap`]).
//!
//! The methods live in one file per concern: [`open`](Log::open) (recovery), [`append`](Log::append) (offsets,
//! idempotence, roll), `durability` (flush, group commit, clean close), `retention` (retention, DeleteRecords,
//! truncation, deletion) and `compact` (swapping in cleaned segments).

mod append;
mod compact;
mod durability;
pub use durability::RECOVERY_FLUSH_MS;
mod open;
mod retention;
mod sealer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::names::{offsets_in, segment_file, SNAPSHOT_SUFFIX};
use crate::producer_state::ProducerStates;
use crate::segment::Segment;

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// The first offset of the first batch.
    pub base_offset: i64,
    /// The last offset of the last batch.
    pub last_offset: i64,
    /// The broker's time for LogAppendTime topics, -1 otherwise.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// The batch was a retry of one already stored: nothing was written and the offsets are the original ones
    /// (Kafka answers such a retry with success and the original base offset).
    pub duplicate: bool,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    /// Whole batches, a zero-copy slice of the mapped segment; empty at the log end, or when the first batch is
    /// larger than `max_bytes` and `min_one_batch` was false.
    pub records: Bytes,
    /// On one node, the log end offset.
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// The log had been closed cleanly: no batch was validated.
    pub clean: bool,
    /// Segments read batch by batch with CRC-32C checks (the others were trusted or only shape-checked).
    pub validated_segments: usize,
    /// Bytes of the active segment below its recovery point: fsynced before the crash, so only their headers
    /// were read.
    pub trusted_bytes: u64,
    /// Bytes of torn or corrupt data cut from the tail (preallocated zeros not counted).
    pub truncated_bytes: u64,
    /// Segments deleted because they followed a corrupt one.
    pub segments_removed: usize,
}

#[derive(Debug)]
struct Inner {
    segments: BTreeMap<i64, Segment>,
    next_offset: i64,
    log_start_offset: i64,
    producers: ProducerStates,
    /// Records appended since the last fsync, and the time of the first of them (flush.messages / flush.ms).
    unflushed_messages: i64,
    first_unflushed_ms: i64,
    /// `close` ran and wrote the clean marker; the next write must remove it first.
    closed: bool,
}

impl Inner {
    fn active(&self) -> Result<&Segment> {
        self.segments
            .values()
            .next_back()
            .ok_or(Error::NoActiveSegment)
    }

    fn active_mut(&mut self) -> Result<&mut Segment> {
        self.segments
            .values_mut()
            .next_back()
            .ok_or(Error::NoActiveSegment)
    }

    /// Where the segment after `base` starts (the log end for the active segment).
    fn end_of(&self, base: i64) -> i64 {
        self.segments
            .range(base + 1..)
            .next()
            .map_or(self.next_offset, |(b, _)| *b)
    }
}

/// One partition's log. See the module documentation for its invariants.
#[derive(Debug)]
pub struct Log {
    topic: String,
    partition: i32,
    dir: PathBuf,
    inner: RwLock<Inner>,
    config: RwLock<LogConfig>,
    appended: Notify,
    /// Background fsync of rolled segments, and the durable offset.
    sealer: Arc<sealer::Sealer>,
    /// Serializes group-commit fsyncs: one runs at a time, and whoever waits behind it usually finds its offset
    /// already covered.
    flush_lock: tokio::sync::Mutex<()>,
    fsyncs: AtomicU64,
    deleted: AtomicBool,
    recovery: RecoveryReport,
    /// The active segment's recovery point: the newest prefix an fsync covered, and the one last written to disk.
    points: parking_lot::Mutex<Points>,
}

/// Invariant: `synced` was fully fsynced, and was recorded in the same `generation` (a truncation bumps it and
/// clears both, so an fsync that started before a cut never vouches for bytes the cut replaced).
#[derive(Debug, Default)]
struct Points {
    generation: u64,
    synced: Option<crate::checkpoint::ActivePoint>,
    written: Option<crate::checkpoint::ActivePoint>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }

    /// New settings apply from the next append, roll or retention pass (as topic config changes do in Kafka).
    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    /// Notified (`notify_waiters`) after every append, so that long-polling fetches wake as soon as data arrives.
    /// No permit is stored: a waiter must create and `enable()` its `Notified` before checking the log end, then
    /// await it, or it can miss an append that lands in between.
    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.read().log_start_offset
    }

    /// The offset the next append gets; on a single node also the high watermark.
    pub fn log_end_offset(&self) -> i64 {
        self.inner.read().next_offset
    }

    /// The high watermark: on one node, everything appended (acks=all waits for durability separately).
    pub fn high_watermark(&self) -> i64 {
        self.log_end_offset()
    }

    /// Everything below this offset is fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.sealer.durable()
    }

    /// Bytes stored across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .read()
            .segments
            .values()
            .map(|s| s.size() as u64)
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.read().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.inner.read().segments.keys().copied().collect()
    }

    /// How many fsyncs of the active segment `wait_durable` and `flush` have issued (tests and metrics).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// What recovery did when the log was opened.
    pub fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// How many idempotent producers the partition remembers.
    pub fn producer_count(&self) -> usize {
        self.inner.read().producers.len()
    }

    /// Reads whole batches from the one containing `offset`: at most `max_bytes`, except that with
    /// `min_one_batch` a first batch larger than `max_bytes` is returned whole, alone (KIP-74). The slice never
    /// spans two segments (a fetch asks again). At the log end the slice is empty; offsets below the log start or
    /// above the log end are [`Error::OffsetOutOfRange`].
    pub fn read(&self, offset: i64, max_bytes: usize, min_one_batch: bool) -> Result<ReadSlice> {
        let inner = self.inner.read();
        if offset < inner.log_start_offset || offset > inner.next_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: inner.log_start_offset,
                log_end: inner.next_offset,
            });
        }
        let mut records = Bytes::new();
        // The segment that may hold `offset`, then later ones if it has nothing at or after it (compaction and
        // DeleteRecords leave gaps).
        let first = inner
            .segments
            .range(..=offset)
            .next_back()
            .map_or(i64::MIN, |(k, _)| *k);
        for seg in inner.segments.range(first..).map(|(_, s)| s) {
            if let Some(b) = seg.read(offset, max_bytes, min_one_batch) {
                records = b;
                break;
            }
        }
        Ok(ReadSlice {
            records,
            high_watermark: inner.next_offset,
            log_start_offset: inner.log_start_offset,
        })
    }

    /// The first record whose timestamp is at or after `timestamp`, as (offset, timestamp) (ListOffsets): the
    /// first segment whose largest timestamp reaches it, then its time index, then the record inside the batch.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        let inner = self.inner.read();
        let start = inner.log_start_offset;
        inner
            .segments
            .values()
            .filter(|s| s.next_offset() > start)
            .find_map(|s| s.offset_for_timestamp(timestamp))
            .map(|(o, t)| (o.max(start), t))
    }

    /// The largest timestamp in the log and the offset of the first record carrying it (ListOffsets -3).
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let inner = self.inner.read();
        let start = inner.log_start_offset;
        let mut best: Option<&Segment> = None;
        for s in inner.segments.values() {
            if s.next_offset() > start && best.is_none_or(|b| s.max_timestamp() > b.max_timestamp())
            {
                best = Some(s);
            }
        }
        best?.max_timestamp_entry()
    }

    fn check_live(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::Deleted(format!("{}-{}", self.topic, self.partition)));
        }
        Ok(())
    }
}

/// Rebuilds producer state for a log ending at `log_end`: the newest readable snapshot at or below it (stale
/// ones above it are deleted: they describe batches that are gone), then every batch header at or after the
/// snapshot's offset. Without a snapshot, every batch in the log is replayed.
fn rebuild_producers(
    dir: &Path,
    segments: &BTreeMap<i64, Segment>,
    log_end: i64,
) -> Result<ProducerStates> {
    let mut from = i64::MIN;
    let mut producers = ProducerStates::default();
    for at in offsets_in(dir, SNAPSHOT_SUFFIX)?.into_iter().rev() {
        let path = segment_file(dir, at, SNAPSHOT_SUFFIX);
        if at > log_end {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Some(states) = std::fs::read(&path)
            .ok()
            .and_then(|d| ProducerStates::from_bytes(&d))
        {
            from = at;
            producers = states;
            break;
        }
    }
    for seg in segments.values().filter(|s| s.next_offset() > from) {
        seg.for_each_header(|h| {
            if h.base_offset >= from {
                producers.update(h, h.base_offset, h.last_offset());
            }
        })?;
    }
    Ok(producers)
}

impl Drop for Log {
    /// Lets a queued seal finish, so that a log reopened right after being dropped never races its own
    /// background writes (sealing is what a clean or crashed shutdown would have left on disk anyway).
    fn drop(&mut self) {
        self.sealer.wait_idle();
    }
}

#[cfg(test)]
mod tests;
