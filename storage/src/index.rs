//! Sparse, memory-mapped, preallocated indexes of one segment, as Kafka keeps them:
//! - the offset index: 8-byte entries (offset relative to the segment base: u32, file position: u32);
//! - the time index: 12-byte entries (largest timestamp so far: i64, relative offset of its batch: u32).
//!
//! All big-endian. Invariants: offsets and positions strictly increase from entry to entry, and so do timestamps;
//! `entries * ENTRY <= map.len()`. An active index is preallocated to `segment.index.bytes` and full when that is
//! used up (the log then rolls); sealing cuts the file to its entries (and the log fsyncs it, see
//! `log::sealer`).
//!
//! Indexes carry no checksum because they can always be rebuilt from the log: the active segment's indexes are
//! rebuilt on every unclean open, a sealed index is checked for shape when opened (and rebuilt if it fails), and a
//! lookup whose entry does not land on the batch it names falls back to a scan (see `Segment::find`), so a
//! damaged index can slow a read down but never send it to the wrong bytes.
//!
//! No file descriptor is kept: a mapping stays valid after its file is closed (it holds the inode itself), so an
//! index holds only its path and its mapping, and reopens the file for the one rare operation that needs it
//! (cutting the preallocated tail at seal, see [`OffsetIndex::finish`]). That keeps a partition at one open
//! file (its active `.log`), which is what lets a node hold tens of thousands of partitions.
//!
//! Not thread-safe by itself: the owning segment is reached through the log's lock.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::Result;
use crate::mmap::map_index;

#[derive(Debug)]
struct Mapped<const ENTRY: usize> {
    path: PathBuf,
    map: MmapMut,
    entries: usize,
}

impl<const ENTRY: usize> Mapped<ENTRY> {
    /// Creates the file afresh, preallocated (sparse) to `capacity_bytes` rounded down to whole entries (at least
    /// one). Any old content is discarded: it is rebuilt from the log.
    fn create(path: &Path, capacity_bytes: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let cap = (capacity_bytes / ENTRY as u64).max(1) * ENTRY as u64;
        file.set_len(cap)?;
        let map = map_index(&file)?;
        Ok(Mapped {
            path: path.to_path_buf(),
            map,
            entries: 0,
        })
    }

    /// Opens a sealed index as it is on disk; `None` when it is missing, empty, or not a whole number of entries
    /// (the caller then rebuilds it from the log).
    fn open_sealed(path: &Path) -> Result<Option<Self>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len() as usize;
        if len == 0 || !len.is_multiple_of(ENTRY) {
            return Ok(None);
        }
        let map = map_index(&file)?;
        Ok(Some(Mapped {
            path: path.to_path_buf(),
            map,
            entries: len / ENTRY,
        }))
    }

    fn is_full(&self) -> bool {
        (self.entries + 1) * ENTRY > self.map.len()
    }

    /// Appends an entry; the caller checked `is_full` (the log rolls before an index fills), so a push into a full
    /// index is dropped rather than written out of bounds, which only makes lookups scan further.
    fn push(&mut self, entry: [u8; ENTRY]) {
        if self.is_full() {
            return;
        }
        let at = self.entries * ENTRY;
        self.map[at..at + ENTRY].copy_from_slice(&entry);
        self.entries += 1;
    }

    fn entry(&self, i: usize) -> &[u8] {
        &self.map[i * ENTRY..(i + 1) * ENTRY]
    }

    fn last(&self) -> Option<&[u8]> {
        self.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Index of the last entry whose key (extracted by `key`) is <= `target`.
    fn floor(&self, target: i64, key: impl Fn(&[u8]) -> i64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(self.entry(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Cuts the preallocated tail so the file holds exactly its entries, and remaps it at its new size (no
    /// mapping ever outlives the bytes it shows). Called when the segment is sealed; cheap: one open, no fsync.
    ///
    /// An index file that is gone (its folder removed under a live log) keeps its current mapping, which still
    /// holds the unlinked inode: nothing will ever open that file again, and an index is rebuilt from the log
    /// whenever it is missing.
    fn finish(&mut self) -> Result<()> {
        let len = (self.entries * ENTRY) as u64;
        if self.map.len() as u64 != len {
            let file = match OpenOptions::new().read(true).write(true).open(&self.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            file.set_len(len)?;
            self.map = map_index(&file)?;
        }
        Ok(())
    }

    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Relative offset -> file position of the batch that starts there.
#[derive(Debug)]
pub struct OffsetIndex(Mapped<8>);

impl OffsetIndex {
    pub const ENTRY_BYTES: u64 = 8;

    pub fn create(path: &Path, capacity_bytes: u64) -> Result<Self> {
        Ok(OffsetIndex(Mapped::create(path, capacity_bytes)?))
    }

    /// A sealed index from disk, if it is well-formed for a log of `log_size` bytes: the first entry at position 0,
    /// offsets and positions strictly increasing, positions inside the log.
    pub fn open_sealed(path: &Path, log_size: usize) -> Result<Option<Self>> {
        let Some(m) = Mapped::<8>::open_sealed(path)? else {
            return Ok(None);
        };
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..m.entries {
            let e = m.entry(i);
            let (o, p) = (u32_at(e, 0), u32_at(e, 4));
            let ordered = match prev {
                None => p == 0,
                Some((po, pp)) => o > po && p > pp,
            };
            if !ordered || p as usize >= log_size {
                return Ok(None);
            }
            prev = Some((o, p));
        }
        Ok(Some(OffsetIndex(m)))
    }

    pub fn push(&mut self, relative_offset: u32, position: u32) {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&relative_offset.to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.0.push(e);
    }

    /// The last entry at or before `relative_offset`: (relative offset, file position) of a batch that starts
    /// there, or `None` when the target precedes every entry (search from position 0).
    pub fn lookup(&self, relative_offset: i64) -> Option<(u32, usize)> {
        let i = self.0.floor(relative_offset, |e| i64::from(u32_at(e, 0)))?;
        let e = self.0.entry(i);
        Some((u32_at(e, 0), u32_at(e, 4) as usize))
    }

    /// The last entry: (relative offset, position).
    pub fn last(&self) -> Option<(u32, usize)> {
        self.0.last().map(|e| (u32_at(e, 0), u32_at(e, 4) as usize))
    }

    pub fn len(&self) -> usize {
        self.0.entries
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries == 0
    }

    pub fn is_full(&self) -> bool {
        self.0.is_full()
    }

    /// Cuts the preallocated tail (see `Mapped::finish`); the caller fsyncs the file.
    pub fn finish(&mut self) -> Result<()> {
        self.0.finish()
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn remove(self) {
        self.0.remove()
    }
}

/// Largest timestamp so far -> relative offset of the batch that carried it.
#[derive(Debug)]
pub struct TimeIndex(Mapped<12>);

impl TimeIndex {
    pub const ENTRY_BYTES: u64 = 12;

    pub fn create(path: &Path, capacity_bytes: u64) -> Result<Self> {
        Ok(TimeIndex(Mapped::create(path, capacity_bytes)?))
    }

    /// A sealed time index from disk, if its timestamps and offsets strictly increase.
    pub fn open_sealed(path: &Path) -> Result<Option<Self>> {
        let Some(m) = Mapped::<12>::open_sealed(path)? else {
            return Ok(None);
        };
        let mut prev: Option<(i64, u32)> = None;
        for i in 0..m.entries {
            let e = m.entry(i);
            let (t, o) = (i64_at(e, 0), u32_at(e, 8));
            if prev.is_some_and(|(pt, po)| t <= pt || o <= po) {
                return Ok(None);
            }
            prev = Some((t, o));
        }
        Ok(Some(TimeIndex(m)))
    }

    /// Adds an entry if `timestamp` is larger than the last one (entries stay strictly increasing).
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        if self.last().is_some_and(|(t, _)| t >= timestamp) {
            return;
        }
        let mut e = [0u8; 12];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&relative_offset.to_be_bytes());
        self.0.push(e);
    }

    /// The relative offset of the last entry with a timestamp strictly below `timestamp`: every batch before it
    /// has a smaller max timestamp, so a search for the first record at or after `timestamp` may start there.
    pub fn lookup(&self, timestamp: i64) -> u32 {
        self.0
            .floor(timestamp.saturating_sub(1), |e| i64_at(e, 0))
            .map_or(0, |i| u32_at(self.0.entry(i), 8))
    }

    /// The last entry: (largest timestamp, relative offset of its batch).
    pub fn last(&self) -> Option<(i64, u32)> {
        self.0.last().map(|e| (i64_at(e, 0), u32_at(e, 8)))
    }

    pub fn len(&self) -> usize {
        self.0.entries
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries == 0
    }

    /// Full one entry early: sealing adds the segment's final (largest timestamp, offset) entry, as Kafka does,
    /// and there must be room for it.
    pub fn is_full(&self) -> bool {
        (self.0.entries + 2) * 12 > self.0.map.len()
    }

    /// Cuts the preallocated tail (see `Mapped::finish`); the caller fsyncs the file.
    pub fn finish(&mut self) -> Result<()> {
        self.0.finish()
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn remove(self) {
        self.0.remove()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_floor_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = OffsetIndex::create(&dir.path().join("a.index"), 80).unwrap();
        assert_eq!(idx.lookup(5), None);
        for (o, p) in [(0, 0), (10, 1000), (20, 2000)] {
            idx.push(o, p);
        }
        assert_eq!(idx.lookup(0), Some((0, 0)));
        assert_eq!(idx.lookup(9), Some((0, 0)));
        assert_eq!(idx.lookup(10), Some((10, 1000)));
        assert_eq!(idx.lookup(15), Some((10, 1000)));
        assert_eq!(idx.lookup(99), Some((20, 2000)));
        assert!(!idx.is_full());
        for i in 0..20 {
            idx.push(100 + i, 5000 + i);
        }
        assert_eq!(idx.len(), 10, "a full index stops growing");
        assert!(idx.is_full());
        idx.finish().unwrap();
        let path = dir.path().join("a.index");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 80);
        let back = OffsetIndex::open_sealed(&path, 10_000).unwrap().unwrap();
        assert_eq!(back.len(), 10);
        assert_eq!(back.lookup(101), Some((101, 5001)));
        assert_eq!(back.last(), Some((106, 5006)));
    }

    #[test]
    fn damaged_sealed_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        let mut idx = OffsetIndex::create(&path, 800).unwrap();
        idx.push(0, 0);
        idx.push(10, 1000);
        idx.finish().unwrap();
        drop(idx);
        assert!(OffsetIndex::open_sealed(&path, 2000).unwrap().is_some());
        // A position past the end of the log, a missing file, a torn entry, a preallocated tail of zeros.
        assert!(OffsetIndex::open_sealed(&path, 1000).unwrap().is_none());
        assert!(OffsetIndex::open_sealed(&dir.path().join("b.index"), 10)
            .unwrap()
            .is_none());
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..12]).unwrap();
        assert!(OffsetIndex::open_sealed(&path, 2000).unwrap().is_none());
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &padded).unwrap();
        assert!(OffsetIndex::open_sealed(&path, 2000).unwrap().is_none());
    }

    #[test]
    fn an_index_keeps_no_file_open_and_finishes_through_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.index");
        let mut idx = OffsetIndex::create(&path, 800).unwrap();
        idx.push(0, 0);
        // The mapping outlives the file's descriptor (closed in `create`) and even its name.
        let moved = dir.path().join("moved.index");
        std::fs::rename(&path, &moved).unwrap();
        idx.push(10, 1000);
        assert_eq!(idx.lookup(12), Some((10, 1000)));
        std::fs::rename(&moved, &path).unwrap();
        idx.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        assert_eq!(idx.last(), Some((10, 1000)));
        // A file removed under a live index: finishing keeps the old mapping (an index is rebuilt when missing).
        let mut gone = TimeIndex::create(&dir.path().join("b.timeindex"), 120).unwrap();
        gone.maybe_push(5, 0);
        std::fs::remove_file(dir.path().join("b.timeindex")).unwrap();
        gone.finish().unwrap();
        assert_eq!(gone.last(), Some((5, 0)));
    }

    #[test]
    fn time_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.timeindex");
        let mut idx = TimeIndex::create(&path, 1200).unwrap();
        idx.maybe_push(100, 0);
        idx.maybe_push(90, 5);
        idx.maybe_push(200, 10);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(150), 0);
        assert_eq!(idx.lookup(201), 10);
        assert_eq!(idx.last(), Some((200, 10)));
        idx.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        let back = TimeIndex::open_sealed(&path).unwrap().unwrap();
        assert_eq!(back.last(), Some((200, 10)));
    }
}
