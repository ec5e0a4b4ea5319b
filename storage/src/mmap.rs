//! The one module that maps files. `unsafe` is allowed here only.
//!
//! Soundness rests on one rule the rest of the crate keeps: a byte range of a log file that has been published to
//! readers (below a segment's published size) is never written again while mapped. Appends write strictly after
//! the published size and publish afterwards (under the log's write lock); truncation happens only at recovery,
//! before any mapping exists, or cuts unpublished bytes. Index files are mapped mutably and touched only through
//! `&mut` under the log's write lock.
#![allow(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::error::Result;

/// A read-only shared mapping of `len` bytes of a log file (which may be longer than the file is now: pages past
/// the end are never touched, see the module rule).
#[derive(Debug, Clone)]
pub struct LogMap {
    map: Arc<Mmap>,
}

impl LogMap {
    pub fn new(file: &File, len: usize) -> Result<LogMap> {
        // SAFETY: see the module rule: published bytes never change while mapped, and we never read past them.
        let map = unsafe { MmapOptions::new().len(len.max(1)).map(file)? };
        Ok(LogMap { map: Arc::new(map) })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The mapped bytes; callers slice only published ranges.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// A zero-copy `Bytes` of a published range; keeps the mapping alive as long as it lives.
    pub fn bytes(&self, start: usize, end: usize) -> Bytes {
        Bytes::from_owner(ArcMap(self.map.clone())).slice(start..end)
    }
}

struct ArcMap(Arc<Mmap>);

impl AsRef<[u8]> for ArcMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A writable mapping of a whole index file.
pub fn map_index(file: &File) -> Result<MmapMut> {
    // SAFETY: index files are private to their segment and reached only through `&mut` under the log's write
    // lock (reads through `&` under its read lock), and never truncated while mapped.
    Ok(unsafe { MmapMut::map_mut(file)? })
}
