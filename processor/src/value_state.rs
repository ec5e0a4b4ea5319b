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
//! Invariants (with a TTL): every entry whose stamp is known has exactly one `(stamp + ttl, key)` in `expiry`,
//! and every entry whose stamp is pending is in `pending`; nothing else is in either. Without a TTL both are
//! empty and stamps are not kept (they are written as pending, so that a TTL added later starts counting at
//! the first clock value after the restore).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::state::{StateCodec, StateReader, StateWriter};

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

#[derive(Debug, Clone)]
struct Entry<S> {
    value: S,
    stamp: i64,
}

/// One value per key, with an optional time-to-live (see the module documentation).
#[derive(Debug)]
pub struct ValueState<K, S> {
    ttl: Option<StateTtl>,
    entries: HashMap<K, Entry<S>>,
    /// (expiry time, key) of every entry with a known stamp, earliest first.
    expiry: BTreeSet<(i64, K)>,
    /// Entries accessed while the clock was unknown.
    pending: HashSet<K>,
    expired: u64,
}

impl<K: Clone + Eq + Hash + Ord, S> ValueState<K, S> {
    pub fn new(ttl: Option<StateTtl>) -> Self {
        ValueState {
            ttl,
            entries: HashMap::new(),
            expiry: BTreeSet::new(),
            pending: HashSet::new(),
            expired: 0,
        }
    }

    pub fn ttl(&self) -> Option<StateTtl> {
        self.ttl
    }

    /// Entries held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries removed because they expired, since this state was made.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn expires_at(ttl: &StateTtl, stamp: i64) -> i64 {
        stamp.saturating_add(ttl.ttl_ms)
    }

    /// Moves `key`'s stamp from `old` to `clock` (the caller has checked there is a TTL).
    fn restamp(&mut self, ttl: StateTtl, key: &K, old: i64, clock: Option<i64>) -> i64 {
        if old == PENDING {
            self.pending.remove(key);
        } else {
            self.expiry
                .remove(&(Self::expires_at(&ttl, old), key.clone()));
        }
        match clock {
            Some(now) => {
                self.expiry
                    .insert((Self::expires_at(&ttl, now), key.clone()));
                now
            }
            None => {
                self.pending.insert(key.clone());
                PENDING
            }
        }
    }

    /// Forgets `key`'s entry and its place in the indexes.
    fn remove(&mut self, key: &K) -> Option<Entry<S>> {
        let e = self.entries.remove(key)?;
        if let Some(ttl) = self.ttl {
            if e.stamp == PENDING {
                self.pending.remove(key);
            } else {
                self.expiry
                    .remove(&(Self::expires_at(&ttl, e.stamp), key.clone()));
            }
        }
        Some(e)
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
        let Some(ttl) = self.ttl else {
            self.entries.insert(
                key.clone(),
                Entry {
                    value,
                    stamp: PENDING,
                },
            );
            return;
        };
        let old = self.entries.get(key).map(|e| e.stamp);
        let stamp = match old {
            Some(old) => self.restamp(ttl, key, old, clock),
            None => match clock {
                Some(now) => {
                    self.expiry
                        .insert((Self::expires_at(&ttl, now), key.clone()));
                    now
                }
                None => {
                    self.pending.insert(key.clone());
                    PENDING
                }
            },
        };
        self.entries.insert(key.clone(), Entry { value, stamp });
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
                self.expiry.insert((Self::expires_at(&ttl, now), key));
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
        let mut removed = 0;
        while removed < max {
            match self.expiry.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.expiry.pop_first() else {
                break;
            };
            self.entries.remove(&key);
            removed += 1;
        }
        self.expired += removed as u64;
        removed
    }

    /// Removes every entry expired by `clock` (before a snapshot).
    pub fn cleanup_all(&mut self, clock: Option<i64>) -> usize {
        self.cleanup(clock, usize::MAX)
    }
}

impl<K: StateCodec + Clone + Eq + Hash + Ord, S: StateCodec> ValueState<K, S> {
    /// Writes every entry as (key, stamp, value).
    pub fn encode(&self, w: &mut StateWriter) {
        w.u32(self.entries.len() as u32);
        for (k, e) in &self.entries {
            k.encode(w);
            w.i64(e.stamp);
            e.value.encode(w);
        }
    }

    /// Replaces the entries with what [`ValueState::encode`] wrote, keeping this state's TTL.
    pub fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.entries.clear();
        self.expiry.clear();
        self.pending.clear();
        // Each entry takes at least its 8-byte stamp.
        let n = r.count(8)?;
        for _ in 0..n {
            let key = K::decode(r)?;
            let stamp = r.i64()?;
            let value = S::decode(r)?;
            if self.entries.contains_key(&key) {
                return Err(Error::CorruptState("duplicate key in value state".into()));
            }
            // Without a TTL stamps are not kept (a TTL added later starts from the first clock value).
            let stamp = match self.ttl {
                None => PENDING,
                Some(_) if stamp == PENDING => {
                    self.pending.insert(key.clone());
                    PENDING
                }
                Some(ttl) => {
                    self.expiry
                        .insert((Self::expires_at(&ttl, stamp), key.clone()));
                    stamp
                }
            };
            self.entries.insert(key, Entry { value, stamp });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        s.encode(&mut w);
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
        s.encode(&mut w);
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
                        s.encode(&mut w);
                        let mut back = ValueState::new(s.ttl());
                        back.restore(&mut StateReader::new(&w.buf)).unwrap();
                        s = back;
                    }
                }
                prop_assert_eq!(s.expiry.len() + s.pending.len(), s.len());
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut s = ValueState::<String, Option<u64>>::new(ttl(1, UpdateType::OnCreateAndWrite));
            let _ = s.restore(&mut StateReader::new(&data));
        }
    }
}
