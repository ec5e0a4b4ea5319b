//! Sparse, memory-mapped, preallocated indexes of one segment, as Kafka keeps them:
//! - the offset index: 8-byte entries (offset relative to the segment base: u32, file position: u32);
//! - the time index: 12-byte entries (largest timestamp so far: i64, relative offset of its batch: u32).
//!
//! Invariants: entries are sorted (offsets strictly increasing, timestamps strictly increasing); `entries *
//! ENTRY <= map.len()`. Indexes carry no checksum because they are always rebuilt from the log when a segment is
//! opened, so a torn index can never mislead a read.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::Result;
use crate::mmap::map_index;

#[derive(Debug)]
struct Mapped<const ENTRY: usize> {
    path: PathBuf,
    file: File,
    map: MmapMut,
    entries: usize,
}

impl<const ENTRY: usize> Mapped<ENTRY> {
    /// Creates the file afresh (any old content is discarded: it is rebuilt from the log).
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
            file,
            map,
            entries: 0,
        })
    }

    /// Opens a sealed index as it is on disk; `None` when its size is not a whole number of entries or it is
    /// empty (the caller then rebuilds from the log).
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
            file,
            map,
            entries: len / ENTRY,
        }))
    }

    fn is_full(&self) -> bool {
        (self.entries + 1) * ENTRY > self.map.len()
    }

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

    /// Cuts the preallocated tail so the file holds exactly its entries (on roll and clean close).
    fn trim(&mut self) -> Result<()> {
        self.map.flush()?;
        self.file.set_len((self.entries * ENTRY) as u64)?;
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

/// Relative offset -> file position.
#[derive(Debug)]
pub struct OffsetIndex(Mapped<8>);

impl OffsetIndex {
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<Self> {
        Ok(OffsetIndex(Mapped::create(path, capacity_bytes)?))
    }

    /// A sealed index from disk, if it is well-formed for a log of `log_size` bytes: offsets strictly increasing,
    /// positions increasing and inside the log.
    pub fn open_sealed(path: &Path, log_size: usize) -> Result<Option<Self>> {
        let Some(m) = Mapped::<8>::open_sealed(path)? else {
            return Ok(None);
        };
        let mut prev: Option<(u32, u32)> = None;
        for i in 0..m.entries {
            let e = m.entry(i);
            let (o, p) = (u32_at(e, 0), u32_at(e, 4));
            if p as usize >= log_size || prev.is_some_and(|(po, pp)| o <= po || p <= pp) {
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

    /// The file position of the last indexed batch starting at or before `relative_offset` (0 if none).
    pub fn lookup(&self, relative_offset: i64) -> usize {
        self.0
            .floor(relative_offset, |e| i64::from(u32_at(e, 0)))
            .map_or(0, |i| u32_at(self.0.entry(i), 4) as usize)
    }

    pub fn len(&self) -> usize {
        self.0.entries
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries == 0
    }

    pub fn trim(&mut self) -> Result<()> {
        self.0.trim()
    }

    pub fn remove(self) {
        self.0.remove()
    }
}

/// The last (timestamp, relative offset) entry of a time index, if any.
pub type LastEntry = Option<(i64, u32)>;

/// Largest timestamp so far -> relative offset of the batch that carried it.
#[derive(Debug)]
pub struct TimeIndex(Mapped<12>);

impl TimeIndex {
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<Self> {
        Ok(TimeIndex(Mapped::create(path, capacity_bytes)?))
    }

    /// A sealed time index from disk, if its timestamps strictly increase; returns it with its last entry.
    pub fn open_sealed(path: &Path) -> Result<Option<(Self, LastEntry)>> {
        let Some(m) = Mapped::<12>::open_sealed(path)? else {
            return Ok(None);
        };
        let mut last: Option<(i64, u32)> = None;
        for i in 0..m.entries {
            let e = m.entry(i);
            let (t, o) = (i64_at(e, 0), u32_at(e, 8));
            if last.is_some_and(|(lt, _)| t <= lt) {
                return Ok(None);
            }
            last = Some((t, o));
        }
        Ok(Some((TimeIndex(m), last)))
    }

    /// Adds an entry if `timestamp` is larger than the last one (entries stay strictly increasing).
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        if self.0.entries > 0 && i64_at(self.0.entry(self.0.entries - 1), 0) >= timestamp {
            return;
        }
        let mut e = [0u8; 12];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&relative_offset.to_be_bytes());
        self.0.push(e);
    }

    /// The relative offset of the last entry with a timestamp strictly below `timestamp` (where a search for
    /// the first record at or after `timestamp` may start), or 0.
    pub fn lookup(&self, timestamp: i64) -> u32 {
        self.0
            .floor(timestamp.saturating_sub(1), |e| i64_at(e, 0))
            .map_or(0, |i| u32_at(self.0.entry(i), 8))
    }

    pub fn len(&self) -> usize {
        self.0.entries
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries == 0
    }

    pub fn trim(&mut self) -> Result<()> {
        self.0.trim()
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
        assert_eq!(idx.lookup(5), 0);
        for (o, p) in [(0, 0), (10, 1000), (20, 2000)] {
            idx.push(o, p);
        }
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 1000);
        assert_eq!(idx.lookup(15), 1000);
        assert_eq!(idx.lookup(99), 2000);
        for i in 0..20 {
            idx.push(100 + i, 5000);
        }
        assert_eq!(idx.len(), 10, "a full index stops growing");
        idx.trim().unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("a.index")).unwrap().len(),
            80
        );
    }

    #[test]
    fn time_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TimeIndex::create(&dir.path().join("a.timeindex"), 1200).unwrap();
        idx.maybe_push(100, 0);
        idx.maybe_push(90, 5);
        idx.maybe_push(200, 10);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(150), 0);
        assert_eq!(idx.lookup(201), 10);
    }
}
