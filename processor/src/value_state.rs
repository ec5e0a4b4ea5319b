//! Per-key value state with an optional time-to-live, as Flink's `ValueState` with a `StateTtlConfig`.
//!
//! [`ValueState`] holds one value per key. With a [`StateTtl`] every entry carries the time of its last access
//! (its *stamp*) and expires `ttl` after it:
//! - which accesses stamp is the [`UpdateType`]: creation and writes, or reads too;
//! - which clock stamps and judges expiry is the [`TtlTime`]. The caller passes that clock's current value to
//!   every call (`None` when it is not known yet, as processing time before the first tick);
//! - an expired entry is never returned: a read at or after `stamp + ttl` sees `None` (Flink's
//!   `NeverReturnExpired`) and removes it;
//! - expired entries are also removed incrementally, at most a bounded number per [`ValueState::cleanup`] call
//!   (so no call stalls on a mass expiry), and all of them by [`ValueState::cleanup_all`] before a snapshot,
//!   so that neither memory nor checkpoints grow with keys that are gone;
//! - an access while the clock is unknown is stamped with the first known clock value given to a cleanup (the
//!   access happened just before it); until then the entry cannot expire;
//! - stamps are absolute times and are written to snapshots, so a restore keeps how long each entry has left.
//!
//! The entries are [`KeyedState`]: a checkpoint writes the keys whose value or stamp changed since the last
//! one, and on the disk backend they may be more than memory holds. `expiry` and `pending` are derived from
//! the entries (rebuilt when the state is bound or restored, never written); `expiry` is a [`TimeIndex`],
//! which on the disk backend spills to a scratch file over the memory budget.
//!
//! Expiry is indexed by *slot*: the expiry time rounded up to an eighth of the TTL, so that an entry renewed
//! at every read (`OnReadAndWrite`) adds an index entry at most eight times per TTL, not once per read.
//!
//! Invariants (with a TTL): every entry whose stamp is known has `(slot(stamp + ttl), key)` in `expiry`, or
//! `(t, key)` in `due` with `t` in the same slot as its expiry and at or before it; `expiry` and `due` may
//! also hold stale pairs (of entries restamped to another slot or removed since: a cleanup checks each pair
//! against the entry); `due` is sorted and holds pairs taken from `expiry` by a cleanup whose clock had
//! reached the start of their slot; every entry whose stamp is pending is in `pending`, and nothing else is.
//! Without a TTL all three are empty and stamps are not kept (they are written as pending, so that a TTL
//! added later starts counting at the first clock value after the restore). `count` is the number of
//! entries.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::keyed_state::KeyedState;
use crate::operator::TaskInfo;
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::time_index::TimeIndex;

/// How many expired entries one incremental cleanup removes at most.
pub const CLEANUP_BATCH: usize = 64;

/// The stamp of an entry accessed while the clock was unknown (and of every entry without a TTL).
const PENDING: i64 = i64::MIN;

/// The clock a TTL follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlTime {
    /// Processing time (epoch ms; virtual in the test driver).
    ProcessingTime,
    /// Event time: the event time of what is being handled, never below the watermark (see the operator that
    /// uses it for exactly which).
    EventTime,
}

/// Which accesses renew an entry's time-to-live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateType {
    /// Creating or writing the value.
    OnCreateAndWrite,
    /// Reading it too.
    OnReadAndWrite,
}

/// A time-to-live for keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    /// At least 1 ms: with 0 a value would be expired the moment it is written.
    pub ttl_ms: i64,
    pub time: TtlTime,
    pub update: UpdateType,
}

impl StateTtl {
    pub fn new(ttl: Duration, time: TtlTime, update: UpdateType) -> StateTtl {
        StateTtl {
            ttl_ms: ttl.as_millis().clamp(1, i64::MAX as u128) as i64,
            time,
            update,
        }
    }
}

/// A value with the time of its last access (its stamp).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<S> {
    value: S,
    stamp: i64,
}

impl<S: StateCodec> StateCodec for Entry<S> {
    fn encode(&self, w: &mut StateWriter) {
        w.i64(self.stamp);
        self.value.encode(w);
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let stamp = r.i64()?;
        Ok(Entry {
            stamp,
            value: S::decode(r)?,
        })
    }
}

/// One value per key, with an optional time-to-live (see the module documentation).
pub struct ValueState<K, S> {
    ttl: Option<StateTtl>,
    entries: KeyedState<K, Entry<S>>,
    count: usize,
    /// (expiry time, key) of every entry with a known stamp (see the invariants).
    expiry: TimeIndex<K>,
    due: VecDeque<(i64, K)>,
    /// Entries accessed while the clock was unknown.
    pending: HashSet<K>,
    expired: u64,
}

impl<K: Key, S: StateCodec> ValueState<K, S> {
    pub fn new(ttl: Option<StateTtl>) -> Self {
        ValueState {
            ttl,
            entries: KeyedState::new(),
            count: 0,
            expiry: TimeIndex::new(),
            due: VecDeque::new(),
            pending: HashSet::new(),
            expired: 0,
        }
    }

    pub fn ttl(&self) -> Option<StateTtl> {
        self.ttl
    }

    /// Entries held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Binds the entries to the task's state backend (see [`KeyedState::bind`]) and lists what it holds.
    pub fn bind(&mut self, task: &TaskInfo) {
        self.entries.bind(task);
        self.expiry.bind(task);
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild();
    }

    /// Lists every entry's expiry (or pending stamp) again, and counts the entries.
    fn rebuild(&mut self) -> Result<()> {
        let (mut pending, mut count) = (HashSet::new(), 0);
        let ttl = self.ttl;
        let expiry = &mut self.expiry;
        expiry.clear();
        self.due.clear();
        self.entries.for_each(|key, e| {
            count += 1;
            if let Some(ttl) = ttl {
                if e.stamp == PENDING {
                    pending.insert(key.clone());
                } else {
                    expiry.push(
                        Self::slot(&ttl, Self::expires_at(&ttl, e.stamp)),
                        key.clone(),
                    );
                }
            }
        })?;
        self.pending = pending;
        self.count = count;
        Ok(())
    }

    /// Entries removed because they expired, since this state was made.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn expires_at(ttl: &StateTtl, stamp: i64) -> i64 {
        stamp.saturating_add(ttl.ttl_ms)
    }

    /// The granularity of the expiry index.
    fn granule(ttl: &StateTtl) -> i64 {
        (ttl.ttl_ms / 8).max(1)
    }

    /// The slot of an expiry time: the last millisecond of its granule (never before it).
    fn slot(ttl: &StateTtl, at: i64) -> i64 {
        let g = Self::granule(ttl);
        at.div_euclid(g).saturating_mul(g).saturating_add(g - 1)
    }

    /// Moves `key`'s stamp from `old` to `clock` (the caller has checked there is a TTL).
    fn restamp(&mut self, ttl: StateTtl, key: &K, old: i64, clock: Option<i64>) -> i64 {
        // The old expiry's pair, if any, goes stale (see the invariants).
        if old == PENDING {
            self.pending.remove(key);
        }
        match clock {
            Some(now) => {
                let slot = Self::slot(&ttl, Self::expires_at(&ttl, now));
                if old == PENDING || Self::slot(&ttl, Self::expires_at(&ttl, old)) != slot {
                    self.expiry.push(slot, key.to_stored());
                }
                now
            }
            None => {
                self.pending.insert(key.clone());
                PENDING
            }
        }
    }

    /// Forgets `key`'s entry and its place in the indexes.
    fn remove(&mut self, key: &K) {
        let Some(stamp) = self.entries.get(key).map(|e| e.stamp) else {
            return;
        };
        self.entries.remove(key);
        self.count = self.count.saturating_sub(1);
        // Its expiry pair, if any, goes stale.
        if self.ttl.is_some() && stamp == PENDING {
            self.pending.remove(key);
        }
    }

    /// `key`'s value, unless it has expired by `clock` (then it is removed). With
    /// [`UpdateType::OnReadAndWrite`] the read renews it.
    pub fn get(&mut self, key: &K, clock: Option<i64>) -> Option<&S> {
        let Some(ttl) = self.ttl else {
            return self.entries.get(key).map(|e| &e.value);
        };
        let stamp = self.entries.get(key)?.stamp;
        if let Some(now) = clock {
            if stamp != PENDING && Self::expires_at(&ttl, stamp) <= now {
                self.remove(key);
                self.expired += 1;
                return None;
            }
        }
        if ttl.update == UpdateType::OnReadAndWrite {
            let new = self.restamp(ttl, key, stamp, clock);
            if let Some(e) = self.entries.get_mut(key) {
                e.stamp = new;
            }
        }
        self.entries.get(key).map(|e| &e.value)
    }

    /// Sets `key`'s value (a write: it renews the time-to-live).
    pub fn set(&mut self, key: &K, value: S, clock: Option<i64>) {
        let old = self.entries.get(key).map(|e| e.stamp);
        if old.is_none() {
            self.count += 1;
        }
        let Some(ttl) = self.ttl else {
            self.entries.put(
                key.clone(),
                Entry {
                    value,
                    stamp: PENDING,
                },
            );
            return;
        };
        let stamp = match old {
            Some(old) => self.restamp(ttl, key, old, clock),
            None => match clock {
                Some(now) => {
                    self.expiry.push(
                        Self::slot(&ttl, Self::expires_at(&ttl, now)),
                        key.to_stored(),
                    );
                    now
                }
                None => {
                    self.pending.insert(key.clone());
                    PENDING
                }
            },
        };
        self.entries.put(key.clone(), Entry { value, stamp });
    }

    /// Removes `key`'s value.
    pub fn clear(&mut self, key: &K) {
        self.remove(key);
    }

    /// Stamps the entries accessed while the clock was unknown.
    fn stamp_pending(&mut self, ttl: StateTtl, now: i64) {
        for key in std::mem::take(&mut self.pending) {
            if let Some(e) = self.entries.get_mut(&key) {
                e.stamp = now;
                self.expiry
                    .push(Self::slot(&ttl, Self::expires_at(&ttl, now)), key);
            }
        }
    }

    /// Removes at most `max` entries expired by `clock`; returns how many it removed.
    pub fn cleanup(&mut self, clock: Option<i64>, max: usize) -> usize {
        let (Some(ttl), Some(now)) = (self.ttl, clock) else {
            return 0;
        };
        if !self.pending.is_empty() {
            self.stamp_pending(ttl, now);
        }
        let g = Self::granule(&ttl);
        let mut removed = 0;
        while removed < max {
            // A slot whose granule has begun may hold expiries at or before `now`, and before what `due` holds.
            let next = self
                .expiry
                .first_time()
                .filter(|t| t.saturating_sub(g - 1) <= now);
            if let Some(slot) = next.filter(|t| {
                self.due
                    .front()
                    .is_none_or(|d| t.saturating_sub(g - 1) <= d.0)
            }) {
                let mut keys = Vec::new();
                self.expiry.drain(slot, |k| keys.push(k));
                let mut merged: Vec<(i64, K)> = self.due.drain(..).collect();
                for key in keys {
                    // Stale unless the entry's expiry is still in this slot.
                    let at = match self.entries.get(&key) {
                        Some(e) if e.stamp != PENDING => Self::expires_at(&ttl, e.stamp),
                        _ => continue,
                    };
                    if Self::slot(&ttl, at) == slot {
                        merged.push((at, key));
                    }
                }
                merged.sort();
                merged.dedup();
                self.due.extend(merged);
                continue;
            }
            let Some((at, key)) = self.due.pop_front() else {
                break;
            };
            if at > now {
                self.due.push_front((at, key));
                break;
            }
            let current = match self.entries.get(&key) {
                Some(e) if e.stamp != PENDING => Self::expires_at(&ttl, e.stamp),
                _ => continue, // removed, or pending (listed there)
            };
            if current == at {
                self.entries.remove(&key);
                self.count = self.count.saturating_sub(1);
                removed += 1;
            } else if Self::slot(&ttl, current) == Self::slot(&ttl, at) {
                // Renewed within the slot (no new pair was made): wait for the new time.
                let i = self.due.partition_point(|e| (e.0, &e.1) < (current, &key));
                self.due.insert(i, (current, key));
            }
        }
        self.expired += removed as u64;
        removed
    }

    /// Removes every entry expired by `clock` (before a snapshot).
    pub fn cleanup_all(&mut self, clock: Option<i64>) -> usize {
        self.cleanup(clock, usize::MAX)
    }
}

impl<K: Key, S: StateCodec> ValueState<K, S> {
    /// At a checkpoint: a bound state stages the entries that changed; an unbound one writes all of them
    /// (see [`KeyedState::checkpoint`]).
    pub fn checkpoint(&mut self, w: &mut StateWriter) {
        self.entries.write_to(w);
    }

    /// Restores what [`ValueState::checkpoint`] wrote, keeping this state's TTL.
    pub fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.entries.restore(r.bytes()?)?;
        self.normalize_stamps()
    }

    /// Restores the entries of a snapshot written before values were keyed state: every (key, stamp, value)
    /// inline, put into the state (and so into the store at the next checkpoint).
    pub fn restore_inline(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        // Each entry takes at least its 8-byte stamp.
        let n = r.count(8)?;
        let mut seen = HashSet::new();
        for _ in 0..n {
            let key = K::decode(r)?;
            let stamp = r.i64()?;
            let value = S::decode(r)?;
            if !seen.insert(key.clone()) {
                return Err(Error::CorruptState("duplicate key in value state".into()));
            }
            self.entries.put(key, Entry { value, stamp });
        }
        self.normalize_stamps()
    }

    /// Without a TTL stamps are not kept (a TTL added later starts from the first clock value); then the
    /// indexes are rebuilt.
    fn normalize_stamps(&mut self) -> Result<()> {
        if self.ttl.is_none() {
            let mut stamped = Vec::new();
            self.entries.for_each(|k, e| {
                if e.stamp != PENDING {
                    stamped.push(k.clone());
                }
            })?;
            for k in stamped {
                if let Some(e) = self.entries.get_mut(&k) {
                    e.stamp = PENDING;
                }
            }
        }
        self.rebuild()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn snapshots_from_before_keyed_state_still_restore() {
        // Format 1: a count, then (key, stamp, value) inline.
        let mut w = StateWriter::new();
        w.u32(2);
        1u64.encode(&mut w);
        w.i64(1_000);
        10u64.encode(&mut w);
        2u64.encode(&mut w);
        w.i64(PENDING);
        20u64.encode(&mut w);
        let mut s = ValueState::<u64, u64>::new(ttl(100, UpdateType::OnCreateAndWrite));
        s.restore_inline(&mut StateReader::new(&w.buf)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&1, Some(1_099)), Some(&10));
        assert_eq!(s.get(&1, Some(1_100)), None, "its stamp survived");
        assert_eq!(
            s.cleanup_all(Some(5_000)),
            0,
            "a pending stamp is stamped at the first clock"
        );
        assert_eq!(s.cleanup_all(Some(5_100)), 1);
        // A key twice is refused.
        let mut w = StateWriter::new();
        w.u32(2);
        for _ in 0..2 {
            1u64.encode(&mut w);
            w.i64(0);
            1u64.encode(&mut w);
        }
        let mut s = ValueState::<u64, u64>::new(None);
        assert!(s.restore_inline(&mut StateReader::new(&w.buf)).is_err());
    }

    fn ttl(ms: u64, update: UpdateType) -> Option<StateTtl> {
        Some(StateTtl::new(
            Duration::from_millis(ms),
            TtlTime::ProcessingTime,
            update,
        ))
    }

    #[test]
    fn without_a_ttl_values_live_until_cleared() {
        let mut s = ValueState::<u64, u64>::new(None);
        s.set(&1, 10, Some(0));
        assert_eq!(s.get(&1, Some(i64::MAX)), Some(&10));
        assert_eq!(s.cleanup_all(Some(i64::MAX)), 0);
        s.clear(&1);
        assert_eq!(s.get(&1, Some(0)), None);
    }

    #[test]
    fn writes_renew_and_reads_do_not_on_create_and_write() {
        let mut s = ValueState::<u64, u64>::new(ttl(100, UpdateType::OnCreateAndWrite));
        s.set(&1, 10, Some(0));
        assert_eq!(s.get(&1, Some(99)), Some(&10));
        assert_eq!(s.get(&1, Some(100)), None, "expired at stamp + ttl");
        assert_eq!(s.len(), 0, "and removed by the read");
        s.set(&2, 20, Some(0));
        s.set(&2, 21, Some(50));
        assert_eq!(s.get(&2, Some(149)), Some(&21));
        assert_eq!(s.get(&2, Some(150)), None);
        assert_eq!(s.expired(), 2);
    }

    #[test]
    fn reads_renew_on_read_and_write() {
        let mut s = ValueState::<u64, u64>::new(ttl(100, UpdateType::OnReadAndWrite));
        s.set(&1, 10, Some(0));
        assert_eq!(s.get(&1, Some(90)), Some(&10));
        assert_eq!(s.get(&1, Some(180)), Some(&10));
        assert_eq!(s.cleanup_all(Some(279)), 0);
        assert_eq!(s.cleanup_all(Some(280)), 1);
        assert!(s.is_empty());
    }

    /// On the disk backend over its budget the expiry index spills; expiry is still exact, restamped entries
    /// included.
    #[test]
    fn a_spilled_expiry_index_expires_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let h = crate::test_support::backend(
            dir.path(),
            crate::keyed_state::BackendKind::Disk,
            256 << 10,
        );
        let mut s = ValueState::<u64, u64>::new(ttl(100, UpdateType::OnReadAndWrite));
        s.bind(&crate::test_support::task(&h, 0, "v"));
        let n = 100_000u64;
        for k in 0..n {
            s.set(&k, k, Some((k % 50) as i64));
        }
        assert!(s.expiry.spilled() > 0, "the index spilled");
        // Every tenth key is read at 120: it lives until 220.
        for k in (0..n).step_by(10) {
            assert_eq!(
                s.get(&k, Some(120)),
                if k % 50 < 21 { None } else { Some(&k) }
            );
        }
        let renewed = (0..n).step_by(10).filter(|k| k % 50 >= 21).count();
        assert_eq!(s.cleanup_all(Some(149)), n as usize - n as usize / 10);
        assert_eq!(s.cleanup_all(Some(219)), 0);
        assert_eq!(s.cleanup_all(Some(220)), renewed);
        assert!(h.take_error().is_none());
        assert_eq!((s.len(), s.expired()), (0, n));
    }

    /// A key renewed at every read adds an index entry once per slot (an eighth of the TTL), not per read.
    #[test]
    fn reads_that_renew_do_not_grow_the_index() {
        let mut s = ValueState::<u64, u64>::new(ttl(800, UpdateType::OnReadAndWrite));
        s.set(&1, 10, Some(0));
        for now in 0..10_000 {
            assert_eq!(s.get(&1, Some(now)), Some(&10));
            s.cleanup(Some(now), CLEANUP_BATCH);
        }
        // One pair per slot still ahead: the TTL's eight, and one more for the slot now being entered.
        assert!(
            s.expiry.len() + s.due.len() <= 9,
            "{}",
            s.expiry.len() + s.due.len()
        );
        assert_eq!(s.cleanup_all(Some(9_999 + 799)), 0);
        assert_eq!(s.cleanup_all(Some(9_999 + 800)), 1);
    }

    #[test]
    fn cleanup_is_bounded_and_complete_before_a_snapshot() {
        let mut s = ValueState::<u64, u64>::new(ttl(10, UpdateType::OnCreateAndWrite));
        for k in 0..(3 * CLEANUP_BATCH as u64) {
            s.set(&k, k, Some(k as i64));
        }
        s.set(&u64::MAX, 0, Some(1_000));
        assert_eq!(s.cleanup(Some(500), CLEANUP_BATCH), CLEANUP_BATCH);
        assert_eq!(s.len(), 2 * CLEANUP_BATCH + 1);
        assert_eq!(s.cleanup_all(Some(500)), 2 * CLEANUP_BATCH);
        assert_eq!(s.len(), 1, "the live entry stays");
        let mut w = StateWriter::new();
        s.checkpoint(&mut w);
        let mut back = ValueState::<u64, u64>::new(s.ttl());
        back.restore(&mut StateReader::new(&w.buf)).unwrap();
        assert_eq!(back.get(&u64::MAX, Some(1_009)), Some(&0), "stamp survived");
        assert_eq!(back.get(&u64::MAX, Some(1_010)), None);
    }

    #[test]
    fn accesses_before_the_clock_is_known_are_stamped_at_its_first_value() {
        let mut s = ValueState::<u64, u64>::new(ttl(100, UpdateType::OnCreateAndWrite));
        s.set(&1, 10, None);
        assert_eq!(
            s.get(&1, Some(i64::MAX)),
            Some(&10),
            "no stamp, cannot expire"
        );
        assert_eq!(s.cleanup(Some(5_000), CLEANUP_BATCH), 0);
        assert_eq!(s.get(&1, Some(5_099)), Some(&10));
        assert_eq!(s.get(&1, Some(5_100)), None);
        // A pending stamp survives a snapshot as pending.
        s.set(&2, 20, None);
        let mut w = StateWriter::new();
        s.checkpoint(&mut w);
        let mut back = ValueState::<u64, u64>::new(s.ttl());
        back.restore(&mut StateReader::new(&w.buf)).unwrap();
        assert_eq!(back.cleanup_all(Some(7_000)), 0);
        assert_eq!(back.cleanup_all(Some(7_100)), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8),
        Get(u8),
        Clear(u8),
        Tick(u8),
        Cleanup,
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6u8, any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
            (0..6u8).prop_map(Op::Get),
            (0..6u8).prop_map(Op::Clear),
            (0..40u8).prop_map(Op::Tick),
            Just(Op::Cleanup),
            Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// Against a model that keeps (value, stamp) per key and judges expiry at every read: the state returns
        /// the same values whatever cleanups and snapshots happen in between.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec(op(), 0..100), reads_renew in any::<bool>()) {
            let update = if reads_renew { UpdateType::OnReadAndWrite } else { UpdateType::OnCreateAndWrite };
            let mut s = ValueState::<u64, u64>::new(ttl(50, update));
            let mut model: HashMap<u64, (u64, i64)> = HashMap::new();
            let mut now = 0i64;
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        s.set(&u64::from(k), u64::from(v), Some(now));
                        model.insert(u64::from(k), (u64::from(v), now));
                    }
                    Op::Get(k) => {
                        let k = u64::from(k);
                        let want = match model.get_mut(&k) {
                            Some((_, stamp)) if *stamp + 50 <= now => { model.remove(&k); None }
                            Some((v, stamp)) => { if reads_renew { *stamp = now; } Some(*v) }
                            None => None,
                        };
                        prop_assert_eq!(s.get(&k, Some(now)).copied(), want);
                    }
                    Op::Clear(k) => {
                        s.clear(&u64::from(k));
                        model.remove(&u64::from(k));
                    }
                    Op::Tick(ms) => now += i64::from(ms),
                    Op::Cleanup => { s.cleanup(Some(now), 2); }
                    Op::Snapshot => {
                        s.cleanup_all(Some(now));
                        model.retain(|_, (_, stamp)| *stamp + 50 > now);
                        prop_assert_eq!(s.len(), model.len());
                        let mut w = StateWriter::new();
                        s.checkpoint(&mut w);
                        let mut back = ValueState::new(s.ttl());
                        back.restore(&mut StateReader::new(&w.buf)).unwrap();
                        s = back;
                    }
                }
                // Every entry is indexed (the index may also hold stale pairs).
                prop_assert!(s.expiry.len() + s.due.len() + s.pending.len() >= s.len());
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut s = ValueState::<String, Option<u64>>::new(ttl(1, UpdateType::OnCreateAndWrite));
            let _ = s.restore(&mut StateReader::new(&data));
        }
    }
}
