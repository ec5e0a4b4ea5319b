//! One segment: a `.log` file of whole record batches and its two sparse indexes.
//!
//! Invariants: `base_offset` <= the base offset of its first batch, and every offset in it is < the base offset of
//! the next segment; bytes `[0, size)` of the file are whole, valid batches with increasing offsets, and only they
//! are ever read; `next_offset` is one past the last offset of the last batch (or `base_offset` when empty). The
//! file is preallocated (sparse) to `capacity` while active so that one read-only mapping serves every read;
//! roll and clean close cut it back to `size`.
//!
//! Not thread-safe by itself: the owning [`crate::Log`] serializes writers and readers with its lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use millrace_protocol::records::{
    compression, validate_batch, BatchHeader, BatchIter, RecordIter, BATCH_HEADER_LEN,
};

use crate::error::{Error, Result};
use crate::index::{OffsetIndex, TimeIndex};
use crate::mmap::LogMap;
use crate::names::{segment_file, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};

#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    log_path: PathBuf,
    file: Arc<File>,
    map: LogMap,
    capacity: usize,
    pub size: usize,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    pub next_offset: i64,
    /// Largest batch max-timestamp in the segment, and an offset inside the batch that carries it.
    pub max_timestamp: i64,
    max_timestamp_offset: i64,
    /// Wall-clock time of the first append (or of opening), for roll by age and time retention fallback.
    pub created_ms: i64,
}

/// What recovery did to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub truncated_bytes: u64,
}

impl Segment {
    fn paths(dir: &Path, base: i64) -> (PathBuf, PathBuf, PathBuf) {
        (
            segment_file(dir, base, LOG_SUFFIX),
            segment_file(dir, base, INDEX_SUFFIX),
            segment_file(dir, base, TIME_INDEX_SUFFIX),
        )
    }

    /// Creates an empty active segment.
    pub fn create(
        dir: &Path,
        base_offset: i64,
        capacity: u64,
        index_bytes: u64,
        now_ms: i64,
    ) -> Result<Segment> {
        let (log, idx, tidx) = Self::paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log)?;
        file.set_len(capacity)?;
        let map = LogMap::new(&file, capacity as usize)?;
        Ok(Segment {
            base_offset,
            log_path: log,
            file: Arc::new(file),
            map,
            capacity: capacity as usize,
            size: 0,
            index: OffsetIndex::create(&idx, index_bytes)?,
            time_index: TimeIndex::create(&tidx, index_bytes / 8 * 12)?,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            created_ms: now_ms,
        })
    }

    /// Opens an existing segment, rebuilding its indexes from the log. With `validate`, every batch's CRC is
    /// checked and the file is cut at the first invalid or torn batch; without, the shape of each header is still
    /// checked (so a bad length can never send a read astray). `on_batch` sees every batch kept (producer state).
    #[allow(clippy::too_many_arguments)] // all plain settings of one call site; a struct would only rename them
    pub fn open(
        dir: &Path,
        base_offset: i64,
        capacity: u64,
        index_bytes: u64,
        index_interval: u64,
        validate: bool,
        now_ms: i64,
        mut on_batch: impl FnMut(&BatchHeader),
    ) -> Result<(Segment, Recovered)> {
        let (log, idx, tidx) = Self::paths(dir, base_offset);
        let file = OpenOptions::new().read(true).write(true).open(&log)?;
        let file_len = file.metadata()?.len();
        let map_len = (file_len.max(capacity)) as usize;
        let map = LogMap::new(&file, map_len)?;
        let mut seg = Segment {
            base_offset,
            log_path: log,
            file: Arc::new(file),
            map,
            capacity: map_len,
            size: 0,
            index: OffsetIndex::create(&idx, index_bytes)?,
            time_index: TimeIndex::create(&tidx, index_bytes / 8 * 12)?,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            created_ms: now_ms,
        };
        let data_len = file_len as usize;
        let mut pos = 0usize;
        let mut headers = Vec::new();
        {
            let data = &seg.map.as_slice()[..data_len];
            let mut expected = base_offset;
            for item in BatchIter::new(data) {
                let Ok((h, bytes)) = item else { break };
                if validate && validate_batch(bytes).is_err() {
                    break;
                }
                // Offsets only increase. A lower one is garbage, or a batch whose base offset (written after its
                // body, and not covered by the CRC) never reached the file before a crash.
                if h.base_offset < expected {
                    break;
                }
                expected = h.last_offset() + 1;
                headers.push((h, pos));
                pos += bytes.len();
            }
        }
        for (h, at) in headers {
            seg.note_batch(&h, at, h.total_len(), index_interval);
            on_batch(&h);
        }
        seg.size = pos;
        let truncated = (data_len - pos) as u64;
        if truncated > 0 && validate {
            // Cut the torn or corrupt tail (including preallocated zeros) and make the cut durable.
            seg.file.set_len(pos as u64)?;
            seg.file.sync_all()?;
            if capacity as usize > pos {
                seg.file.set_len(seg.capacity as u64)?;
            }
        } else if (capacity as usize) > data_len {
            seg.file.set_len(seg.capacity as u64)?;
        }
        Ok((
            seg,
            Recovered {
                truncated_bytes: if validate { truncated } else { 0 },
            },
        ))
    }

    /// Index bookkeeping for a batch written at `pos`.
    fn note_batch(&mut self, h: &BatchHeader, pos: usize, len: usize, index_interval: u64) {
        let rel = (h.base_offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        if self.bytes_since_index >= index_interval || self.index.is_empty() {
            self.index.push(rel, pos as u32);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len as u64;
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_offset = h.base_offset;
            self.time_index.maybe_push(h.max_timestamp, rel);
        }
        self.next_offset = h.last_offset() + 1;
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether a batch of `len` bytes fits without growing the mapping.
    pub fn fits(&self, len: usize) -> bool {
        self.size + len <= self.capacity
    }

    /// Appends one batch given as its 8-byte base offset and the rest of its bytes (so the caller's buffer is
    /// written as it is). The batch is published (`size` moves) only after both writes succeed.
    pub fn append(
        &mut self,
        base_offset: &[u8; 8],
        rest: &[u8],
        h: &BatchHeader,
        index_interval: u64,
    ) -> Result<()> {
        let len = 8 + rest.len();
        if !self.fits(len) {
            return Err(Error::CorruptBatch("segment is full".into()));
        }
        let pos = self.size;
        self.file.write_all_at(rest, pos as u64 + 8)?;
        self.file.write_all_at(base_offset, pos as u64)?;
        self.note_batch(h, pos, len, index_interval);
        self.size += len;
        Ok(())
    }

    /// Position of the first batch containing an offset >= `offset`, or `None` if the segment has none.
    fn find(&self, offset: i64) -> Option<usize> {
        let data = &self.map.as_slice()[..self.size];
        let mut pos = self.index.lookup(offset - self.base_offset).min(self.size);
        while pos < self.size {
            let h = BatchHeader::parse(&data[pos..]).ok()?;
            if h.last_offset() >= offset {
                return Some(pos);
            }
            pos += h.total_len();
        }
        None
    }

    /// Whole batches from the one containing `offset`: at most `max_bytes`, except that with `min_one` the first
    /// batch is returned whole even when larger (KIP-74). `None` when no batch here reaches `offset`.
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Option<Bytes> {
        let start = self.find(offset)?;
        let data = &self.map.as_slice()[..self.size];
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

    /// The first record at or after `timestamp`: (offset, timestamp). Uses the time index to skip ahead, then
    /// looks inside batches (decompressing if needed) for the exact record, as Kafka does.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        if self.max_timestamp < timestamp {
            return None;
        }
        let rel = self.time_index.lookup(timestamp);
        let mut pos = self.find(self.base_offset + i64::from(rel)).unwrap_or(0);
        let data = &self.map.as_slice()[..self.size];
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

    /// (max timestamp, offset of the record that carries it).
    pub fn max_timestamp_entry(&self) -> Option<(i64, i64)> {
        if self.is_empty() || self.max_timestamp < 0 {
            return None;
        }
        let pos = self.find(self.max_timestamp_offset)?;
        let data = &self.map.as_slice()[..self.size];
        let h = BatchHeader::parse(&data[pos..]).ok()?;
        let batch = self.map.bytes(pos, pos + h.total_len());
        let (offset, _) = first_record_at_or_after(&h, &batch, h.max_timestamp);
        Some((h.max_timestamp, offset))
    }

    /// Opens a sealed segment that recovery may trust (fsynced at roll, below the recovery checkpoint) without
    /// reading its batches: the indexes come from disk and the segment ends where the next one begins.
    /// `None` when an index is missing or malformed; the caller then opens it the slow way, rebuilding them.
    pub fn open_sealed(dir: &Path, base_offset: i64, next_base: i64) -> Result<Option<Segment>> {
        let (log, idx, tidx) = Self::paths(dir, base_offset);
        let file = OpenOptions::new().read(true).write(true).open(&log)?;
        let meta = file.metadata()?;
        let size = meta.len() as usize;
        if size == 0 {
            return Ok(None);
        }
        let Some(index) = OffsetIndex::open_sealed(&idx, size)? else {
            return Ok(None);
        };
        let Some((time_index, last)) = TimeIndex::open_sealed(&tidx)? else {
            return Ok(None);
        };
        let created_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let map = LogMap::new(&file, size)?;
        let (max_timestamp, rel) = last.unwrap_or((-1, 0));
        Ok(Some(Segment {
            base_offset,
            log_path: log,
            file: Arc::new(file),
            map,
            capacity: size,
            size,
            index,
            time_index,
            bytes_since_index: 0,
            next_offset: next_base,
            max_timestamp,
            max_timestamp_offset: base_offset + i64::from(rel),
            created_ms,
        }))
    }

    /// The whole segment as a zero-copy slice (sealed segments never change, so it stays valid).
    pub fn all_bytes(&self) -> Bytes {
        self.map.bytes(0, self.size)
    }

    /// Calls `f` with every batch header, in order (rebuilding producer state).
    pub fn for_each_header(&self, mut f: impl FnMut(&BatchHeader)) {
        for (h, _) in BatchIter::new(&self.map.as_slice()[..self.size]).map_while(Result::ok) {
            f(&h);
        }
    }

    /// Offsets of batches' first records, for callers that walk the log (tests, producer state).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Makes the segment final: data fsynced, file and indexes cut to what they hold.
    pub fn seal(&mut self) -> Result<()> {
        self.file.sync_data()?;
        self.file.set_len(self.size as u64)?;
        self.file.sync_all()?;
        self.capacity = self.size;
        self.index.trim()?;
        self.time_index.trim()?;
        Ok(())
    }

    /// Removes the segment's files.
    pub fn delete(self) {
        let _ = std::fs::remove_file(&self.log_path);
        self.index.remove();
        self.time_index.remove();
    }
}

/// Within one batch, the first record with a timestamp >= `timestamp`, falling back to the batch's last offset.
fn first_record_at_or_after(h: &BatchHeader, batch: &Bytes, timestamp: i64) -> (i64, i64) {
    let fallback = (h.last_offset(), h.max_timestamp);
    if h.attributes & millrace_protocol::records::attributes::TIMESTAMP_LOG_APPEND != 0 {
        return (h.base_offset, h.max_timestamp);
    }
    let Ok(codec) = h.compression() else {
        return fallback;
    };
    let body = batch.slice(BATCH_HEADER_LEN.min(batch.len())..);
    let records = match compression::decompress(codec, &body) {
        Ok(r) => r,
        Err(_) => return fallback,
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
