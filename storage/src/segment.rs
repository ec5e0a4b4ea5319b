//! One segment: a `.log` file of whole record batches and its two sparse indexes (see [`crate::index`]).
//!
//! Invariants:
//! - `base_offset` <= the base offset of its first batch, and every offset in it is below the base offset of the
//!   next segment; every offset relative to `base_offset` fits in an i32 and every position in a u32 (the log
//!   rolls before either would overflow), which is what the 4-byte index fields need.
//! - Bytes `[0, size)` of the file are whole, valid batches with increasing offsets ("published"); only they are
//!   ever read, and they are never written again while the file is mapped (the rule of [`crate::mmap`]).
//! - `next_offset` is one past the last offset of the last batch (`base_offset` when empty).
//! - The one read-only mapping made when the segment is created or opened spans `capacity` bytes, the most the
//!   segment will ever hold, although the file is only as long as what was written: pages past its end are never
//!   touched because only published bytes are. (No preallocation: a sparse preallocated file saves no
//!   metadata work, and a crash would leave a zero tail to tell apart from a torn write.)
//! - Once sealed (at roll, close, or when opened as an older segment) nothing in the segment changes. Sealing
//!   is split: [`Segment::finish`] (cut the indexes to size, under the log's lock, cheap) and the fsync of the
//!   files (by the log's background sealer, or at once by [`Segment::seal`]).
//! - Only an unsealed segment keeps its `.log` file open (appends `pwrite` to it, fsyncs go through it); a
//!   sealed one, like every index, keeps no file descriptor at all: its reads go through the mapping, which stays
//!   valid after the file is closed (it holds the inode), and the rare operations that need the file (an fsync of
//!   a just-rolled segment before its background seal is done, see [`Segment::data_file`]) reopen it by path. So
//!   a partition costs one descriptor, however many segments it has.
//!
//! Not thread-safe by itself: the owning [`crate::Log`] serializes writers and readers with its lock. `Bytes`
//! handed out by [`Segment::read`] stay valid after the lock is released and even after the segment is deleted.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use millrace_protocol::records::{
    attributes, compression, validate_batch, BatchHeader, RecordIter, BATCH_HEADER_LEN,
    LOG_OVERHEAD,
};

use crate::checkpoint::{sync_dir, ActivePoint};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::index::{OffsetIndex, TimeIndex};
use crate::mmap::LogMap;
use crate::names::{cleaned_file, segment_file, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};

/// The largest segment file: positions are stored as u32, and Kafka caps `segment.bytes` at i32::MAX.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    /// The open `.log` file while the segment takes appends (`Some` exactly when not `sealed`).
    file: Option<Arc<File>>,
    map: LogMap,
    /// Bytes the mapping covers; an append must fit below it.
    capacity: usize,
    /// Published bytes: whole batches.
    size: usize,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    next_offset: i64,
    /// Largest batch max-timestamp in the segment (-1: none), and the base offset of the batch carrying it.
    max_timestamp: i64,
    max_timestamp_offset: i64,
    /// The first batch's max timestamp (Kafka's "rolling based timestamp"); -1 when unknown.
    first_batch_timestamp: i64,
    /// Wall-clock time the segment was created (or, for a segment found on disk, opened or last modified).
    created_ms: i64,
    sealed: bool,
    /// How far blocks are known reserved for appends (fallocate ahead of the writes, see `append`); only an
    /// optimization, nothing depends on it being exact.
    allocated: usize,
}

/// What recovery did to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Bytes of torn or corrupt data cut after the last valid batch (not counting preallocated zeros).
    pub truncated_bytes: u64,
    /// Whether the file was cut at all (a segment after a cut one is unusable).
    pub cut: bool,
    /// Bytes at the start trusted through the active recovery point: their headers were followed, their
    /// batches not read.
    pub trusted_bytes: u64,
}

/// The files of a finished segment, to fsync (possibly on another thread, while the log goes on).
#[derive(Debug, Clone)]
pub struct SealFiles {
    /// The segment's `.log` file as it was open for appends (the last descriptor of it: it closes when the fsync
    /// is done); `None` when the segment was sealed already, and the file is reopened by path.
    data: Option<Arc<File>>,
    /// `.log`, `.index`, `.timeindex`.
    paths: [PathBuf; 3],
}

impl SealFiles {
    /// fsyncs the data and both indexes (the mapped index pages are in the page cache, so an fsync of the file
    /// writes them, whichever descriptor it goes through). A file already deleted (retention got there first) is
    /// skipped.
    pub fn sync(&self) -> Result<()> {
        let [log, indexes @ ..] = &self.paths;
        match &self.data {
            Some(f) => f.sync_all()?,
            None => sync_path(log)?,
        }
        for path in indexes {
            sync_path(path)?;
        }
        Ok(())
    }
}

/// fsyncs the file at `path` through a fresh read-only descriptor (Linux fsyncs the inode, whatever the mode),
/// or does nothing if it is gone.
fn sync_path(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// What an append brings, for [`Segment::should_roll`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    pub len: usize,
    pub max_timestamp: i64,
    pub last_offset: i64,
}

fn paths(dir: &Path, base: i64) -> (PathBuf, PathBuf, PathBuf) {
    (
        segment_file(dir, base, LOG_SUFFIX),
        segment_file(dir, base, INDEX_SUFFIX),
        segment_file(dir, base, TIME_INDEX_SUFFIX),
    )
}

/// Capacity of a new active segment for a first append of `len` bytes.
pub fn active_capacity(config: &LogConfig, len: usize) -> usize {
    config.segment_bytes.max(len as u64).min(MAX_SEGMENT_BYTES) as usize
}

impl Segment {
    /// Creates an empty active segment that can grow to `capacity` bytes, and makes its creation durable.
    pub fn create(
        dir: &Path,
        base_offset: i64,
        capacity: usize,
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<Segment> {
        let seg = Segment::create_unsynced(dir, base_offset, capacity, config, now_ms)?;
        // The new file's name must survive a crash before anything acknowledged lands in it.
        sync_dir(dir)?;
        Ok(seg)
    }

    /// [`Segment::create`] without the fsync of `dir`: the caller makes the new files' names durable before
    /// anything acknowledged lands in them (a new partition's folder, fsynced once with its siblings').
    pub fn create_unsynced(
        dir: &Path,
        base_offset: i64,
        capacity: usize,
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<Segment> {
        let (log, idx, tidx) = paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log)?;
        let map = LogMap::new(&file, capacity)?;
        let seg = Segment {
            base_offset,
            log_path: log,
            file: Some(Arc::new(file)),
            map,
            capacity,
            size: 0,
            index: OffsetIndex::create(&idx, config.segment_index_bytes)?,
            time_index: TimeIndex::create(&tidx, config.segment_index_bytes)?,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            first_batch_timestamp: -1,
            created_ms: now_ms,
            sealed: false,
            allocated: 0,
        };
        Ok(seg)
    }

    /// Opens a segment found on disk, rebuilding its indexes from the log.
    ///
    /// With `validate`, every batch's CRC-32C is checked and the file is cut (durably) at the first invalid or
    /// torn batch; without, the shape of each header is still checked, so a bad length can never send a read
    /// astray. Offsets must increase from batch to batch: a lower one is garbage, or a batch whose base offset
    /// (written after its body when appending from a shared buffer, and not covered by the CRC) never reached the
    /// disk. A segment that is not `active` is sealed (indexes cut to size and fsynced, so that the next open can
    /// trust them).
    ///
    /// `durable` is a prefix an fsync covered (the active segment's recovery point, ignored unless its base
    /// offset is this segment's): its batches are not read, only their headers are followed, and only if that
    /// chain of headers lands exactly on the point's position and offset. Otherwise the segment is scanned again
    /// from its start as if there were no point.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        active: bool,
        validate: bool,
        durable: Option<ActivePoint>,
        now_ms: i64,
    ) -> Result<(Segment, Recovered)> {
        let durable =
            durable.filter(|p| validate && p.base_offset == base_offset && p.position > 0);
        if let Some(point) = durable {
            let opened = Self::open_scanning(
                dir,
                base_offset,
                config,
                active,
                validate,
                Some(point),
                now_ms,
            )?;
            if opened.1.trusted_bytes > 0 {
                return Ok(opened);
            }
            tracing::warn!(
                segment = %opened.0.log_path.display(),
                position = point.position,
                next_offset = point.next_offset,
                "the active recovery point does not match the segment's batches: validating all of it"
            );
        }
        Self::open_scanning(dir, base_offset, config, active, validate, None, now_ms)
    }

    /// [`Segment::open`] with the prefix `durable` (when given) trusted; [`Recovered::trusted_bytes`] stays 0 if
    /// the batches do not reach it exactly, and then nothing was cut.
    fn open_scanning(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        active: bool,
        validate: bool,
        durable: Option<ActivePoint>,
        now_ms: i64,
    ) -> Result<(Segment, Recovered)> {
        let (log, idx, tidx) = paths(dir, base_offset);
        let file = OpenOptions::new().read(true).write(true).open(&log)?;
        let file_len = usize::try_from(file.metadata()?.len())
            .map_err(|_| Error::CorruptBatch(format!("{} is too large", log.display())))?;
        let capacity = if active {
            file_len.max(active_capacity(config, 0))
        } else {
            file_len
        };
        let map = LogMap::new(&file, capacity)?;
        let mut seg = Segment {
            base_offset,
            log_path: log,
            file: None,
            map: map.clone(),
            capacity,
            size: 0,
            index: OffsetIndex::create(&idx, config.segment_index_bytes)?,
            time_index: TimeIndex::create(&tidx, config.segment_index_bytes)?,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            first_batch_timestamp: -1,
            created_ms: now_ms,
            sealed: false,
            allocated: 0,
        };
        // A segment that outgrew u32 positions cannot be indexed; recovery keeps what can be.
        let limit = file_len.min(MAX_SEGMENT_BYTES as usize);
        let trusted_end = durable.map_or(0, |p| usize::try_from(p.position).unwrap_or(usize::MAX));
        let mut pos = 0usize;
        let mut reached = false;
        // Without validation only the headers matter, wherever they are.
        let headers_only = if validate { trusted_end } else { usize::MAX };
        scan_batches(&file, limit, headers_only, |h, body| {
            if let Some(point) = durable.filter(|_| pos == trusted_end) {
                reached = point.next_offset == seg.next_offset;
                if !reached {
                    return false;
                }
            }
            if let Some(bytes) = body {
                if validate && validate_batch(bytes).is_err() {
                    return false;
                }
            }
            if h.base_offset < seg.next_offset {
                return false;
            }
            seg.note_batch(h, pos, config.index_interval_bytes);
            pos += h.total_len();
            true
        })?;
        if durable.is_some() {
            reached |=
                pos == trusted_end && durable.is_some_and(|p| p.next_offset == seg.next_offset);
            if !reached {
                return Ok((seg, Recovered::default()));
            }
        }
        seg.size = pos;
        let mut rec = Recovered {
            trusted_bytes: if reached { trusted_end as u64 } else { 0 },
            ..Recovered::default()
        };
        if pos < file_len && validate {
            rec.truncated_bytes = torn_bytes(map.slice(0, file_len), pos) as u64;
            rec.cut = true;
            // Cut the torn or corrupt tail durably: those bytes were never published.
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        // Unsealed until here, so it holds its file; sealing an older segment closes it again.
        seg.file = Some(Arc::new(file));
        if !active {
            seg.seal()?;
        }
        Ok((seg, rec))
    }

    /// Opens a sealed segment that recovery may trust (fsynced at roll, below the recovery checkpoint) without
    /// reading all its batches: the indexes come from disk, after a shape check and a spot check that the last
    /// offset-index entry lands on the batch it names and that the batches after it end exactly at the end of the
    /// file. `None` when any check fails; the caller then opens it the slow way, rebuilding the indexes. The file
    /// is open only while this runs (a sealed segment keeps none).
    pub fn open_sealed(dir: &Path, base_offset: i64) -> Result<Option<Segment>> {
        let (log, idx, tidx) = paths(dir, base_offset);
        let file = File::open(&log)?;
        let meta = file.metadata()?;
        let size = meta.len() as usize;
        if size == 0 || size as u64 > MAX_SEGMENT_BYTES {
            return Ok(None);
        }
        let Some(index) = OffsetIndex::open_sealed(&idx, size)? else {
            return Ok(None);
        };
        let Some(time_index) = TimeIndex::open_sealed(&tidx)? else {
            return Ok(None);
        };
        let map = LogMap::new(&file, size)?;
        let Some((rel, mut pos)) = index.last() else {
            return Ok(None);
        };
        let data = map.slice(0, size);
        let mut next_offset = base_offset;
        let mut first = true;
        while pos < size {
            let Ok(h) = BatchHeader::parse(&data[pos..]) else {
                return Ok(None);
            };
            let wrong_start = first && h.base_offset != base_offset + i64::from(rel);
            if wrong_start || h.base_offset < next_offset || pos + h.total_len() > size {
                return Ok(None);
            }
            first = false;
            next_offset = h.last_offset() + 1;
            pos += h.total_len();
        }
        let created_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let (max_timestamp, max_rel) = time_index.last().unwrap_or((-1, 0));
        Ok(Some(Segment {
            base_offset,
            log_path: log,
            file: None,
            map,
            capacity: size,
            size,
            index,
            time_index,
            bytes_since_index: 0,
            next_offset,
            max_timestamp,
            max_timestamp_offset: base_offset + i64::from(max_rel),
            first_batch_timestamp: -1,
            created_ms,
            sealed: true,
            allocated: size,
        }))
    }

    /// Index and timestamp bookkeeping for a batch published at `pos`, as Kafka's `LogSegment.append` does it: an
    /// offset-index entry (and a time-index entry for the largest timestamp so far) for the first batch and then
    /// once every `index_interval` bytes.
    fn note_batch(&mut self, h: &BatchHeader, pos: usize, index_interval: u64) {
        // The log rolls before a relative offset passes i32::MAX; the clamp only guards files from elsewhere,
        // whose lookups then fall back to scanning (see `find`).
        let rel = (h.base_offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        if pos == 0 {
            self.first_batch_timestamp = h.max_timestamp;
        }
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_offset = h.base_offset;
        }
        if self.index.is_empty() || self.bytes_since_index >= index_interval {
            self.index.push(rel, pos as u32);
            self.push_time_entry();
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.total_len() as u64;
        self.next_offset = h.last_offset() + 1;
    }

    fn push_time_entry(&mut self) {
        if self.max_timestamp >= 0 {
            let rel = (self.max_timestamp_offset - self.base_offset) as u32;
            self.time_index.maybe_push(self.max_timestamp, rel);
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// One past the last offset stored.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Published bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The largest timestamp of any batch (-1 when none carries one).
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// The timestamp time retention judges the segment by: its largest record timestamp, or when it has none,
    /// when it was created (Kafka falls back to the file's modification time likewise).
    pub fn retention_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            self.max_timestamp
        } else {
            self.created_ms
        }
    }

    /// Whether `len` more bytes fit without growing the file or the mapping.
    pub fn fits(&self, len: usize) -> bool {
        !self.sealed && self.size + len <= self.capacity
    }

    /// Kafka's `LogSegment.shouldRoll`: the append would take the segment past `segment.bytes`, the segment is
    /// older than `segment.ms`, an index is full, or the append's offsets would not fit the 4-byte relative
    /// offsets. Age is measured as Kafka does: the incoming batches' max timestamp minus the first batch's (so a
    /// producer replaying old data does not roll on every append), or wall-clock time since creation when
    /// either has no timestamp. An empty segment rolls only if the append does not fit it at all.
    pub fn should_roll(&self, config: &LogConfig, incoming: &Incoming, now_ms: i64) -> bool {
        let fits = self.fits(incoming.len)
            && incoming.last_offset - self.base_offset <= i64::from(i32::MAX);
        if self.is_empty() {
            return !fits;
        }
        let age = if self.first_batch_timestamp >= 0 && incoming.max_timestamp >= 0 {
            incoming.max_timestamp - self.first_batch_timestamp
        } else {
            now_ms - self.created_ms
        };
        !fits
            || self.size as u64 + incoming.len as u64 > config.segment_bytes
            || age > config.segment_ms
            || self.index.is_full()
            || self.time_index.is_full()
    }

    /// Appends `len` bytes of whole batches: `write(file, position)` puts them at the end of the file, then the
    /// batches (`headers`, as written, tiling the `len` bytes) are indexed and published. Nothing is published if
    /// the write fails, so a failed append leaves no partial batch visible (and the next append overwrites it).
    pub fn append(
        &mut self,
        len: usize,
        headers: impl Iterator<Item = BatchHeader>,
        index_interval: u64,
        write: impl FnOnce(&File, u64) -> io::Result<()>,
    ) -> Result<()> {
        if !self.fits(len) {
            return Err(Error::Io(Arc::new(io::Error::other(format!(
                "segment {} has no room for {len} bytes",
                self.log_path.display()
            )))));
        }
        let Some(file) = &self.file else {
            return Err(Error::Io(Arc::new(io::Error::other(format!(
                "segment {} is sealed",
                self.log_path.display()
            )))));
        };
        let start = self.size;
        if start + len > self.allocated {
            // Blocks reserved ahead of the writes (beyond the end of the file, which stays where the data ends):
            // a write into a hole makes ext4 reserve and track delayed allocation page by page, which was a
            // quarter of the broker's CPU per byte ingested. The reservation grows with the segment (an eighth of
            // it, from 64 KiB to 4 MiB), so quiet partitions reserve little and no partition more than 4 MiB past
            // its data; sealing frees what was not used. Advice only: where fallocate is refused (ENOSPC
            // included), the write itself reports the problem.
            let ahead = ((start + len) / 8).clamp(64 << 10, 4 << 20);
            let end = (start + len + ahead).min(self.capacity);
            if end > self.allocated {
                let _ = rustix::fs::fallocate(
                    file.as_ref(),
                    rustix::fs::FallocateFlags::KEEP_SIZE,
                    self.allocated as u64,
                    (end - self.allocated) as u64,
                );
                self.allocated = end;
            }
        }
        write(file, start as u64)?;
        let mut pos = start;
        for h in headers {
            self.note_batch(&h, pos, index_interval);
            pos += h.total_len();
        }
        debug_assert_eq!(pos, start + len, "headers must tile the appended bytes");
        self.size = start + len;
        Ok(())
    }

    /// Position of the first batch holding an offset >= `offset`, or `None` if the segment has none.
    fn find(&self, offset: i64) -> Option<usize> {
        let data = self.map.slice(0, self.size);
        let mut pos = match self.index.lookup(offset - self.base_offset) {
            None => 0,
            // Trust an entry only if it lands on the batch it names; otherwise scan (a damaged index is slow, not
            // wrong).
            Some((rel, p)) => match data.get(p..).map(BatchHeader::parse) {
                Some(Ok(h)) if h.base_offset == self.base_offset + i64::from(rel) => p,
                _ => 0,
            },
        };
        while pos < self.size {
            let h = BatchHeader::parse(&data[pos..]).ok()?;
            if h.last_offset() >= offset {
                return Some(pos);
            }
            pos += h.total_len();
        }
        None
    }

    /// Whole batches from the one holding `offset` (or the first after it): at most `max_bytes`, except that with
    /// `min_one` the first batch is returned whole even when larger (KIP-74). `None` when no batch here reaches
    /// `offset`; an empty `Bytes` when the first batch is larger than `max_bytes` and `min_one` is false.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Option<Bytes> {
        let start = self.find(offset)?;
        let data = self.map.slice(0, self.size);
        let mut end = start;
        while end < self.size {
            let Ok(h) = BatchHeader::parse(&data[end..]) else {
                break;
            };
            let len = h.total_len();
            if end + len - start > max_bytes && !(min_one && end == start) {
                break;
            }
            end += len;
        }
        Some(self.map.bytes(start, end))
    }

    /// The first record at or after `timestamp`: (offset, timestamp). The time index gives where to start; then
    /// the first batch whose max timestamp reaches `timestamp` is opened (decompressed if needed) for the exact
    /// record, as Kafka does.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        if self.max_timestamp < timestamp || self.is_empty() {
            return None;
        }
        let rel = self.time_index.lookup(timestamp);
        let mut pos = self
            .find(self.base_offset + i64::from(rel))
            .unwrap_or(self.size);
        let data = self.map.slice(0, self.size);
        while pos < self.size {
            let h = BatchHeader::parse(&data[pos..]).ok()?;
            if h.max_timestamp >= timestamp {
                let batch = self.map.bytes(pos, pos + h.total_len());
                return Some(first_record_at_or_after(&h, &batch, timestamp));
            }
            pos += h.total_len();
        }
        None
    }

    /// (max timestamp, offset of the first record that carries it).
    pub fn max_timestamp_entry(&self) -> Option<(i64, i64)> {
        if self.is_empty() || self.max_timestamp < 0 {
            return None;
        }
        let pos = self.find(self.max_timestamp_offset)?;
        let data = self.map.slice(0, self.size);
        let h = BatchHeader::parse(&data[pos..]).ok()?;
        let batch = self.map.bytes(pos, pos + h.total_len());
        let (offset, _) = first_record_at_or_after(&h, &batch, h.max_timestamp);
        Some((h.max_timestamp, offset))
    }

    /// Where the batch holding `offset` (or the first after it) starts: what `truncate_to(offset)` keeps.
    pub fn position_of(&self, offset: i64) -> usize {
        self.find(offset).unwrap_or(self.size)
    }

    /// This segment's published bytes as a recovery point (meaningful once an fsync has covered them).
    pub fn durable_point(&self) -> ActivePoint {
        ActivePoint {
            base_offset: self.base_offset,
            position: self.size as u64,
            next_offset: self.next_offset,
        }
    }

    /// The published bytes as a zero-copy slice.
    pub fn all_bytes(&self) -> Bytes {
        self.map.bytes(0, self.size)
    }

    /// Calls `f` with every batch header, in order (rebuilding producer state). Reads the headers with `pread`
    /// through a small window rather than through the mapping, for the reason [`scan_batches`] gives: touching
    /// each header through the mapping would fault in (and keep resident) the pages around it.
    pub fn for_each_header(&self, mut f: impl FnMut(&BatchHeader)) -> Result<()> {
        use std::os::unix::fs::FileExt;
        const WINDOW: usize = 64 << 10;
        let file = File::open(&self.log_path)?;
        let mut buf = vec![0u8; WINDOW];
        // `buf[..have]` holds the file's bytes from `start`.
        let (mut start, mut have, mut pos) = (0usize, 0usize, 0usize);
        while pos + BATCH_HEADER_LEN <= self.size {
            if pos + BATCH_HEADER_LEN > start + have {
                start = pos;
                have = 0;
                let want = WINDOW.min(self.size - pos);
                while have < want {
                    match file.read_at(&mut buf[have..want], (start + have) as u64) {
                        Ok(0) => break,
                        Ok(k) => have += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if have < BATCH_HEADER_LEN {
                    break;
                }
            }
            let Ok(h) = BatchHeader::parse(&buf[pos - start..have]) else {
                break;
            };
            f(&h);
            pos += h.total_len();
        }
        Ok(())
    }

    /// The log file, for an fsync issued without holding the log's lock: the open one of an unsealed segment, or
    /// for a sealed one (which keeps none) a fresh read-only descriptor, which fsyncs the same inode. The only
    /// sealed segments `log::durability` fsyncs are ones rolled a moment ago whose background seal has not
    /// finished, so the reopen is rare.
    pub fn data_file(&self) -> Result<Arc<File>> {
        match &self.file {
            Some(f) => Ok(f.clone()),
            None => Ok(Arc::new(File::open(&self.log_path)?)),
        }
    }

    /// fsyncs the data written so far. The active segment's indexes are not synced: they are rebuilt from the log
    /// whenever the segment was not sealed, so their durability never matters.
    pub fn sync(&self) -> Result<()> {
        self.data_file()?.sync_data()?;
        Ok(())
    }

    /// The cheap half of sealing: no more appends, file cut to what it holds (if a failed write left more), the
    /// last time-index entry added, indexes cut to size. Returns what remains to fsync, which holds the
    /// segment's last descriptor of its file (the segment keeps none from here on). Idempotent.
    pub fn finish(&mut self) -> Result<SealFiles> {
        let mut data = None;
        if !self.sealed {
            let file = self.file.clone().ok_or(Error::NoActiveSegment)?;
            // Also gives back the blocks reserved ahead of writes that never came (see `append`; after a crash,
            // reserved by the previous process): truncating frees every block past the new end, even at the same
            // length.
            file.set_len(self.size as u64)?;
            self.allocated = self.size;
            self.capacity = self.size;
            self.push_time_entry();
            self.index.finish()?;
            self.time_index.finish()?;
            self.sealed = true;
            self.file = None;
            data = Some(file);
        }
        Ok(SealFiles {
            data,
            paths: [
                self.log_path.clone(),
                self.index.path().to_path_buf(),
                self.time_index.path().to_path_buf(),
            ],
        })
    }

    /// Seals the segment now: [`Segment::finish`], then every file fsynced.
    pub fn seal(&mut self) -> Result<()> {
        self.finish()?.sync()
    }

    /// Removes the segment's files. Readers holding slices keep the old bytes (the mapping holds the inode).
    pub fn delete(self) {
        let dir = self.log_path.parent().map(Path::to_path_buf);
        let _ = std::fs::remove_file(&self.log_path);
        self.index.remove();
        self.time_index.remove();
        if let Some(dir) = dir {
            let _ = sync_dir(&dir);
        }
    }

    /// Removes whatever files exist of the segment at `base_offset` (one that is not open).
    pub fn delete_files(dir: &Path, base_offset: i64) {
        let (log, idx, tidx) = paths(dir, base_offset);
        for p in [log, idx, tidx] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Writes `data` as the future content of the segment at `base_offset` (fsynced, beside it). Step one of
    /// replacing published bytes (compaction, truncation), which must never be overwritten in place.
    pub fn write_replacement(dir: &Path, base_offset: i64, data: &[u8]) -> Result<()> {
        let path = cleaned_file(dir, base_offset);
        let mut f = File::create(&path)?;
        io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
        Ok(())
    }

    /// Step two: renames the replacement over the segment (whose `Segment` the caller has dropped) and opens it.
    /// Readers holding slices of the old file keep its inode, unchanged.
    pub fn install_replacement(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        active: bool,
        now_ms: i64,
    ) -> Result<Segment> {
        std::fs::rename(
            cleaned_file(dir, base_offset),
            segment_file(dir, base_offset, LOG_SUFFIX),
        )?;
        sync_dir(dir)?;
        Ok(Segment::open(dir, base_offset, config, active, false, None, now_ms)?.0)
    }

    /// Removes a replacement that will not be installed.
    pub fn discard_replacement(dir: &Path, base_offset: i64) {
        let _ = std::fs::remove_file(cleaned_file(dir, base_offset));
    }
}

/// How many bytes after the valid prefix at `pos` look like data rather than preallocated zeros: up to the last
/// non-zero byte within the torn batch's declared length (bounded), or within 64 KiB when that is unreadable.
/// Only for the recovery report: the whole tail is cut either way.
/// How much recovery reads at a time (per recovery thread: the allocator keeps these buffers after use).
const SCAN_CHUNK: usize = 1 << 20;
/// How much it reads at a time while it only follows headers through a trusted prefix.
const HEADER_CHUNK: usize = 64 << 10;

/// Calls `f` with every whole, well-shaped batch in the first `limit` bytes of `file`, in order, until `f` says
/// stop or the batches end (a torn or malformed one). Reads with `pread` into one reused buffer rather than
/// through the mapping: recovery reads every byte of the segments it validates once, and through a mapping each
/// page would fault in and stay resident (gigabytes of RSS after recovering a large log), where a copy from the
/// page cache costs less and leaves nothing mapped.
///
/// Batches that end at or before `trusted_end` are passed without their bytes (`None`): only their headers are
/// read, in small windows, so a trusted prefix costs a few reads per batch rather than a read of every byte.
fn scan_batches(
    file: &File,
    limit: usize,
    trusted_end: usize,
    mut f: impl FnMut(&BatchHeader, Option<&[u8]>) -> bool,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf: Vec<u8> = Vec::new();
    // `buf` holds the file's bytes [start, start + buf.len()).
    let mut start = 0usize;
    let mut pos = 0usize;
    let fill = |buf: &mut Vec<u8>, at: usize, want: usize| -> Result<()> {
        let n = want.min(limit.saturating_sub(at));
        buf.resize(n, 0);
        let mut got = 0;
        while got < n {
            match file.read_at(&mut buf[got..], (at + got) as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(())
    };
    while pos < limit {
        if pos + BATCH_HEADER_LEN > start + buf.len() {
            start = pos;
            let chunk = if pos < trusted_end {
                HEADER_CHUNK
            } else {
                SCAN_CHUNK
            };
            fill(&mut buf, start, chunk)?;
        }
        let Ok(h) = BatchHeader::parse(&buf[pos - start..]) else {
            return Ok(());
        };
        let len = h.total_len();
        if pos + len > limit {
            return Ok(());
        }
        if pos + len <= trusted_end {
            if !f(&h, None) {
                return Ok(());
            }
            pos += len;
            continue;
        }
        if pos + len > start + buf.len() {
            start = pos;
            fill(&mut buf, start, SCAN_CHUNK.max(len))?;
            if buf.len() < len {
                return Ok(());
            }
        }
        if !f(&h, Some(&buf[pos - start..pos - start + len])) {
            return Ok(());
        }
        pos += len;
    }
    Ok(())
}

fn torn_bytes(data: &[u8], pos: usize) -> usize {
    let tail = &data[pos..];
    let declared = tail
        .get(8..LOG_OVERHEAD)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| i32::from_be_bytes(b).max(0) as usize + LOG_OVERHEAD);
    let window = declared.clamp(64 << 10, 16 << 20).min(tail.len());
    tail[..window]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
}

/// Within one batch, the first record with a timestamp >= `timestamp`, falling back to the batch's last offset.
fn first_record_at_or_after(h: &BatchHeader, batch: &Bytes, timestamp: i64) -> (i64, i64) {
    let fallback = (h.last_offset(), h.max_timestamp);
    if h.attributes & attributes::TIMESTAMP_LOG_APPEND != 0 {
        // Every record of a LogAppendTime batch has the batch's timestamp.
        return (h.base_offset, h.max_timestamp);
    }
    let Ok(codec) = h.compression() else {
        return fallback;
    };
    let body = batch.slice(BATCH_HEADER_LEN.min(batch.len())..);
    let Ok(records) = compression::decompress(codec, &body) else {
        return fallback;
    };
    for rec in RecordIter::new(records, h.base_offset, h.base_timestamp, h.records_count) {
        match rec {
            Ok(r) if r.timestamp >= timestamp => return (r.offset, r.timestamp),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_protocol::records::BatchBuilder;

    fn batch(base: i64, ts: i64, records: usize, value_len: usize) -> Bytes {
        let mut b = BatchBuilder::new(ts).offsets(base, 0);
        for i in 0..records {
            b.push(ts + i as i64, Some(b"k"), Some(&vec![7u8; value_len]), &[]);
        }
        b.finish()
    }

    fn config() -> LogConfig {
        LogConfig {
            index_interval_bytes: 300,
            segment_index_bytes: 4096,
            ..LogConfig::default()
        }
    }

    fn append(seg: &mut Segment, b: &Bytes) {
        let h = BatchHeader::parse(b).unwrap();
        seg.append(b.len(), std::iter::once(h), 300, |f, at| {
            std::os::unix::fs::FileExt::write_all_at(f, b, at)
        })
        .unwrap();
    }

    #[test]
    fn lookups_through_the_sparse_index_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 100, 1 << 20, &config(), 0).unwrap();
        let mut offset = 100;
        let mut starts = Vec::new();
        for i in 0..50 {
            let b = batch(offset, 1_000 + i * 10, 3, 40);
            starts.push((offset, seg.size()));
            append(&mut seg, &b);
            offset += 3;
        }
        assert!(seg.index.len() > 5 && seg.index.len() < 50, "sparse");
        assert_eq!(seg.next_offset(), 250);
        for (base, pos) in &starts {
            for o in *base..*base + 3 {
                assert_eq!(seg.find(o), Some(*pos), "offset {o}");
            }
        }
        assert_eq!(seg.find(250), None);
        assert_eq!(seg.find(0), Some(0), "below the base: the first batch");
        assert_eq!(seg.offset_for_timestamp(1_000), Some((100, 1_000)));
        assert_eq!(seg.offset_for_timestamp(1_101), Some((131, 1_101)));
        assert_eq!(seg.offset_for_timestamp(1_105), Some((133, 1_110)));
        assert_eq!(seg.offset_for_timestamp(5_000), None);
        assert_eq!(seg.max_timestamp_entry(), Some((1_492, 249)));
        seg.seal().unwrap();
        drop(seg);
        let back = Segment::open_sealed(dir.path(), 100).unwrap().unwrap();
        assert_eq!(back.next_offset(), 250);
        assert_eq!(back.max_timestamp(), 1_492);
        for (base, pos) in &starts {
            assert_eq!(back.find(*base + 1), Some(*pos));
        }
        assert_eq!(back.offset_for_timestamp(1_101), Some((131, 1_101)));
    }

    #[test]
    fn a_sealed_segment_keeps_no_file_and_reads_through_its_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1 << 20, &config(), 0).unwrap();
        let a = batch(0, 1, 1, 500);
        append(&mut seg, &a);
        assert!(seg.file.is_some());
        let files = seg.finish().unwrap();
        assert!(seg.file.is_none(), "the seal job holds the last descriptor");
        assert!(files.data.is_some());
        files.sync().unwrap();
        drop(files);
        // A later fsync (durability of a just-rolled segment) reopens the file; a second finish is a no-op.
        seg.sync().unwrap();
        seg.seal().unwrap();
        assert!(!seg.fits(0));
        assert_eq!(seg.read(0, usize::MAX, false).unwrap(), a);
        let h = BatchHeader::parse(&a).unwrap();
        assert!(seg
            .append(a.len(), std::iter::once(h), 300, |_, _| Ok(()))
            .is_err());
        let back = Segment::open_sealed(dir.path(), 0).unwrap().unwrap();
        assert!(back.file.is_none());
        assert_eq!(back.read(0, usize::MAX, false).unwrap(), a);
        let (older, _) = Segment::open(dir.path(), 0, &config(), false, true, None, 0).unwrap();
        assert!(older.file.is_none());
        let (active, _) = Segment::open(dir.path(), 0, &config(), true, true, None, 0).unwrap();
        assert!(active.file.is_some());
    }

    #[test]
    fn kip74_read_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1 << 20, &config(), 0).unwrap();
        let a = batch(0, 1, 1, 500);
        let b = batch(1, 1, 1, 100);
        append(&mut seg, &a);
        append(&mut seg, &b);
        // Too small for the first batch: nothing, unless at least one batch is wanted.
        assert_eq!(seg.read(0, 10, false).unwrap().len(), 0);
        assert_eq!(seg.read(0, 10, true).unwrap(), a);
        // Exactly the first batch, then both, never a partial batch.
        assert_eq!(seg.read(0, a.len(), false).unwrap(), a);
        assert_eq!(seg.read(0, a.len() + b.len() - 1, true).unwrap(), a);
        assert_eq!(
            seg.read(0, usize::MAX, false).unwrap().len(),
            a.len() + b.len()
        );
        assert_eq!(seg.read(1, usize::MAX, false).unwrap(), b);
        assert_eq!(seg.read(2, usize::MAX, false), None);
    }

    #[test]
    fn a_damaged_index_entry_costs_a_scan_not_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 1 << 20, &config(), 0).unwrap();
        for i in 0..20 {
            append(&mut seg, &batch(i * 2, 5, 2, 100));
        }
        // An index whose entry for offset 10 points one byte past its batch.
        let good = seg.position_of(10);
        seg.index = OffsetIndex::create(&dir.path().join("bad.index"), 4096).unwrap();
        seg.index.push(0, 0);
        seg.index.push(10, good as u32 + 1);
        for o in [10, 11, 12, 39] {
            let got = seg.read(o, 1, true).unwrap();
            let h = BatchHeader::parse(&got).unwrap();
            assert!(h.base_offset <= o && o <= h.last_offset(), "offset {o}");
        }
    }

    #[test]
    fn appends_reserve_blocks_ahead_and_sealing_gives_back_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        let mut seg = Segment::create(dir.path(), 0, 1 << 20, &config(), 0).unwrap();
        let b = batch(0, 0, 10, 100);
        append(&mut seg, &b);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            meta.len(),
            b.len() as u64,
            "the file ends where the data does"
        );
        assert!(
            meta.blocks() * 512 >= 64 << 10,
            "{} bytes reserved",
            meta.blocks() * 512
        );
        seg.seal().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), b.len() as u64);
        assert!(
            meta.blocks() * 512 < 64 << 10,
            "{} bytes kept",
            meta.blocks() * 512
        );
    }

    #[test]
    fn torn_bytes_ignore_preallocated_zeros() {
        let mut data = vec![0u8; 1 << 20];
        assert_eq!(torn_bytes(&data, 100), 0);
        data[100..112].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        data[300] = 1;
        assert_eq!(torn_bytes(&data, 100), 201);
    }
}
