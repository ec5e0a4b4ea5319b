//! The one module that maps files, and the only one allowed `unsafe`.
//!
//! A mapping is sound only while nobody changes or cuts the bytes it shows. The crate keeps one rule that makes
//! that true:
//!
//! - **Log files**: a byte range below a segment's *published* size (`Segment::size`) is never written, truncated
//!   or overwritten again while the file is mapped. Appends `pwrite` strictly after the published size and publish
//!   afterwards (under the log's write lock); recovery truncates only bytes it never published; anything that must
//!   remove published bytes (compaction, `truncate_to`) writes a new file and renames it over the old one, so
//!   existing mappings keep the old inode alive and unchanged. Readers only ever slice published ranges, so pages
//!   past the end of a file (a segment's mapping spans the most it may ever hold) are never touched.
//! - **Index files** are private to their segment, mapped mutably, reached only through `&mut` under the log's
//!   write lock (reads through `&` under its read lock); the one truncation (cutting the preallocated tail at
//!   seal) happens through `&mut` and replaces the mapping before anything reads it again.
//!
//! A mapping does not need its file to stay open: it holds the inode itself (`mmap(2)`: closing the descriptor
//! does not unmap), so the crate closes descriptors as soon as it can (only an active segment's `.log` stays
//! open) and a mapping outlives them. The rule above is what soundness rests on, whichever descriptor (kept or
//! reopened by path) a write, a truncation or an fsync goes through.
//!
//! Why appends use `pwrite` rather than writing through a writable mapping: a full disk then surfaces as an
//! `io::Error` from `pwrite`, where a store into a mapped page past the end of the file, or of a sparse file,
//! would raise SIGBUS; and a failed `pwrite` publishes nothing.
#![allow(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::error::Result;

/// A read-only shared mapping of the first `len` bytes of a log file (`len` may exceed the file's current
/// length: those pages are never touched, see the module rule).
#[derive(Debug, Clone)]
pub struct LogMap {
    map: Arc<Mmap>,
}

impl LogMap {
    pub fn new(file: &File, len: usize) -> Result<LogMap> {
        // SAFETY: the module rule: bytes below the published size never change or vanish while mapped, and
        // nothing reads above it. `len.max(1)` because a zero-length mapping is an error.
        let map = unsafe { MmapOptions::new().len(len.max(1)).map(file)? };
        Ok(LogMap { map: Arc::new(map) })
    }

    /// How many bytes are mapped (not how many are published).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes `[start, end)`, which the caller guarantees are published. Panics (a bug, never disk input) if
    /// the range is outside the mapping.
    pub fn slice(&self, start: usize, end: usize) -> &[u8] {
        &self.map[start..end]
    }

    /// A zero-copy `Bytes` of the published bytes `[start, end)`; it keeps the mapping alive as long as it lives.
    pub fn bytes(&self, start: usize, end: usize) -> Bytes {
        if start >= end {
            return Bytes::new();
        }
        Bytes::from_owner(Window {
            map: self.map.clone(),
            start,
            end,
        })
    }
}

/// The owner behind a `Bytes` slice: only the published window is ever exposed as a slice.
struct Window {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// A writable mapping of a whole index file.
pub fn map_index(file: &File) -> Result<MmapMut> {
    // SAFETY: index files are private to their segment, reached only through `&mut` under the log's write lock
    // (reads through `&` under its read lock) and never truncated while mapped (see the module rule). The
    // mapping stays valid after `file` is closed.
    let map = unsafe { MmapMut::map_mut(file)? };
    // Indexes are preallocated sparse (10 MiB by default) and filled a few bytes at a time: with the kernel's
    // default readahead each page fault would zero-fill a large window of the hole around it, which made
    // recovering 1,000 partitions spend most of its time in memset. Their access is random in any case.
    // Advice only; a kernel that refuses it costs speed, not correctness.
    let _ = map.advise(memmap2::Advice::Random);
    Ok(map)
}
