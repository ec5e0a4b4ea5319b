//! A derived index of keys by time, for the operators that must find, when the watermark passes a time, the
//! keys that have something due then: the keys of each open fixed window by the window's end, and keys by
//! the end of each of their sessions. It is derived from keyed state (rebuilt from it at a restore, never
//! checkpointed), and it is as large as the state's key count: on the disk backend it must not have to fit in
//! memory either. So there, when the pipeline is over its memory budget, the index spills the keys of its
//! latest times (those due last) to a scratch file and reads them back when they are due.
//!
//! An entry is a hint, not a fact: the caller checks the state when it drains a time, so an entry whose key
//! has nothing due any more (a session that grew past it, a key listed twice) costs a lookup and nothing
//! else. That is what lets the spilled part be append-only.
//!
//! Invariants:
//! - every (time, key) pushed and not drained is in `mem[time]` or in one of `extents[time]`;
//! - `mem_entries` is the number of keys in `mem`, and the backend's resident total includes
//!   `counted` = `mem_entries` times the estimate of an entry;
//! - a spill file's `live` counts the extents in `extents` that point into it; a file other than the one
//!   appended to is deleted when it reaches zero, and that one is emptied.
//!
//! Keys drained from one extent, and those of one time in memory, come out sorted (and without repeats), so
//! that a time whose keys never spilled (always, without a backend, and so in the test driver) gives the same
//! order on every run.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::keyed_state::{BackendKind, StateHandle};
use crate::operator::TaskInfo;
use crate::state::{Key, StateReader, StateWriter};

/// Keys per extent: the most one drain holds in memory at once from the spilled part.
const EXTENT_KEYS: usize = 65_536;
/// A spill file is closed for appends past this size (so that one long-lived time cannot keep a file that
/// holds mostly drained extents from being deleted forever).
const FILE_BYTES: u64 = 64 << 20;
/// Pushes between two looks at the backend's memory.
const CHECK_EVERY: usize = 256;
/// An index smaller than this never spills (it would save less than it costs).
const MIN_SPILL: usize = 1024;

/// Names spill files uniquely within the process.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The scratch folder of a store's spill files (emptied when a pipeline starts, see [`clear_spill_dir`]).
pub fn spill_dir(store_dir: &Path) -> PathBuf {
    store_dir.join("spill")
}

/// Removes what an earlier run of the pipeline left in its spill folder (the files are scratch).
pub fn clear_spill_dir(store_dir: &Path) {
    let _ = std::fs::remove_dir_all(spill_dir(store_dir));
}

struct SpillFile {
    id: u64,
    path: PathBuf,
    file: File,
    len: u64,
    live: usize,
}

#[derive(Clone, Copy)]
struct Extent {
    file: u64,
    offset: u64,
    len: u32,
    keys: u32,
}

struct Spill {
    handle: StateHandle,
    dir: PathBuf,
    files: Vec<SpillFile>,
    extents: BTreeMap<i64, Vec<Extent>>,
    spilled_keys: usize,
    pushes: usize,
}

impl Drop for Spill {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(&f.path);
        }
    }
}

/// See the module documentation.
pub struct TimeIndex<K> {
    mem: BTreeMap<i64, Vec<K>>,
    mem_entries: usize,
    counted: usize,
    spill: Option<Spill>,
}

impl<K> Default for TimeIndex<K> {
    fn default() -> Self {
        TimeIndex {
            mem: BTreeMap::new(),
            mem_entries: 0,
            counted: 0,
            spill: None,
        }
    }
}

impl<K> Drop for TimeIndex<K> {
    fn drop(&mut self) {
        if let Some(s) = &self.spill {
            s.handle.uncount(self.counted);
        }
    }
}

impl<K: Key> TimeIndex<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// On the disk backend, lets the index spill (and counts its memory against the budget).
    pub fn bind(&mut self, task: &TaskInfo) {
        let Some(h) = &task.state else { return };
        if h.kind() != BackendKind::Disk || task.key_group.is_none() {
            return;
        }
        self.spill = Some(Spill {
            handle: h.clone(),
            dir: spill_dir(h.store().dir()),
            files: Vec::new(),
            extents: BTreeMap::new(),
            spilled_keys: 0,
            pushes: 0,
        });
        self.recount();
    }

    /// Estimated bytes of one entry in memory: the key, what it owns, and its share of the vector.
    fn entry_bytes() -> usize {
        std::mem::size_of::<K>() + 32
    }

    fn recount(&mut self) {
        let Some(s) = &self.spill else { return };
        let now = self.mem_entries * Self::entry_bytes();
        if now >= self.counted {
            s.handle.count(now - self.counted);
        } else {
            s.handle.uncount(self.counted - now);
        }
        self.counted = now;
    }

    /// Lists `key` under `time`.
    pub fn push(&mut self, time: i64, key: K) {
        self.mem.entry(time).or_default().push(key);
        self.mem_entries += 1;
        let Some(s) = &mut self.spill else { return };
        s.pushes += 1;
        if s.pushes < CHECK_EVERY {
            return;
        }
        s.pushes = 0;
        self.recount();
        let over = self.spill.as_ref().is_some_and(|s| s.handle.over_budget());
        if over && self.mem_entries >= MIN_SPILL {
            if let Err(e) = self.spill_half() {
                if let Some(s) = &self.spill {
                    s.handle.fail(e);
                }
            }
            self.recount();
        }
    }

    /// Entries held (in memory and spilled).
    pub fn len(&self) -> usize {
        self.mem_entries + self.spill.as_ref().map_or(0, |s| s.spilled_keys)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys in the spill files (for tests and metrics).
    pub fn spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.spilled_keys)
    }

    /// The earliest time listed.
    pub fn first_time(&self) -> Option<i64> {
        let m = self.mem.keys().next().copied();
        let s = self
            .spill
            .as_ref()
            .and_then(|s| s.extents.keys().next().copied());
        match (m, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets everything (before a rebuild).
    pub fn clear(&mut self) {
        self.mem.clear();
        self.mem_entries = 0;
        if let Some(s) = &mut self.spill {
            s.extents.clear();
            s.spilled_keys = 0;
            for f in s.files.drain(..) {
                let _ = std::fs::remove_file(&f.path);
            }
        }
        self.recount();
    }

    /// Removes `time` and calls `f` with each of its keys: the spilled ones an extent at a time, then those in
    /// memory (each group sorted, without repeats). A spill file that cannot be read fails the pipeline
    /// through the backend (the keys it held are then skipped; nothing is committed after that).
    pub fn drain(&mut self, time: i64, mut f: impl FnMut(K)) {
        if let Some(s) = &mut self.spill {
            if let Some(extents) = s.extents.remove(&time) {
                let mut buf = Vec::new();
                for e in extents {
                    s.spilled_keys = s.spilled_keys.saturating_sub(e.keys as usize);
                    match read_extent::<K>(s, e, &mut buf) {
                        Ok(mut keys) => {
                            keys.sort_unstable();
                            keys.dedup();
                            keys.into_iter().for_each(&mut f);
                        }
                        Err(err) => s.handle.fail(err),
                    }
                    release(s, e.file);
                }
            }
        }
        if let Some(mut keys) = self.mem.remove(&time) {
            self.mem_entries -= keys.len();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter().for_each(&mut f);
        }
        self.recount();
    }

    /// Moves the keys of the latest times to the spill file until half of the entries in memory are left.
    fn spill_half(&mut self) -> Result<()> {
        let Some(s) = &mut self.spill else {
            return Ok(());
        };
        let target = self.mem_entries / 2;
        let mut w = StateWriter::new();
        while self.mem_entries > target {
            let Some((time, keys)) = self.mem.pop_last() else {
                break;
            };
            self.mem_entries -= keys.len();
            for chunk in keys.chunks(EXTENT_KEYS) {
                w.buf.clear();
                for k in chunk {
                    k.encode(&mut w);
                }
                let e = append(s, &w.buf, chunk.len())?;
                s.extents.entry(time).or_default().push(e);
                s.spilled_keys += chunk.len();
            }
        }
        Ok(())
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::StateIo(format!("spill file {}: {e}", path.display()))
}

/// Appends one extent to the file being appended to (a new one when there is none or it is full).
fn append(s: &mut Spill, bytes: &[u8], keys: usize) -> Result<Extent> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| Error::Invalid("an extent of a spill file over 4 GiB".into()))?;
    if s.files.last().is_none_or(|f| f.len >= FILE_BYTES) {
        std::fs::create_dir_all(&s.dir).map_err(|e| io_error(&s.dir, e))?;
        let id = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = s.dir.join(format!("{}-{id}.idx", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        s.files.push(SpillFile {
            id,
            path,
            file,
            len: 0,
            live: 0,
        });
    }
    let Some(f) = s.files.last_mut() else {
        return Err(Error::Invalid("no spill file".into()));
    };
    // Scratch: never fsynced (a crash discards the index, which is rebuilt from the state).
    f.file
        .write_all_at(bytes, f.len)
        .map_err(|e| io_error(&f.path, e))?;
    let e = Extent {
        file: f.id,
        offset: f.len,
        len,
        keys: keys as u32,
    };
    f.len += bytes.len() as u64;
    f.live += 1;
    Ok(e)
}

/// Reads one extent's keys (checked: a damaged file gives an error, not a panic).
fn read_extent<K: Key>(s: &Spill, e: Extent, buf: &mut Vec<u8>) -> Result<Vec<K>> {
    let f = s
        .files
        .iter()
        .find(|f| f.id == e.file)
        .ok_or_else(|| Error::Invalid("an extent of a deleted spill file".into()))?;
    buf.clear();
    buf.resize(e.len as usize, 0);
    f.file
        .read_exact_at(buf, e.offset)
        .map_err(|err| io_error(&f.path, err))?;
    let mut r = StateReader::new(buf);
    let mut keys = Vec::with_capacity(e.keys as usize);
    for _ in 0..e.keys {
        keys.push(K::decode(&mut r)?);
    }
    if !r.is_empty() {
        return Err(Error::CorruptState(format!(
            "spill file {}: trailing bytes in an extent",
            f.path.display()
        )));
    }
    Ok(keys)
}

/// One extent of `file` is drained: a file with none left is deleted, or emptied if it is being appended to.
fn release(s: &mut Spill, file: u64) {
    let last = s.files.last().map(|f| f.id);
    let Some(i) = s.files.iter().position(|f| f.id == file) else {
        return;
    };
    let f = &mut s.files[i];
    f.live = f.live.saturating_sub(1);
    if f.live > 0 {
        return;
    }
    if Some(file) == last {
        if f.file.set_len(0).is_ok() {
            f.len = 0;
        }
    } else {
        let f = s.files.remove(i);
        let _ = std::fs::remove_file(&f.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{backend, task};

    fn drained(ix: &mut TimeIndex<String>, t: i64) -> Vec<String> {
        let mut v = Vec::new();
        ix.drain(t, |k| v.push(k));
        v
    }

    #[test]
    fn unbound_keeps_everything_in_memory_and_drains_sorted() {
        let mut ix = TimeIndex::new();
        for k in ["b", "a", "c", "a"] {
            ix.push(10, k.to_string());
        }
        ix.push(5, "z".to_string());
        assert_eq!((ix.len(), ix.first_time()), (5, Some(5)));
        assert_eq!(drained(&mut ix, 5), ["z"]);
        assert_eq!(drained(&mut ix, 10), ["a", "b", "c"]);
        assert!(ix.is_empty());
        assert_eq!(ix.first_time(), None);
    }

    #[test]
    fn over_the_budget_it_spills_the_latest_times_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        // A budget the index alone passes.
        let h = backend(dir.path(), BackendKind::Disk, 64 << 10);
        let mut ix = TimeIndex::new();
        ix.bind(&task(&h, 0, "w"));
        let n = 200_000;
        for i in 0..n {
            ix.push(i % 4, format!("key-{i:08}"));
        }
        assert_eq!(ix.len(), n as usize);
        assert!(ix.spilled() > n as usize / 2, "spilled {}", ix.spilled());
        assert!(h.resident_bytes() < 8 << 20, "{}", h.resident_bytes());
        let files = || std::fs::read_dir(spill_dir(dir.path())).unwrap().count();
        assert!(files() >= 1);
        let mut all = Vec::new();
        while let Some(t) = ix.first_time() {
            let keys = drained(&mut ix, t);
            assert!(keys.iter().all(|k| {
                let i: i64 = k[4..].parse().unwrap();
                i % 4 == t
            }));
            all.extend(keys);
        }
        all.sort();
        let want: Vec<String> = (0..n).map(|i| format!("key-{i:08}")).collect();
        assert_eq!(all, want);
        assert!(ix.is_empty());
        assert_eq!(ix.spilled(), 0);
        // Drained files are deleted, and the one appended to is emptied.
        for e in std::fs::read_dir(spill_dir(dir.path())).unwrap() {
            assert_eq!(e.unwrap().metadata().unwrap().len(), 0);
        }
        drop(ix);
        assert_eq!(files(), 0, "dropping the index deletes its files");
        assert_eq!(h.resident_bytes(), h.store().memory_bytes());
    }

    #[test]
    fn a_damaged_spill_file_fails_the_pipeline_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Disk, 1 << 10);
        let mut ix = TimeIndex::new();
        ix.bind(&task(&h, 0, "w"));
        for i in 0..10_000 {
            ix.push(1, format!("k{i}"));
        }
        assert!(ix.spilled() > 0);
        for e in std::fs::read_dir(spill_dir(dir.path())).unwrap() {
            let p = e.unwrap().path();
            let len = std::fs::metadata(&p).unwrap().len();
            std::fs::write(&p, vec![0xff; len as usize]).unwrap();
        }
        let _ = drained(&mut ix, 1);
        assert!(h.take_error().is_some());
    }
}
