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

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions, UncheckedAdvice};

use crate::error::Result;

/// A read-only shared mapping of the first `len` bytes of a log file (`len` may exceed the file's current
/// length: those pages are never touched, see the module rule).
#[derive(Debug, Clone)]
pub struct LogMap {
    map: Arc<Mapped>,
}

/// A mapping and what fetches have read through it since its pages were last dropped from this process's page
/// tables (see [`ResidentPool`]).
#[derive(Debug)]
struct Mapped {
    map: Mmap,
    pool: &'static ResidentPool,
    /// Bytes of slices used since the last release.
    served: AtomicUsize,
    /// Whether it is in the pool's queue.
    queued: AtomicBool,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.pool.forget(self.served.load(Ordering::Relaxed));
    }
}

/// Keeps the pages that reads fault into log mappings from piling up in the process's resident set.
///
/// Fetches are served as slices of the mapped segments, and every page a consumer reads stays mapped (and counted
/// in RSS) until the mapping goes: after a consumer has read a 10 GB log, the broker's RSS would be 10 GB of page
/// cache. The pages are the kernel's page cache either way, so dropping them from our page tables
/// (`madvise(MADV_DONTNEED)`, which for a shared file mapping changes no data) costs only a minor fault if they
/// are read again, and keeps RSS honest. The pool counts the bytes of each mapping's slices once they have been
/// used (dropped), and once the total passes `budget` it releases whole mappings, the ones first counted longest
/// ago, until the total is under half the budget.
///
/// Invariant: `served` is at least the sum of the `served` counts of live mappings (approximately: reads racing
/// a release may be counted on either side; a count only ever causes an earlier or later release, never a wrong
/// byte).
#[derive(Debug)]
pub struct ResidentPool {
    budget: usize,
    served: AtomicUsize,
    queue: Mutex<VecDeque<Weak<Mapped>>>,
    released: AtomicUsize,
}

/// What the broker's mappings may hold resident through reads before the oldest are released.
pub const RESIDENT_BUDGET: usize = 64 << 20;
static POOL: ResidentPool = ResidentPool::new(RESIDENT_BUDGET);

impl ResidentPool {
    pub const fn new(budget: usize) -> ResidentPool {
        ResidentPool {
            budget,
            served: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            released: AtomicUsize::new(0),
        }
    }

    /// How many mappings were released so far.
    pub fn releases(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }

    fn forget(&self, bytes: usize) {
        let _ = self
            .served
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.saturating_sub(bytes))
            });
    }

    fn note(&self, mapped: &Arc<Mapped>, bytes: usize) {
        mapped.served.fetch_add(bytes, Ordering::Relaxed);
        if !mapped.queued.swap(true, Ordering::AcqRel) {
            self.lock().push_back(Arc::downgrade(mapped));
        }
        if self.served.fetch_add(bytes, Ordering::AcqRel) + bytes > self.budget {
            self.release();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Weak<Mapped>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self) {
        let mut queue = self.lock();
        while self.served.load(Ordering::Acquire) > self.budget / 2 {
            let Some(weak) = queue.pop_front() else {
                // Only counts of mappings mid-drop are left: nothing resident to release.
                self.served.store(0, Ordering::Release);
                break;
            };
            let Some(mapped) = weak.upgrade() else {
                continue;
            };
            // SAFETY: MADV_DONTNEED on a shared, read-only file mapping only drops page-table entries: the next
            // access faults the same page-cache page back in, so every outstanding slice keeps reading the same
            // bytes.
            let _ = unsafe { mapped.map.unchecked_advise(UncheckedAdvice::DontNeed) };
            mapped.queued.store(false, Ordering::Release);
            self.forget(mapped.served.swap(0, Ordering::AcqRel));
            self.released.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LogMap {
    pub fn new(file: &File, len: usize) -> Result<LogMap> {
        LogMap::new_in(file, len, &POOL)
    }

    /// A mapping whose reads count against `pool` rather than the process-wide one.
    pub fn new_in(file: &File, len: usize, pool: &'static ResidentPool) -> Result<LogMap> {
        // SAFETY: the module rule: bytes below the published size never change or vanish while mapped, and
        // nothing reads above it. `len.max(1)` because a zero-length mapping is an error.
        let map = unsafe { MmapOptions::new().len(len.max(1)).map(file)? };
        Ok(LogMap {
            map: Arc::new(Mapped {
                map,
                pool,
                served: AtomicUsize::new(0),
                queued: AtomicBool::new(false),
            }),
        })
    }

    /// How many bytes are mapped (not how many are published).
    pub fn len(&self) -> usize {
        self.map.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.map.is_empty()
    }

    /// The bytes `[start, end)`, which the caller guarantees are published. Panics (a bug, never disk input) if
    /// the range is outside the mapping.
    pub fn slice(&self, start: usize, end: usize) -> &[u8] {
        &self.map.map[start..end]
    }

    /// A zero-copy `Bytes` of the published bytes `[start, end)`; it keeps the mapping alive as long as it lives.
    /// When the last clone of it is dropped (its response written), its bytes count against the resident pool.
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
    map: Arc<Mapped>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.start..self.end]
    }
}

impl Drop for Window {
    /// Counted now rather than when the slice was taken: a fetch response is built (slices taken) before it is
    /// written (pages touched), so a release while building would drop nothing, and a whole response would stay
    /// resident after it was sent.
    fn drop(&mut self) {
        self.map.pool.note(&self.map, self.end - self.start);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Rss` of the mapping that starts at `addr`, from /proc/self/smaps, in bytes.
    fn rss_of(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let start = line.split('-').next().unwrap_or("");
            if usize::from_str_radix(start, 16).ok() != Some(addr) {
                continue;
            }
            for l in lines.by_ref() {
                if let Some(kb) = l.strip_prefix("Rss:") {
                    return kb
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<usize>()
                        .unwrap()
                        * 1024;
                }
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn reads_past_the_budget_release_the_oldest_mappings_and_keep_their_bytes() {
        static SMALL: ResidentPool = ResidentPool::new(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let data: Vec<u8> = (0..8 << 20).map(|i: usize| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let map = LogMap::new_in(&file, data.len(), &SMALL).unwrap();
        let addr = map.slice(0, 1).as_ptr() as usize;
        let held = map.bytes(0, 1 << 20);
        for chunk in 0..8 {
            let (start, end) = (chunk << 20, (chunk + 1) << 20);
            let bytes = map.bytes(start, end);
            // Touch every page, as a socket write would, then drop the slice, as a written response does.
            assert_eq!(&bytes[..], &data[start..end]);
        }
        assert!(SMALL.releases() >= 3, "{} releases", SMALL.releases());
        let rss = rss_of(addr);
        assert!(rss <= 2 << 20, "8 MiB read, {rss} bytes resident");
        // A slice taken before the releases reads the same bytes after them.
        assert_eq!(&held[..], &data[..1 << 20]);
    }
}
