//! Keyed state with incremental checkpoints and an on-disk tier: the state backends.
//!
//! [`KeyedState`] is a map from key to value that an operator instance (one operator in one key group) keeps.
//! When its task gave it a [`StateBackend`] (the runtime always does), a checkpoint writes only the entries
//! changed since the previous one, as a change set (see [`crate::store::changes`]) that the checkpoint
//! record carries and that is then applied to the pipeline's [`Store`]; restore reads the store, which is the
//! base plus every increment. So a checkpoint's cost follows the rate of change, not the state's size.
//!
//! The two backends differ in what stays in memory:
//! - **memory**: every entry. An instance reads its whole key group from the store when it is made, and
//!   never evicts.
//! - **disk**: what fits a memory budget per pipeline. A lookup that misses reads the store; when the
//!   resident estimate of all instances passes the budget, an instance evicts its clean entries (those the
//!   store already holds) down to its share. Entries changed since the last applied checkpoint cannot be
//!   evicted, so when they pass a quarter of the budget the backend asks for an early checkpoint.
//!
//! Without a backend (an operator driven by hand in a unit test, or by the test driver) a checkpoint writes
//! the whole map into the operator's snapshot bytes, as before; restoring such bytes into a bound state
//! marks every entry changed, so a pipeline upgraded from full snapshots moves its state into the store at
//! its first checkpoint.
//!
//! Invariants (of a bound state): a slot tagged [`DIRTY`] is in `dirty` exactly once and is newer than the
//! store; a slot tagged with an epoch was staged in that epoch's change set and may be evicted once that
//! epoch is applied; a clean slot equals the store. A key absent from the map is, on the disk backend,
//! whatever the store says, and on the memory backend absent. `counted` is what this state has added to the
//! backend's resident total.

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::fxhash::FxHashMap;
use crate::operator::TaskInfo;
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::store::changes::{self, ChangeSet};
use crate::store::Store;

/// Where keyed state lives between checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// All of it in memory (checkpoints are still incremental).
    #[default]
    Memory,
    /// In the on-disk store, with what fits the memory budget cached in memory.
    Disk,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "memory" => Ok(BackendKind::Memory),
            "disk" => Ok(BackendKind::Disk),
            _ => Err(Error::Invalid(format!(
                "state backend {s:?}: expected \"memory\" or \"disk\""
            ))),
        }
    }
}

/// The default memory budget of the disk backend.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// The folder of `pipeline`'s state store under a data directory: `.pipelines/NAME`, a name no topic
/// partition folder (`topic-N`) can have; characters outside `[A-Za-z0-9._-]` become `_`.
pub fn state_dir(data_dir: &std::path::Path, pipeline: &str) -> std::path::PathBuf {
    let name: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    };
    data_dir.join(".pipelines").join(name)
}

/// Slot tags: changed since the last checkpoint, or clean. Any other value is the epoch it was staged in.
const DIRTY: u64 = u64::MAX;
const CLEAN: u64 = 0;

/// One pipeline's state backend, shared by its tasks.
#[derive(Debug)]
pub struct StateBackend {
    store: Arc<Store>,
    kind: BackendKind,
    budget: usize,
    resident: AtomicUsize,
    dirty: AtomicUsize,
    /// What the store itself keeps in memory (run indexes and Bloom filters), counted in the budget.
    store_overhead: AtomicUsize,
    /// Bound disk-backend states (the budget is shared among them).
    live: AtomicUsize,
    /// The epoch change sets are staged in now (starts at 1).
    epoch: AtomicU64,
    /// The newest epoch whose change sets the store holds.
    applied: AtomicU64,
    staged: Mutex<Vec<Bytes>>,
    /// Bytes of change sets staged or sealed and not yet applied to the store, and the sealed ones by epoch:
    /// memory the budget must leave room for (see [`StateBackend::used`]).
    pending: AtomicUsize,
    sealed: Mutex<Vec<(u64, usize)>>,
    /// The applied epoch at which a wait for room timed out (no more waits until another is applied).
    gave_up_at: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

pub type StateHandle = Arc<StateBackend>;

impl StateBackend {
    pub fn new(store: Arc<Store>, kind: BackendKind, budget: usize) -> StateHandle {
        let overhead = store.memory_bytes();
        // Indexes spilled by an earlier run are scratch: they are rebuilt from the state.
        crate::time_index::clear_spill_dir(store.dir());
        Arc::new(StateBackend {
            store,
            kind,
            budget,
            resident: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            store_overhead: AtomicUsize::new(overhead),
            live: AtomicUsize::new(0),
            epoch: AtomicU64::new(1),
            applied: AtomicU64::new(0),
            staged: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            sealed: Mutex::new(Vec::new()),
            gave_up_at: AtomicU64::new(u64::MAX),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Ends the epoch (every task has staged its changes): its number and change sets, for the checkpoint.
    pub fn seal(&self) -> (u64, Vec<Bytes>) {
        let sets = std::mem::take(&mut *self.staged.lock());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel);
        let bytes = sets.iter().map(Bytes::len).sum();
        self.sealed.lock().push((epoch, bytes));
        (epoch, sets)
    }

    /// The change sets of `epoch` are in the store: its entries may be evicted.
    pub fn mark_applied(&self, epoch: u64) {
        self.store_overhead
            .store(self.store.memory_bytes(), Ordering::Relaxed);
        self.applied.fetch_max(epoch, Ordering::AcqRel);
        let mut freed = 0;
        self.sealed.lock().retain(|&(e, bytes)| {
            let done = e <= epoch;
            if done {
                freed += bytes;
            }
            !done
        });
        self.pending.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Memory held for change sets on their way to the store: the sets, and the checkpoint record that
    /// carries a copy of them while it is written.
    fn in_flight(&self) -> usize {
        self.pending.load(Ordering::Relaxed) * 2
    }

    /// The bytes the budget caps: resident state, the store's own indexes and filters, and the changes on
    /// their way to the store.
    fn used(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
            + self.store_overhead.load(Ordering::Relaxed)
            + self.in_flight()
    }

    /// The budget left for resident state once the store's overhead and the changes in flight are paid (at
    /// least a quarter of it).
    fn state_budget(&self) -> usize {
        self.budget
            .saturating_sub(self.store_overhead.load(Ordering::Relaxed) + self.in_flight())
            .max(self.budget / 4)
    }

    /// Changed state has grown past a quarter of the memory budget: a checkpoint would let it be evicted.
    /// (A quarter: up to two checkpoints may be on their way to the store, their entries not yet evictable,
    /// while the next quarter changes; together they stay within the budget.)
    ///
    /// Also when resident state is past the budget and every sealed epoch is in the store: the entries are
    /// then all evictable, and the checkpoint evicts them (see [`KeyedState::checkpoint`]), which matters
    /// when the input has stopped and no access would.
    pub fn wants_checkpoint(&self) -> bool {
        if self.kind != BackendKind::Disk {
            return false;
        }
        let all_applied =
            self.applied.load(Ordering::Acquire) + 1 >= self.epoch.load(Ordering::Acquire);
        self.dirty.load(Ordering::Relaxed) > self.state_budget() / 2
            || (all_applied && self.resident.load(Ordering::Relaxed) > self.state_budget())
    }

    /// Estimated bytes of keyed state held in memory (all instances), with the store's indexes and filters
    /// and the changes on their way to the store.
    pub fn resident_bytes(&self) -> usize {
        self.used()
    }

    /// Adds `bytes` held by an index derived from keyed state (see [`crate::time_index`]) to the resident
    /// total, or removes them.
    pub(crate) fn count(&self, bytes: usize) {
        self.resident.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn uncount(&self, bytes: usize) {
        self.resident.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Backpressure: while memory is an eighth past the budget and a checkpoint is on its way to the store
    /// (whose entries become evictable once it is applied), waits for it, at most `ROOM_WAIT` and once per
    /// applied epoch (a committer slower than that only lets memory grow, it does not stall the tasks at
    /// every access). Without a checkpoint in flight it returns at once: the next one needs the task that is
    /// calling. True if it waited until an epoch was applied.
    fn wait_for_room(&self) -> bool {
        const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let limit = self.budget + self.budget / 8;
        let applied = self.applied.load(Ordering::Acquire);
        let in_flight = || applied + 1 < self.epoch.load(Ordering::Acquire);
        if self.used() <= limit
            || !in_flight()
            || self.gave_up_at.load(Ordering::Relaxed) == applied
        {
            return false;
        }
        let deadline = std::time::Instant::now() + ROOM_WAIT;
        while self.applied.load(Ordering::Acquire) == applied
            && !self.failed.load(Ordering::Acquire)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let moved = self.applied.load(Ordering::Acquire) != applied;
        if !moved {
            self.gave_up_at.store(applied, Ordering::Relaxed);
        }
        moved
    }

    /// The disk backend's memory is over its budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.kind == BackendKind::Disk && self.used() > self.budget
    }

    /// The first error a state met reading the store (operators cannot return errors from `process`; the
    /// runtime checks this and fails the pipeline before anything computed from it is committed).
    pub fn take_error(&self) -> Option<Error> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.error.lock().clone()
    }

    pub(crate) fn fail(&self, e: Error) {
        tracing::error!(error = %e, "keyed state could not be read");
        self.error.lock().get_or_insert(e);
        self.failed.store(true, Ordering::Release);
    }

    pub(crate) fn stage(&self, set: Vec<u8>) {
        self.pending.fetch_add(set.len(), Ordering::Relaxed);
        self.staged.lock().push(Bytes::from(set));
    }
}

struct Slot<V> {
    /// None: deleted (the deletion still has to reach the store, or be evicted once it has).
    value: Option<V>,
    tag: u64,
}

struct Bound {
    handle: StateHandle,
    prefix: Vec<u8>,
    /// Scratch: the store key of a lookup, and the block it is read into.
    key_buf: Vec<u8>,
    read_buf: Vec<u8>,
    disk: bool,
}

/// A keyed map with incremental checkpoints (see the module documentation).
pub struct KeyedState<K, V> {
    map: FxHashMap<K, Slot<V>>,
    dirty: Vec<K>,
    bound: Option<Bound>,
    /// Estimated heap bytes of one entry's key and value beyond their inline size (measured at checkpoints).
    heap_per_entry: usize,
    counted: usize,
    dirty_counted: usize,
    /// When an eviction last stopped short of its share for want of evictable entries: the applied epoch
    /// and `clean_loads` then. Entries become evictable only when an epoch is applied or a clean entry is
    /// read from the store, so eviction (a pass over the whole map) is not tried again before one of those
    /// has happened, and for loads only once they add up to a sixteenth of the map: otherwise a state whose
    /// changed entries alone pass its share would pass over the whole map at every access.
    evict_stuck_at: Option<(u64, usize)>,
    clean_loads: usize,
}

impl<K: Key, V: StateCodec> Default for KeyedState<K, V> {
    fn default() -> Self {
        KeyedState::new()
    }
}

impl<K, V> KeyedState<K, V> {
    pub fn new() -> Self {
        KeyedState {
            map: FxHashMap::default(),
            dirty: Vec::new(),
            bound: None,
            heap_per_entry: 48,
            counted: 0,
            dirty_counted: 0,
            evict_stuck_at: None,
            clean_loads: 0,
        }
    }
}

impl<K: Key, V: StateCodec> KeyedState<K, V> {
    /// Estimated resident bytes of one entry: the table slot (a hash table is between 7/16 and 7/8 full:
    /// counted at 5/8) and what the entry owns on the heap.
    fn entry_bytes(&self) -> usize {
        (std::mem::size_of::<(K, Slot<V>)>() + 1) * 8 / 5 + self.heap_per_entry
    }

    /// A changed entry also has its key in `dirty` (a clone, which for a shared buffer is one more small
    /// allocation).
    fn dirty_entry_bytes(&self) -> usize {
        self.entry_bytes() + std::mem::size_of::<K>() + 32
    }

    /// Binds the state to its task's backend, under the operator's id and key group. A state of a step that
    /// is not keyed (no key group), or without a backend, stays unbound.
    pub fn bind(&mut self, task: &TaskInfo) {
        self.bind_as(task, &task.operator);
    }

    /// [`KeyedState::bind`] for an operator's second (third...) keyed state: `name` tells it from the
    /// operator's first one in the store. The store key of a state is prefixed with its name's length, so
    /// `"<operator>\u{1f}sessions"` and `"<operator>"` never share a prefix.
    pub fn bind_named(&mut self, task: &TaskInfo, name: &str) {
        self.bind_as(task, &format!("{}\u{1f}{name}", task.operator));
    }

    fn bind_as(&mut self, task: &TaskInfo, id: &str) {
        let (Some(handle), Some(group)) = (&task.state, task.key_group) else {
            return;
        };
        let disk = handle.kind == BackendKind::Disk;
        let b = Bound {
            handle: handle.clone(),
            prefix: changes::prefix(id, group),
            key_buf: Vec::new(),
            read_buf: Vec::new(),
            disk,
        };
        if disk {
            handle.live.fetch_add(1, Ordering::Relaxed);
        } else {
            // The memory backend holds everything: read the key group now.
            let mut loaded = Vec::new();
            let mut bad = None;
            let scanned = handle.store.scan_prefix(&b.prefix, |k, v| {
                match (
                    K::decode(&mut StateReader::new(k)),
                    V::decode(&mut StateReader::new(v)),
                ) {
                    (Ok(k), Ok(v)) => loaded.push((k, v)),
                    (Err(e), _) | (_, Err(e)) => bad = Some(e),
                }
            });
            if let Some(e) = scanned.err().or(bad) {
                handle.fail(e);
            }
            for (k, v) in loaded {
                self.map.insert(
                    k,
                    Slot {
                        value: Some(v),
                        tag: CLEAN,
                    },
                );
            }
        }
        self.bound = Some(b);
        self.recount();
    }

    /// Brings the backend's resident total in line with this state's entries.
    fn recount(&mut self) {
        let now = self.map.len() * self.entry_bytes();
        let dirty = self.dirty.len() * self.dirty_entry_bytes();
        if let Some(b) = &self.bound {
            let h = &b.handle;
            if now >= self.counted {
                h.resident.fetch_add(now - self.counted, Ordering::Relaxed);
            } else {
                h.resident.fetch_sub(self.counted - now, Ordering::Relaxed);
            }
            if dirty >= self.dirty_counted {
                h.dirty
                    .fetch_add(dirty - self.dirty_counted, Ordering::Relaxed);
            } else {
                h.dirty
                    .fetch_sub(self.dirty_counted - dirty, Ordering::Relaxed);
            }
        }
        self.counted = now;
        self.dirty_counted = dirty;
    }

    /// Counts one more entry (and maybe one more changed one) without a full recount.
    fn count_new(&mut self, dirty: bool) {
        let (e, d) = (self.entry_bytes(), self.dirty_entry_bytes());
        if let Some(b) = &self.bound {
            b.handle.resident.fetch_add(e, Ordering::Relaxed);
            if dirty {
                b.handle.dirty.fetch_add(d, Ordering::Relaxed);
            }
        }
        self.counted += e;
        if dirty {
            self.dirty_counted += d;
        }
    }

    /// On the disk backend: evicts clean entries while the pipeline is over its budget, and reads `key` from
    /// the store if it is not resident.
    fn load(&mut self, key: &K) {
        let Some(b) = &mut self.bound else { return };
        if !b.disk {
            return;
        }
        let over = b.handle.used() > b.handle.budget;
        if over {
            let handle = b.handle.clone();
            self.evict();
            if self.evict_stuck_at.is_some() && handle.wait_for_room() {
                self.evict();
            }
        }
        let Some(b) = &mut self.bound else { return };
        if self.map.contains_key(key) {
            return;
        }
        b.key_buf.clear();
        b.key_buf.extend_from_slice(&b.prefix);
        let mut w = StateWriter {
            buf: std::mem::take(&mut b.key_buf),
        };
        key.encode(&mut w);
        b.key_buf = w.buf;
        let got = b.handle.store.get(&b.key_buf, &mut b.read_buf, |bytes| {
            V::decode(&mut StateReader::new(bytes))
        });
        match got {
            Ok(Some(Ok(v))) => {
                self.map.insert(
                    key.to_stored(),
                    Slot {
                        value: Some(v),
                        tag: CLEAN,
                    },
                );
                self.count_new(false);
                self.clean_loads += 1;
            }
            Ok(None) => {}
            Ok(Some(Err(e))) | Err(e) => b.handle.fail(e),
        }
    }

    /// Evicts entries the store holds until this state is within its share of the budget.
    fn evict(&mut self) {
        let Some(b) = &self.bound else { return };
        let h = &b.handle;
        let share = h.state_budget() * 3 / 4 / h.live.load(Ordering::Relaxed).max(1);
        let per = self.entry_bytes();
        if self.counted <= share {
            return;
        }
        let applied = h.applied.load(Ordering::Acquire);
        if let Some((at, loads)) = self.evict_stuck_at {
            let loaded = self.clean_loads - loads;
            if at == applied && loaded < (self.map.len() / 16).max(64) {
                return;
            }
        }
        let mut excess = (self.counted - share) / per.max(1) + 1;
        self.map.retain(|_, s| {
            if excess > 0 && s.tag != DIRTY && s.tag <= applied {
                excess -= 1;
                false
            } else {
                true
            }
        });
        if self.map.capacity() > 2 * self.map.len() + 64 {
            self.map.shrink_to_fit();
        }
        self.evict_stuck_at = (excess > 0).then_some((applied, self.clean_loads));
        self.recount();
    }

    /// The value of `key`, if any.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.load(key);
        self.map.get(key).and_then(|s| s.value.as_ref())
    }

    /// The slot of `key`, made if there is none, marked changed.
    fn slot_mut(&mut self, key: K) -> &mut Slot<V> {
        self.load(&key);
        let (e, d) = (self.entry_bytes(), self.dirty_entry_bytes());
        let KeyedState {
            map,
            dirty,
            bound,
            counted,
            dirty_counted,
            ..
        } = self;
        let new = !map.contains_key(&key);
        // A new key is stored detached from the buffer it was read in (see Key::to_stored).
        let key = if new { key.to_stored() } else { key };
        // An unbound state writes everything at a checkpoint: it keeps no list of changes.
        let track = bound.is_some();
        let (slot, newly_dirty) = match map.entry(key) {
            Entry::Occupied(o) => {
                let k = o.key().clone();
                let slot = o.into_mut();
                let newly = slot.tag != DIRTY && track;
                if newly {
                    slot.tag = DIRTY;
                    dirty.push(k);
                }
                (slot, newly)
            }
            Entry::Vacant(v) => {
                if track {
                    dirty.push(v.key().clone());
                }
                let slot = v.insert(Slot {
                    value: None,
                    tag: DIRTY,
                });
                (slot, track)
            }
        };
        if new {
            *counted += e;
        }
        if newly_dirty {
            *dirty_counted += d;
        }
        if let Some(b) = bound {
            if new {
                b.handle.resident.fetch_add(e, Ordering::Relaxed);
            }
            if newly_dirty {
                b.handle.dirty.fetch_add(d, Ordering::Relaxed);
            }
        }
        slot
    }

    /// The value of `key` for changing in place, if there is one (it counts as changed).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.load(key);
        let d = self.dirty_entry_bytes();
        let KeyedState {
            map,
            dirty,
            bound,
            dirty_counted,
            ..
        } = self;
        // One lookup. A newly changed key is listed as a stored copy (`key` may share a read buffer), made
        // once per key and checkpoint, not per call.
        let slot = map.get_mut(key)?;
        slot.value.as_ref()?;
        if let Some(b) = bound {
            if slot.tag != DIRTY {
                slot.tag = DIRTY;
                dirty.push(key.to_stored());
                *dirty_counted += d;
                b.handle.dirty.fetch_add(d, Ordering::Relaxed);
            }
        }
        slot.value.as_mut()
    }

    /// The value of `key` for changing, made by `init` if there is none.
    pub fn get_or_insert_with(&mut self, key: K, init: impl FnOnce() -> V) -> &mut V {
        self.slot_mut(key).value.get_or_insert_with(init)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: K, value: V) {
        self.slot_mut(key).value = Some(value);
    }

    /// Deletes `key`. (On the disk backend the deletion is kept until it reaches the store, since the
    /// store may hold the key.)
    pub fn remove(&mut self, key: &K) {
        if self.bound.is_none() {
            // Nothing to tell a store: forget it now.
            if self.map.remove(key).is_some() {
                self.recount();
            }
            return;
        }
        let resident = self.map.contains_key(key);
        if !resident && !self.bound.as_ref().is_some_and(|b| b.disk) {
            return;
        }
        self.slot_mut(key.clone()).value = None;
    }

    /// Calls `f` with every entry: the resident ones and, on the disk backend, those only the store holds (a
    /// resident entry, deleted or not, is newer than the store's). Reads the key group's whole part of the
    /// store on the disk backend: for rebuilding an index at a restore, not for a running step.
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) -> Result<()> {
        for (k, slot) in &self.map {
            if let Some(v) = &slot.value {
                f(k, v);
            }
        }
        let Some(b) = self.bound.as_ref().filter(|b| b.disk) else {
            return Ok(());
        };
        let mut bad = None;
        b.handle.store.scan_prefix(&b.prefix, |kb, vb| {
            let decoded = K::decode(&mut StateReader::new(kb))
                .and_then(|k| Ok((k, V::decode(&mut StateReader::new(vb))?)));
            match decoded {
                Ok((k, v)) if !self.map.contains_key(&k) => f(&k, &v),
                Ok(_) => {}
                Err(e) => {
                    bad.get_or_insert(e);
                }
            }
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Entries resident in memory (on the disk backend, not all the state has).
    pub fn resident(&self) -> usize {
        self.map.values().filter(|s| s.value.is_some()).count()
    }

    /// Every resident entry (all of them unless on the disk backend).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map
            .iter()
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k, v)))
    }

    /// At a checkpoint: a bound state stages what changed; an unbound one writes all of itself to `state`.
    pub fn checkpoint(&mut self, state: &mut Vec<u8>) {
        let Some(b) = &mut self.bound else {
            let live = self.resident();
            if live == 0 {
                return;
            }
            let mut w = StateWriter {
                buf: std::mem::take(state),
            };
            w.u8(1);
            w.u32(live as u32);
            for (k, v) in self.iter() {
                k.encode(&mut w);
                v.encode(&mut w);
            }
            *state = w.buf;
            self.dirty.clear();
            return;
        };
        // Entries staged in earlier checkpoints are evictable once the store holds them: trimmed here too, not
        // only on the next access, so a state that stops being read (input caught up) still comes back within
        // its budget.
        if b.disk && b.handle.used() > b.handle.budget {
            self.evict();
        }
        let Some(b) = &mut self.bound else {
            return;
        };
        if self.dirty.is_empty() {
            return;
        }
        let epoch = b.handle.epoch.load(Ordering::Acquire);
        let mut set = ChangeSet::new(&b.prefix);
        let mut kbuf = StateWriter::new();
        let mut deleted = Vec::new();
        for k in self.dirty.drain(..) {
            let Some(slot) = self.map.get_mut(&k) else {
                continue;
            };
            if slot.tag != DIRTY {
                continue;
            }
            slot.tag = epoch;
            if slot.value.is_none() && !b.disk {
                deleted.push(k.clone());
            }
            kbuf.buf.clear();
            k.encode(&mut kbuf);
            match &slot.value {
                Some(v) => set.push(
                    &kbuf.buf,
                    Some(&|out: &mut Vec<u8>| {
                        let mut w = StateWriter {
                            buf: std::mem::take(out),
                        };
                        v.encode(&mut w);
                        *out = w.buf;
                    }),
                ),
                None => set.push(&kbuf.buf, None),
            }
        }
        let n = set.len();
        let bytes = set.finish();
        if let Some(per) = bytes.len().checked_div(n) {
            // The encoded size (less its two length fields) stands in for what an entry owns on the heap,
            // rounded up to the allocator's 16-byte chunks, plus one chunk header.
            let heap = per.saturating_sub(8).div_ceil(16) * 16 + 16;
            self.heap_per_entry = (self.heap_per_entry + heap) / 2;
            b.handle.stage(bytes);
        }
        // On the memory backend nothing is read back from the store while running: deletions need not stay
        // resident. (Removed one by one: a pass over the whole map would make checkpoints grow with the
        // state.)
        for k in deleted {
            self.map.remove(&k);
        }
        self.recount();
    }

    /// [`KeyedState::checkpoint`] into an operator's snapshot, as one length-prefixed field (empty for a bound
    /// state), which [`StateReader::bytes`] reads back for [`KeyedState::restore`].
    pub fn write_to(&mut self, w: &mut StateWriter) {
        let mut bytes = Vec::new();
        self.checkpoint(&mut bytes);
        w.bytes(&bytes);
    }

    /// Restores what an unbound state's checkpoint wrote (in a bound state, as changes to stage).
    /// Empty bytes are an empty state (what a checkpoint of one writes).
    pub fn restore(&mut self, state: &[u8]) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if version != 1 {
            return Err(Error::CorruptState(format!(
                "keyed state version {version}"
            )));
        }
        for _ in 0..r.count(1)? {
            let k = K::decode(&mut r)?;
            let v = V::decode(&mut r)?;
            self.put(k, v);
        }
        if !r.is_empty() {
            return Err(Error::CorruptState("trailing bytes".into()));
        }
        Ok(())
    }
}

impl<K, V> Drop for KeyedState<K, V> {
    fn drop(&mut self) {
        if let Some(b) = &self.bound {
            b.handle.resident.fetch_sub(self.counted, Ordering::Relaxed);
            b.handle
                .dirty
                .fetch_sub(self.dirty_counted, Ordering::Relaxed);
            if b.disk {
                b.handle.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::{backend, commit};

    fn info(h: &StateHandle, group: u16) -> TaskInfo {
        crate::test_support::task(h, group, "agg")
    }

    fn state(h: &StateHandle, group: u16) -> KeyedState<String, u64> {
        let mut s = KeyedState::new();
        s.bind(&info(h, group));
        s
    }

    #[test]
    fn changes_on_their_way_to_the_store_count_against_the_budget_until_applied() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Disk, 64 << 20);
        let mut s = state(&h, 1);
        for i in 0..10_000u64 {
            s.put(format!("k{i}"), i);
        }
        let before = h.resident_bytes();
        s.checkpoint(&mut Vec::new());
        let (epoch, sets) = h.seal();
        let bytes: usize = sets.iter().map(Bytes::len).sum();
        assert!(bytes > 10_000 * 8);
        // The sets and the checkpoint record that copies them, until the store holds them.
        assert!(
            h.resident_bytes() >= 2 * bytes,
            "{} with {bytes} bytes in flight",
            h.resident_bytes()
        );
        h.store().apply(1, &sets).unwrap();
        h.mark_applied(epoch);
        assert!(h.resident_bytes() <= before + h.store().memory_bytes());
    }

    #[test]
    fn a_checkpoint_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Memory, DEFAULT_MEMORY_BUDGET);
        let mut s = state(&h, 3);
        for i in 0..10_000u64 {
            s.put(format!("k{i}"), i);
        }
        let mut bytes = Vec::new();
        s.checkpoint(&mut bytes);
        assert!(bytes.is_empty(), "a bound state writes no snapshot bytes");
        let full = commit(&h, 1);
        for i in 0..100u64 {
            *s.get_or_insert_with(format!("k{i}"), || 0) += 1;
        }
        s.remove(&"k9999".to_string());
        s.checkpoint(&mut bytes);
        let delta = commit(&h, 2);
        assert!(delta * 50 < full, "delta {delta} vs full {full}");
        // Nothing changed: nothing staged.
        s.checkpoint(&mut bytes);
        assert_eq!(commit(&h, 3), 0);
        drop(s);

        // A new instance of the same group (a restart) reads the base plus the increments.
        let mut back = state(&h, 3);
        assert_eq!(back.resident(), 9_999);
        assert_eq!(back.get(&"k5".to_string()), Some(&6));
        assert_eq!(back.get(&"k500".to_string()), Some(&500));
        assert_eq!(back.get(&"k9999".to_string()), None);
        // Another group sees none of it.
        assert_eq!(state(&h, 4).resident(), 0);
    }

    #[test]
    fn the_disk_backend_keeps_within_its_budget_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 1 << 20;
        let h = backend(dir.path(), BackendKind::Disk, budget);
        let mut groups: Vec<_> = (0..4).map(|g| state(&h, g)).collect();
        let n = 200_000u64;
        let mut id = 0;
        let mut peak = 0;
        for i in 0..n {
            let s = &mut groups[(i % 4) as usize];
            *s.get_or_insert_with(format!("key-{i}"), || 0) += i;
            if h.wants_checkpoint() {
                for s in &mut groups {
                    s.checkpoint(&mut Vec::new());
                }
                id += 1;
                commit(&h, id);
            }
            peak = peak.max(h.resident_bytes());
        }
        for s in &mut groups {
            s.checkpoint(&mut Vec::new());
        }
        id += 1;
        commit(&h, id);
        assert!(id > 3, "early checkpoints were asked for: {id}");
        assert!(
            peak < 2 * budget,
            "peak resident {peak} over twice the budget {budget}"
        );
        // Every key reads back (most from disk), and updates keep working.
        for i in (0..n).step_by(7) {
            let s = &mut groups[(i % 4) as usize];
            assert_eq!(s.get(&format!("key-{i}")), Some(&i), "key-{i}");
            *s.get_or_insert_with(format!("key-{i}"), || 0) += 1;
            if h.wants_checkpoint() {
                for s in &mut groups {
                    s.checkpoint(&mut Vec::new());
                }
                id += 1;
                commit(&h, id);
            }
            assert!(h.resident_bytes() < 2 * budget);
        }
        for s in &mut groups {
            s.checkpoint(&mut Vec::new());
        }
        commit(&h, id + 1);
        drop(groups);
        assert_eq!(
            h.resident_bytes(),
            h.store().memory_bytes(),
            "dropped states give their bytes back"
        );

        let reopened = backend(dir.path(), BackendKind::Disk, budget);
        let mut s = state(&reopened, 2);
        assert_eq!(s.get(&"key-14".to_string()), Some(&15));
        assert_eq!(s.get(&"key-6".to_string()), Some(&6));
        assert_eq!(s.get(&"key-7".to_string()), None, "key-7 is in group 3");
    }

    #[test]
    fn entries_on_their_way_to_the_store_are_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Disk, 16 << 10);
        let mut s = state(&h, 0);
        for i in 0..100u64 {
            s.put(format!("k{i}"), 1);
        }
        s.checkpoint(&mut Vec::new());
        commit(&h, 1);
        for i in 0..100u64 {
            s.put(format!("k{i}"), 2);
        }
        // Staged and sealed, not yet applied (the committer is behind).
        s.checkpoint(&mut Vec::new());
        let (epoch, sets) = h.seal();
        // Pressure: many new keys push the state over its budget, so lookups evict.
        for i in 100..2000u64 {
            s.put(format!("k{i}"), 3);
            let _ = s.get(&format!("k{}", i % 100));
        }
        for i in 0..100u64 {
            assert_eq!(s.get(&format!("k{i}")), Some(&2), "k{i}");
        }
        h.store().apply(2, &sets).unwrap();
        h.mark_applied(epoch);
        s.checkpoint(&mut Vec::new());
        commit(&h, 3);
        for i in 0..100u64 {
            assert_eq!(s.get(&format!("k{i}")), Some(&2), "k{i}");
        }
        assert!(
            s.resident() < 1000,
            "once in the store, entries are evicted: {}",
            s.resident()
        );
    }

    #[test]
    fn unbound_state_snapshots_whole_and_a_bound_one_takes_it_over() {
        let mut s: KeyedState<String, u64> = KeyedState::new();
        s.put("a".into(), 1);
        s.put("b".into(), 2);
        s.remove(&"b".to_string());
        let mut bytes = Vec::new();
        s.checkpoint(&mut bytes);
        let mut back: KeyedState<String, u64> = KeyedState::new();
        back.restore(&bytes).unwrap();
        assert_eq!(back.iter().count(), 1);
        assert!(back.restore(&bytes[..bytes.len() - 1]).is_err());

        // Old full snapshot bytes restored into a bound state reach the store at the next checkpoint.
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Disk, 1 << 20);
        let mut bound = state(&h, 0);
        bound.restore(&bytes).unwrap();
        bound.checkpoint(&mut Vec::new());
        commit(&h, 1);
        drop(bound);
        assert_eq!(state(&h, 0).get(&"a".to_string()), Some(&1));
    }

    #[test]
    fn a_damaged_store_is_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Disk, 1 << 20);
        let mut s = state(&h, 0);
        for i in 0..5_000u64 {
            s.put(format!("k{i}"), i);
        }
        s.checkpoint(&mut Vec::new());
        commit(&h, 1);
        drop(s);
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "run") {
                let mut b = std::fs::read(&p).unwrap();
                for x in b.iter_mut().take(20_000).skip(100) {
                    *x ^= 0x55;
                }
                std::fs::write(&p, b).unwrap();
            }
        }
        // The open run keeps its index; its blocks now fail their checksums.
        let mut s = state(&h, 0);
        assert!(h.take_error().is_none());
        for i in 0..50u64 {
            let _ = s.get(&format!("k{i}"));
        }
        assert!(matches!(h.take_error(), Some(Error::CorruptState(_))));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u16, u64),
        Remove(u16),
        Get(u16),
        /// Stage and seal a checkpoint; its changes reach the store at a later Apply (as the committer's
        /// run after the tasks went on).
        Checkpoint,
        Apply,
        /// Apply what is sealed, then drop every state and bind new ones to the same store (a restart).
        Restart,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u16..3000, 1u64..100).prop_map(|(k, v)| Op::Add(k, v)),
            2 => (0u16..3000).prop_map(Op::Remove),
            3 => (0u16..3000).prop_map(Op::Get),
            1 => Just(Op::Checkpoint),
            1 => Just(Op::Apply),
            1 => Just(Op::Restart),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// Any sequence of changes, reads, checkpoints and restarts, on either backend and with a budget small
        /// enough to evict, reads the same as a plain map (restarts keep what was checkpointed).
        #[test]
        fn equals_a_map_across_checkpoints_evictions_and_restarts(
            ops in proptest::collection::vec(op(), 1..1500),
            disk in proptest::bool::ANY,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let kind = if disk { BackendKind::Disk } else { BackendKind::Memory };
            // 24 KiB: a few hundred entries, so the disk backend evicts and reads back all the time.
            let h = backend(dir.path(), kind, 24 << 10);
            let groups = 3u16;
            let mut states: Vec<_> = (0..groups).map(|g| state(&h, g)).collect();
            let mut model: std::collections::HashMap<u16, u64> = Default::default();
            let mut committed = model.clone();
            let mut sealed = std::collections::VecDeque::new();
            let mut id = 0;
            let name = |k: u16| format!("key-{k}-{}", "x".repeat(usize::from(k % 40)));
            for op in ops {
                match op {
                    Op::Add(k, v) => {
                        *states[usize::from(k % groups)].get_or_insert_with(name(k), || 0) += v;
                        *model.entry(k).or_default() += v;
                    }
                    Op::Remove(k) => {
                        states[usize::from(k % groups)].remove(&name(k));
                        model.remove(&k);
                    }
                    Op::Get(k) => {
                        let got = states[usize::from(k % groups)].get(&name(k)).copied();
                        proptest::prop_assert_eq!(got, model.get(&k).copied(), "key {}", k);
                    }
                    Op::Checkpoint => {
                        for s in &mut states {
                            s.checkpoint(&mut Vec::new());
                        }
                        let (epoch, sets) = h.seal();
                        sealed.push_back((epoch, sets, model.clone()));
                    }
                    Op::Apply | Op::Restart => {
                        let n = if matches!(op, Op::Apply) { 1 } else { sealed.len() };
                        for (epoch, sets, m) in sealed.drain(..n.min(sealed.len())) {
                            id += 1;
                            h.store().apply(id, &sets).unwrap();
                            h.mark_applied(epoch);
                            committed = m;
                        }
                        if matches!(op, Op::Restart) {
                            // Changes after the last checkpoint are lost, as in a crash.
                            states.clear();
                            states = (0..groups).map(|g| state(&h, g)).collect();
                            model = committed.clone();
                        }
                    }
                }
            }
            proptest::prop_assert!(h.take_error().is_none());
            // Without a final checkpoint, a restart sees the last committed state.
            drop(states);
            let mut states: Vec<_> = (0..groups).map(|g| state(&h, g)).collect();
            for k in 0..3000u16 {
                let got = states[usize::from(k % groups)].get(&name(k)).copied();
                proptest::prop_assert_eq!(got, committed.get(&k).copied(), "key {}", k);
            }
        }
    }

    #[test]
    fn state_dirs_never_look_like_partitions() {
        let d = std::path::Path::new("/data");
        assert_eq!(state_dir(d, "p-1"), d.join(".pipelines/p-1"));
        assert_eq!(state_dir(d, "../x"), d.join(".pipelines/_.._x"));
        assert_eq!(state_dir(d, ""), d.join(".pipelines/_"));
    }
}
