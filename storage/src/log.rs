//! One partition's log: an ordered set of segments, the last of which is active.
//!
//! Invariants: segments are keyed by base offset and non-overlapping; only the last segment takes appends;
//! `log_start_offset <= next_offset`; `durable` (everything below it is fsynced) `<= next_offset`. The log is
//! `Send + Sync`: a `RwLock` lets many readers share it while appends (and roll, retention, deletion) take it
//! exclusively. Readers get `Bytes` slices of the mapping that stay valid after the lock is released.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use millrace_protocol::records::{attributes, BatchHeader, CRC_START};
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::cleaner::{self, CleanStats};
use crate::config::{LogConfig, TimestampType};
use crate::error::{Error, Result};
use crate::names::{
    parse_log_file, parse_offset_file, segment_file, CLEANED_SUFFIX, CLEAN_MARKER,
    LOG_START_CHECKPOINT, LOG_SUFFIX, RECOVERY_CHECKPOINT, SNAPSHOT_SUFFIX,
};
use crate::producer_state::{Check, ProducerStates};
use crate::segment::Segment;

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's time for LogAppendTime topics, -1 otherwise.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// The batch was a retry of one already stored; nothing was written and the offsets are the original ones.
    pub duplicate: bool,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    /// Whole batches, a slice of the mapped segment (empty at the end of the log).
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

#[derive(Debug)]
struct Inner {
    segments: BTreeMap<i64, Segment>,
    next_offset: i64,
    log_start_offset: i64,
    producers: ProducerStates,
    unflushed_messages: i64,
    first_unflushed_ms: i64,
}

#[derive(Debug)]
pub struct Log {
    topic: String,
    partition: i32,
    dir: PathBuf,
    inner: RwLock<Inner>,
    config: RwLock<LogConfig>,
    appended: Notify,
    durable: AtomicI64,
    flush_lock: tokio::sync::Mutex<()>,
    fsyncs: AtomicU64,
    deleted: AtomicBool,
}

fn read_i64_file(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_i64_file(path: &Path, value: i64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value.to_string())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it: segments after the recovery checkpoint are
    /// validated batch by batch and cut at the first torn or corrupt batch, unless the log was closed cleanly.
    pub fn open(dir: &Path, topic: &str, partition: i32, config: LogConfig) -> Result<Log> {
        std::fs::create_dir_all(dir)?;
        let now = now_ms();
        let clean_marker = dir.join(CLEAN_MARKER);
        let clean = clean_marker.exists();
        if clean {
            // From here on the log may be written; a crash must not look clean.
            std::fs::remove_file(&clean_marker)?;
            std::fs::File::open(dir)?.sync_all()?;
        }
        let recovery_point = read_i64_file(&dir.join(RECOVERY_CHECKPOINT)).unwrap_or(0);
        // A compaction interrupted before its swap leaves a `.cleaned` file: the original segment is intact.
        for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().ends_with(CLEANED_SUFFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut bases: Vec<i64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_log_file(&e.file_name().to_string_lossy()))
            .collect();
        bases.sort_unstable();
        // Producer state: the newest snapshot at or before where recovery must read batches, then every batch
        // header after it.
        let first_untrusted = bases
            .iter()
            .enumerate()
            .find(|&(i, _)| !Self::trusted(&bases, i, clean, recovery_point))
            .map_or(i64::MAX, |(_, &b)| b);
        // After a clean close the snapshot taken at the log end covers every segment.
        let limit = if clean { i64::MAX } else { first_untrusted };
        let (snapshot_at, mut producers) = Self::load_snapshot(dir, limit, &bases, clean);
        let mut segments = BTreeMap::new();
        let mut truncated_total = 0;
        let mut cut = false;
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            if cut {
                // Everything after a corrupt batch is gone, as in Kafka.
                let _ = std::fs::remove_file(crate::names::segment_file(
                    dir,
                    base,
                    crate::names::LOG_SUFFIX,
                ));
                continue;
            }
            let replay = base >= snapshot_at;
            if Self::trusted(&bases, i, clean, recovery_point) {
                // Sealed and fsynced before the recovery checkpoint: indexes from disk, batches not read.
                if let Some(seg) = Segment::open_sealed(dir, base, bases[i + 1])? {
                    if replay {
                        seg.for_each_header(|h| {
                            producers.update(h, h.base_offset, h.last_offset())
                        });
                    }
                    segments.insert(base, seg);
                    continue;
                }
            }
            let validate = !clean && (last || base >= recovery_point);
            let capacity = if last { config.segment_bytes } else { 0 };
            let mut batches = Vec::new();
            let (seg, rec) = Segment::open(
                dir,
                base,
                capacity,
                config.segment_index_bytes,
                config.index_interval_bytes,
                validate,
                now,
                |h| batches.push(*h),
            )?;
            if replay {
                for h in &batches {
                    producers.update(h, h.base_offset, h.last_offset());
                }
            }
            if rec.truncated_bytes > 0 {
                truncated_total += rec.truncated_bytes;
                cut = !last;
            }
            segments.insert(base, seg);
        }
        if truncated_total > 0 {
            tracing::warn!(
                topic,
                partition,
                bytes = truncated_total,
                "recovery truncated a torn or corrupt tail"
            );
        }
        let mut next_offset = segments.values().last().map_or(0, |s| s.next_offset);
        let stored_start = read_i64_file(&dir.join(LOG_START_CHECKPOINT)).unwrap_or(0);
        let first_base = segments.keys().next().copied().unwrap_or(stored_start);
        let log_start_offset = stored_start
            .max(first_base)
            .min(next_offset.max(stored_start));
        next_offset = next_offset.max(log_start_offset);
        if segments.is_empty() {
            let seg = Segment::create(
                dir,
                next_offset,
                config.segment_bytes,
                config.segment_index_bytes,
                now,
            )?;
            segments.insert(next_offset, seg);
        } else if let Some(last) = segments.values_mut().last() {
            // A cut tail was made durable by the segment; the rest is as durable as the file system made it.
            if !last.fits(0) {
                return Err(Error::CorruptBatch(
                    "active segment larger than its mapping".into(),
                ));
            }
        }
        Ok(Log {
            topic: topic.to_string(),
            partition,
            dir: dir.to_path_buf(),
            inner: RwLock::new(Inner {
                segments,
                next_offset,
                log_start_offset,
                producers,
                unflushed_messages: 0,
                first_unflushed_ms: i64::MAX,
            }),
            config: RwLock::new(config),
            appended: Notify::new(),
            durable: AtomicI64::new(next_offset),
            flush_lock: tokio::sync::Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
        })
    }

    /// Whether segment `i` may be opened without reading it: not the last (active) one, and wholly below the
    /// recovery checkpoint (sealed and fsynced at roll) or the log was closed cleanly.
    fn trusted(bases: &[i64], i: usize, clean: bool, recovery_point: i64) -> bool {
        i + 1 < bases.len() && (clean || bases[i + 1] <= recovery_point)
    }

    /// The newest readable producer-state snapshot taken at a segment boundary at or before `limit`; returns the
    /// offset from which batches must be replayed on top of it (the log start when there is none).
    fn load_snapshot(dir: &Path, limit: i64, bases: &[i64], clean: bool) -> (i64, ProducerStates) {
        let last_base = bases.last().copied().unwrap_or(i64::MAX);
        let mut snaps: Vec<i64> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        parse_offset_file(&e.file_name().to_string_lossy(), SNAPSHOT_SUFFIX)
                    })
                    .collect()
            })
            .unwrap_or_default();
        snaps.sort_unstable();
        for &at in snaps.iter().rev() {
            if at > limit || !(bases.contains(&at) || (clean && at >= last_base)) {
                continue;
            }
            let data = std::fs::read(segment_file(dir, at, SNAPSHOT_SUFFIX)).unwrap_or_default();
            if let Some(states) = ProducerStates::from_bytes(&data) {
                return (at, states);
            }
        }
        (i64::MIN, ProducerStates::default())
    }

    /// Writes the producer state as of `offset` (a segment boundary) and keeps only the two newest snapshots.
    fn write_snapshot(&self, inner: &Inner, offset: i64) -> Result<()> {
        let path = segment_file(&self.dir, offset, SNAPSHOT_SUFFIX);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, inner.producers.to_bytes())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        let mut snaps: Vec<i64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_offset_file(&e.file_name().to_string_lossy(), SNAPSHOT_SUFFIX))
            .collect();
        snaps.sort_unstable();
        for old in snaps.iter().rev().skip(2) {
            let _ = std::fs::remove_file(segment_file(&self.dir, *old, SNAPSHOT_SUFFIX));
        }
        Ok(())
    }

    /// One compaction pass over the sealed segments (see [`crate::cleaner`]); a no-op unless the log is
    /// compacted.
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
            let log_path = segment_file(&self.dir, *base, LOG_SUFFIX);
            let tmp = PathBuf::from(format!("{}{CLEANED_SUFFIX}", log_path.display()));
            std::fs::write(&tmp, &cleaned)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            let mut inner = self.inner.write();
            let still_there = inner
                .segments
                .get(base)
                .is_some_and(|s| s.size == data.len())
                && inner.segments.keys().next_back() != Some(base);
            if !still_there || self.deleted.load(Ordering::Acquire) {
                // Retention, DeleteRecords or deletion got there first.
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            // Readers holding slices of the old file keep its mapping; only the name moves.
            drop(inner.segments.remove(base));
            std::fs::rename(&tmp, &log_path)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            let (seg, _) = Segment::open(
                &self.dir,
                *base,
                0,
                config.segment_index_bytes,
                config.index_interval_bytes,
                false,
                now_ms,
                |_| {},
            )?;
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

    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    /// Notified after every append, so that long-polling fetches wake as soon as data arrives.
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

    /// Bytes stored across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .read()
            .segments
            .values()
            .map(|s| s.size as u64)
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.read().segments.len()
    }

    /// How many fsyncs `wait_durable` and flushes have issued (for tests and metrics).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Appends one record batch (CRC already validated by the caller); see [`Log::append_slice`]. Kept for
    /// callers that own a mutable buffer.
    pub fn append(&self, batch: &mut BytesMut, now_ms: i64) -> Result<AppendInfo> {
        self.append_slice(batch, now_ms)
    }

    /// Appends one record batch (CRC already validated by the caller): assigns its offsets, applies the
    /// idempotent-producer checks and writes it whole or not at all. The caller's bytes are not modified: the
    /// new base offset is written to the file beside them, so a produce request's buffer goes to the page cache
    /// with no intermediate copy. LogAppendTime topics (whose timestamp and CRC change) take one copy.
    pub fn append_slice(&self, batch: &[u8], now_ms: i64) -> Result<AppendInfo> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::Deleted(format!("{}-{}", self.topic, self.partition)));
        }
        let mut h = BatchHeader::parse(batch)?;
        if h.total_len() != batch.len() {
            return Err(Error::CorruptBatch(
                "batch length does not match its bytes".into(),
            ));
        }
        let config = self.config.read().clone();
        if batch.len() as u64 > config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: batch.len(),
                max: config.max_message_bytes,
            });
        }
        let mut inner = self.inner.write();
        if let Check::Duplicate {
            first_offset,
            last_offset,
        } = inner.producers.check(&h)?
        {
            return Ok(AppendInfo {
                base_offset: first_offset,
                last_offset,
                log_append_time: -1,
                log_start_offset: inner.log_start_offset,
                duplicate: true,
            });
        }
        let base = inner.next_offset;
        h.base_offset = base;
        let mut log_append_time = -1;
        let mut rewritten = None;
        if config.message_timestamp_type == TimestampType::LogAppendTime {
            let mut copy = BytesMut::from(batch);
            log_append_time = now_ms;
            h.attributes |= attributes::TIMESTAMP_LOG_APPEND;
            h.max_timestamp = now_ms;
            copy[21..23].copy_from_slice(&h.attributes.to_be_bytes());
            copy[35..43].copy_from_slice(&now_ms.to_be_bytes());
            let crc = crc32c::crc32c(&copy[CRC_START..]);
            copy[17..21].copy_from_slice(&crc.to_be_bytes());
            h.crc = crc;
            rewritten = Some(copy);
        }
        let body = rewritten.as_deref().unwrap_or(batch);
        self.maybe_roll(&mut inner, &config, batch.len(), now_ms)?;
        let Some(active) = inner.segments.values_mut().last() else {
            return Err(Error::CorruptBatch("log has no active segment".into()));
        };
        active.append(
            &base.to_be_bytes(),
            &body[8..],
            &h,
            config.index_interval_bytes,
        )?;
        inner.next_offset = h.last_offset() + 1;
        inner.producers.update(&h, base, h.last_offset());
        inner.unflushed_messages += i64::from(h.records_count.max(1));
        inner.first_unflushed_ms = inner.first_unflushed_ms.min(now_ms);
        let info = AppendInfo {
            base_offset: base,
            last_offset: h.last_offset(),
            log_append_time,
            log_start_offset: inner.log_start_offset,
            duplicate: false,
        };
        let flush_due = inner.unflushed_messages >= config.flush_messages
            || now_ms.saturating_sub(inner.first_unflushed_ms) >= config.flush_ms;
        if flush_due {
            self.flush_locked(&mut inner)?;
        }
        drop(inner);
        self.appended.notify_waiters();
        Ok(info)
    }

    fn maybe_roll(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        len: usize,
        now_ms: i64,
    ) -> Result<()> {
        let next = inner.next_offset;
        let Some(active) = inner.segments.values_mut().last() else {
            return Ok(());
        };
        let too_big = active.size as u64 + len as u64 > config.segment_bytes;
        let too_old = now_ms.saturating_sub(active.created_ms) > config.segment_ms;
        if active.is_empty() && active.fits(len) {
            return Ok(());
        }
        if !too_big && !too_old && active.fits(len) {
            return Ok(());
        }
        if !active.is_empty() {
            active.seal()?;
        }
        let capacity = config.segment_bytes.max(len as u64);
        if active.is_empty() {
            // An empty active segment too small for this batch is replaced, not kept.
            let base = active.base_offset;
            if let Some(old) = inner.segments.remove(&base) {
                old.delete();
            }
        }
        let seg = Segment::create(
            &self.dir,
            next,
            capacity,
            config.segment_index_bytes,
            now_ms,
        )?;
        inner.segments.insert(next, seg);
        // Every segment before the new one is sealed and fsynced: recovery may skip them.
        self.write_snapshot(inner, next)?;
        write_i64_file(&self.dir.join(RECOVERY_CHECKPOINT), next)?;
        Ok(())
    }

    /// Forces a new active segment (tests, and roll by age when idle).
    pub fn roll(&self) -> Result<()> {
        let config = self.config.read().clone();
        let mut inner = self.inner.write();
        let Some(active) = inner.segments.values_mut().last() else {
            return Ok(());
        };
        if active.is_empty() {
            return Ok(());
        }
        active.seal()?;
        let next = inner.next_offset;
        let seg = Segment::create(
            &self.dir,
            next,
            config.segment_bytes,
            config.segment_index_bytes,
            now_ms(),
        )?;
        inner.segments.insert(next, seg);
        self.write_snapshot(&inner, next)?;
        write_i64_file(&self.dir.join(RECOVERY_CHECKPOINT), next)?;
        Ok(())
    }

    /// Reads whole batches from the one containing `offset`, at most `max_bytes` (but the first batch whole when
    /// `min_one_batch`). At the log end the slice is empty. Offsets outside [log start, log end] are an error.
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
        // The segment that may hold `offset`, then later ones if it has nothing at or after it.
        let start = inner
            .segments
            .range(..=offset)
            .next_back()
            .map_or(i64::MIN, |(k, _)| *k);
        for (_, seg) in inner.segments.range(start..) {
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

    /// The first record whose timestamp is at or after `timestamp`: (offset, timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        let inner = self.inner.read();
        inner
            .segments
            .values()
            .find_map(|s| s.offset_for_timestamp(timestamp))
            .map(|(o, t)| (o.max(inner.log_start_offset), t))
    }

    /// The largest timestamp in the log and the offset of its record.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let inner = self.inner.read();
        let seg = inner
            .segments
            .values()
            .filter(|s| !s.is_empty())
            .max_by_key(|s| s.max_timestamp)?;
        seg.max_timestamp_entry()
    }

    /// Moves the log start offset forward (DeleteRecords) and deletes segments wholly below it.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let mut inner = self.inner.write();
        let target = offset.min(inner.next_offset);
        if target > inner.log_start_offset {
            inner.log_start_offset = target;
            write_i64_file(&self.dir.join(LOG_START_CHECKPOINT), target)?;
        }
        self.drop_segments_below_start(&mut inner);
        Ok(inner.log_start_offset)
    }

    /// Deletes closed segments whose every offset is below the log start.
    fn drop_segments_below_start(&self, inner: &mut Inner) {
        let start = inner.log_start_offset;
        loop {
            let bases: Vec<i64> = inner.segments.keys().take(2).copied().collect();
            if bases.len() < 2 || bases[1] > start {
                return;
            }
            if let Some(seg) = inner.segments.remove(&bases[0]) {
                seg.delete();
            }
        }
    }

    /// Time and size retention over closed segments (the active one is never deleted).
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config.read().clone();
        let mut inner = self.inner.write();
        let mut deleted = 0;
        let mut total: i64 = inner.segments.values().map(|s| s.size as i64).sum();
        while config.cleanup_delete && inner.segments.len() > 1 {
            let Some((&base, oldest)) = inner.segments.iter().next() else {
                break;
            };
            let newest_ts = if oldest.max_timestamp >= 0 {
                oldest.max_timestamp
            } else {
                oldest.created_ms
            };
            let expired =
                config.retention_ms >= 0 && now_ms.saturating_sub(newest_ts) > config.retention_ms;
            let oversize =
                config.retention_bytes >= 0 && total - oldest.size as i64 >= config.retention_bytes;
            if !expired && !oversize {
                break;
            }
            total -= oldest.size as i64;
            if let Some(seg) = inner.segments.remove(&base) {
                seg.delete();
            }
            deleted += 1;
        }
        if deleted > 0 {
            let first = inner
                .segments
                .keys()
                .next()
                .copied()
                .unwrap_or(inner.next_offset);
            if first > inner.log_start_offset {
                inner.log_start_offset = first;
                write_i64_file(&self.dir.join(LOG_START_CHECKPOINT), first)?;
            }
            tracing::info!(topic = %self.topic, partition = self.partition, deleted, "retention deleted segments");
        }
        // Roll by age also when no append comes to trigger it.
        if let Some(active) = inner.segments.values().last() {
            if !active.is_empty() && now_ms.saturating_sub(active.created_ms) > config.segment_ms {
                drop(inner);
                self.roll()?;
            }
        }
        Ok(deleted)
    }

    fn flush_locked(&self, inner: &mut Inner) -> Result<()> {
        if let Some(active) = inner.segments.values().last() {
            active.sync()?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        inner.unflushed_messages = 0;
        inner.first_unflushed_ms = i64::MAX;
        self.durable.fetch_max(inner.next_offset, Ordering::AcqRel);
        Ok(())
    }

    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        let mut inner = self.inner.write();
        self.flush_locked(&mut inner)
    }

    /// Resolves once every offset up to and including `offset` is on disk. Group commit: while one fsync runs,
    /// later callers queue on `flush_lock`; each then finds its offset already covered or issues one fsync that
    /// covers everything appended so far, for all of them at once.
    pub async fn wait_durable(&self, offset: i64) -> Result<()> {
        loop {
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            let _turn = self.flush_lock.lock().await;
            if self.durable.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            // Older segments were fsynced when sealed, so the active file covers everything below `target`.
            let (file, target) = {
                let inner = self.inner.read();
                match inner.segments.values().last() {
                    Some(s) => (s.file(), inner.next_offset),
                    None => return Ok(()),
                }
            };
            tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .map_err(|e| Error::Io(std::sync::Arc::new(std::io::Error::other(e))))??;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.durable.fetch_max(target, Ordering::AcqRel);
        }
    }

    /// Flushes and seals the active segment's files and marks the log cleanly closed.
    pub fn close(&self) -> Result<()> {
        let mut inner = self.inner.write();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let next = inner.next_offset;
        if let Some(active) = inner.segments.values_mut().last() {
            active.seal()?;
        }
        self.durable.fetch_max(next, Ordering::AcqRel);
        self.write_snapshot(&inner, next)?;
        write_i64_file(&self.dir.join(RECOVERY_CHECKPOINT), next)?;
        std::fs::write(self.dir.join(CLEAN_MARKER), b"")?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Marks the log deleted (appends fail from now on) and removes its folder. Readers holding slices keep them.
    pub fn delete(&self) -> Result<()> {
        let _inner = self.inner.write();
        self.deleted.store(true, Ordering::Release);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
