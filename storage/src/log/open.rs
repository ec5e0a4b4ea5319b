//! Opening a log is recovering it.
//!
//! 1. A clean-shutdown marker says every segment was sealed at close: nothing needs validating. It is removed
//!    (durably) before anything else, so a crash from here on never looks clean.
//! 2. Sealed segments wholly below the recovery checkpoint (fsynced at roll) are opened from their on-disk
//!    indexes without reading their batches, after a cheap spot check; one that fails it is opened the slow way.
//! 3. Every other segment is read batch by batch (shape, increasing offsets, and unless the log was closed
//!    cleanly the CRC-32C), its indexes rebuilt, and the file cut at the first bad or torn batch; segments after a
//!    cut one are deleted, as Kafka does. How many bytes were cut is logged. Of the active segment, the prefix
//!    an fsync covered (the active recovery point, see [`checkpoint::ActivePoint`]) is not read: only its batch
//!    headers are followed, so recovery reads what was appended since the last fsync, not the whole segment.
//! 4. Producer state comes from the newest snapshot at or below the recovered log end plus the batch headers
//!    after it (61 bytes each, cheap).
//! 5. After an unclean shutdown the active segment is fsynced once, so that everything recovered counts as
//!    durable, and its recovery point moved to its end; unless the recovery point covered all of it already.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::RwLock;
use tokio::sync::Notify;

use super::sealer::Sealer;
use super::{now_ms, rebuild_producers, Inner, Log, RecoveryReport};
use crate::checkpoint;
use crate::config::LogConfig;
use crate::error::Result;
use crate::names::{
    is_debris, offsets_in, segment_file, INDEX_SUFFIX, LOG_START_CHECKPOINT, LOG_SUFFIX,
    RECOVERY_CHECKPOINT, TIME_INDEX_SUFFIX,
};
use crate::producer_state::ProducerStates;
use crate::segment::{active_capacity, Segment};

impl Log {
    /// Opens (creating if needed) the log of `topic`-`partition` in `dir`, recovering it (see the module
    /// documentation of `log::open`).
    pub fn open(dir: &Path, topic: &str, partition: i32, config: LogConfig) -> Result<Log> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // A new partition's folder must survive a crash before anything acknowledged lands in it.
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            checkpoint::sync_dir(parent)?;
        }
        let started = std::time::Instant::now();
        let now = now_ms();
        let clean = checkpoint::is_clean(dir);
        checkpoint::clear_clean(dir)?;
        for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
            if is_debris(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let recovery_point = checkpoint::read_offset(dir, RECOVERY_CHECKPOINT).unwrap_or(0);
        let active_point = checkpoint::read_active_point(dir);
        let bases = offsets_in(dir, LOG_SUFFIX)?;
        // Indexes whose log is gone (a crash while deleting a segment) would only confuse a later segment of
        // the same base: it recreates them anyway, but a stray one must not be mistaken for a segment.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            for base in offsets_in(dir, suffix)? {
                if bases.binary_search(&base).is_err() {
                    let _ = std::fs::remove_file(segment_file(dir, base, suffix));
                }
            }
        }

        let mut segments = BTreeMap::new();
        let mut truncated_bytes = 0u64;
        let mut trusted_bytes = 0u64;
        let mut validated = 0usize;
        let mut removed = 0usize;
        let mut cut = false;
        for (i, &base) in bases.iter().enumerate() {
            if cut {
                // Everything after a corrupt batch is gone, as in Kafka: its offsets would no longer follow on.
                Segment::delete_files(dir, base);
                removed += 1;
                continue;
            }
            let last = i + 1 == bases.len();
            let trusted = !last && (clean || bases[i + 1] <= recovery_point);
            if trusted {
                if let Some(seg) = Segment::open_sealed(dir, base)? {
                    segments.insert(base, seg);
                    continue;
                }
            }
            let validate = !clean && (last || base >= recovery_point);
            validated += usize::from(validate);
            let durable = active_point.filter(|_| last);
            let (seg, rec) = Segment::open(dir, base, &config, last, validate, durable, now)?;
            truncated_bytes += rec.truncated_bytes;
            trusted_bytes += rec.trusted_bytes;
            cut = rec.cut && !last;
            segments.insert(base, seg);
        }

        let recovered_end = segments
            .values()
            .next_back()
            .map_or(0, Segment::next_offset);
        let first_base = segments.keys().next().copied();
        let stored_start = checkpoint::read_offset(dir, LOG_START_CHECKPOINT);
        // The log start never moves back: if recovery cut below it, the lost offsets are not handed out again.
        let log_start_offset = stored_start
            .into_iter()
            .chain(first_base)
            .max()
            .unwrap_or(0);
        let next_offset = recovered_end.max(log_start_offset);
        if segments.is_empty() {
            let seg = Segment::create(dir, next_offset, active_capacity(&config, 0), &config, now)?;
            segments.insert(next_offset, seg);
        }
        let producers = rebuild_producers(dir, &segments, next_offset)?;
        let mut point = None;
        if !clean {
            if let Some(active) = segments.values().next_back() {
                let p = active.durable_point();
                if active_point == Some(p) || active.is_empty() {
                    // Everything in it was fsynced before the crash (or there is nothing): no fsync to pay, which
                    // matters with thousands of quiet partitions, where each one would wait on a journal commit.
                    point = active_point;
                } else {
                    // Data a crashed process left in the page cache is on disk from here on, and the next crash
                    // need not read it again.
                    active.sync()?;
                    checkpoint::write_active_point(dir, &p)?;
                    point = Some(p);
                }
            }
        }
        let recovery = RecoveryReport {
            clean,
            validated_segments: validated,
            trusted_bytes,
            truncated_bytes,
            segments_removed: removed,
        };
        if truncated_bytes > 0 || removed > 0 {
            tracing::warn!(
                topic,
                partition,
                truncated_bytes,
                segments_removed = removed,
                "recovery cut a torn or corrupt tail"
            );
        }
        tracing::debug!(
            topic,
            partition,
            clean,
            segments = segments.len(),
            validated,
            trusted_bytes,
            log_start_offset,
            log_end_offset = next_offset,
            producers = producers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened log"
        );
        let log = Log::assemble(
            dir,
            topic,
            partition,
            config,
            segments,
            next_offset,
            log_start_offset,
            producers,
            recovery,
        );
        {
            let mut points = log.points.lock();
            points.synced = point;
            points.written = point;
        }
        Ok(log)
    }

    /// Creates the log of a new partition in `dir`, which must not exist yet: the folder and an empty active
    /// segment, and nothing to recover. Nothing is fsynced: before anything is acknowledged in the log (and
    /// before the broker's registry names it), the caller makes it durable with an fsync of `dir` (the segment's
    /// names) and then of its parent (the folder's name). [`crate::LogManager::create_partitions`] does that for
    /// many partitions at once, which is what makes creating thousands of them fast. On error nothing is left
    /// behind (the folder is removed again).
    pub fn create_unsynced(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Log> {
        std::fs::create_dir(dir)?;
        let now = now_ms();
        match Segment::create_unsynced(dir, 0, active_capacity(&config, 0), &config, now) {
            Ok(seg) => Ok(Log::assemble(
                dir,
                topic,
                partition,
                config,
                BTreeMap::from([(0, seg)]),
                0,
                0,
                ProducerStates::default(),
                RecoveryReport::default(),
            )),
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                Err(e)
            }
        }
    }

    /// A log over `segments` (not empty; the last one active) ending at `next_offset`, everything in them
    /// durable.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
        segments: BTreeMap<i64, Segment>,
        next_offset: i64,
        log_start_offset: i64,
        producers: ProducerStates,
        recovery: RecoveryReport,
    ) -> Log {
        Log {
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
                closed: false,
            }),
            config: RwLock::new(config),
            appended: Notify::new(),
            sealer: Sealer::new(dir.to_path_buf(), next_offset),
            flush_lock: tokio::sync::Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            recovery,
            points: parking_lot::Mutex::new(super::Points::default()),
        }
    }
}
