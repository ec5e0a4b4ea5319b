//! Per-key timers, as Flink's timer service keeps them for a keyed process function.
//!
//! A [`TimerQueue`] holds timers by (domain, time, key):
//! - a timer is identified by its key, its time and its [`TimeDomain`]: registering the same (key, time) twice
//!   in one domain leaves one timer, which fires once (Flink's deduplication); the same (key, time) in both
//!   domains is two timers;
//! - timers are deletable by that identity; deleting one that does not exist does nothing;
//! - each domain pops in (time, key) order, so that timers due together fire in the same order on every run;
//! - the queue is snapshotted and restored with [`StateCodec`]; a decoder reads untrusted bytes and fails with
//!   an error, never a panic.
//!
//! When a timer is due is the caller's business (an event-time timer when the watermark reaches it, a
//! processing-time timer when processing time does): [`TimerQueue::pop_due`] pops the earliest timer at or
//! before a given time.

use std::collections::{BTreeSet, VecDeque};

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::keyed_state::KeyedState;
use crate::operator::TaskInfo;
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::time_index::TimeIndex;

/// The clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timer's time (`time <= watermark`).
    EventTime,
    /// Fires when processing time (epoch ms; virtual in the test driver) reaches the timer's time.
    ProcessingTime,
}

/// Pending timers of both domains. Invariant: each set holds every pending timer of its domain exactly once,
/// ordered by (time, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerQueue<K> {
    event: BTreeSet<(i64, K)>,
    processing: BTreeSet<(i64, K)>,
}

impl<K: Ord> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            event: BTreeSet::new(),
            processing: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    fn domain(&self, domain: TimeDomain) -> &BTreeSet<(i64, K)> {
        match domain {
            TimeDomain::EventTime => &self.event,
            TimeDomain::ProcessingTime => &self.processing,
        }
    }

    fn domain_mut(&mut self, domain: TimeDomain) -> &mut BTreeSet<(i64, K)> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer for `key` at `time`; false if that timer was already pending (it still fires once).
    pub fn register(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        self.domain_mut(domain).insert((time, key.clone()))
    }

    /// Deletes the timer for `key` at `time`; false if there was none.
    pub fn delete(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        self.domain_mut(domain).remove(&(time, key.clone()))
    }

    pub fn contains(&self, domain: TimeDomain, key: &K, time: i64) -> bool {
        self.domain(domain).contains(&(time, key.clone()))
    }

    /// The time of the earliest pending timer of `domain`.
    pub fn next_time(&self, domain: TimeDomain) -> Option<i64> {
        self.domain(domain).first().map(|(t, _)| *t)
    }

    /// Removes and returns the earliest timer of `domain` whose time is at or before `upto`, as (time, key).
    pub fn pop_due(&mut self, domain: TimeDomain, upto: i64) -> Option<(i64, K)> {
        let set = self.domain_mut(domain);
        if set.first()?.0 > upto {
            return None;
        }
        set.pop_first()
    }

    /// Pending timers of `domain` in firing order, as (time, key).
    pub fn iter(&self, domain: TimeDomain) -> impl Iterator<Item = (i64, &K)> {
        self.domain(domain).iter().map(|(t, k)| (*t, k))
    }

    /// Pending timers of both domains.
    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.event.is_empty() && self.processing.is_empty()
    }

    pub fn clear(&mut self) {
        self.event.clear();
        self.processing.clear();
    }
}

fn encode_set<K: StateCodec>(set: &BTreeSet<(i64, K)>, w: &mut StateWriter) {
    w.u32(set.len() as u32);
    for (t, k) in set {
        w.i64(*t);
        k.encode(w);
    }
}

fn decode_set<K: StateCodec + Ord>(r: &mut StateReader<'_>) -> Result<BTreeSet<(i64, K)>> {
    // Each timer takes at least its 8-byte time, so a corrupt count is refused before anything is read.
    let n = r.count(8)?;
    let mut set = BTreeSet::new();
    for _ in 0..n {
        let t = r.i64()?;
        let k = K::decode(r)?;
        if !set.insert((t, k)) {
            // The writer never writes a timer twice: duplicates mean the bytes are not what it wrote.
            return Err(Error::CorruptState("duplicate timer".into()));
        }
    }
    Ok(set)
}

/// Event-time timers, then processing-time timers, each as a count and (time, key) pairs in firing order.
impl<K: StateCodec + Ord> StateCodec for TimerQueue<K> {
    fn encode(&self, w: &mut StateWriter) {
        encode_set(&self.event, w);
        encode_set(&self.processing, w);
    }

    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        Ok(TimerQueue {
            event: decode_set(r)?,
            processing: decode_set(r)?,
        })
    }
}

/// One key's pending timers, as (domain, time), sorted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyTimers(SmallVec<[(TimeDomain, i64); 1]>);

impl StateCodec for KeyTimers {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (d, t) in &self.0 {
            w.u8(match d {
                TimeDomain::EventTime => 0,
                TimeDomain::ProcessingTime => 1,
            });
            w.i64(*t);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut v = KeyTimers::default();
        // A timer takes its domain and time (9 bytes).
        for _ in 0..r.count(9)? {
            let d = match r.u8()? {
                0 => TimeDomain::EventTime,
                1 => TimeDomain::ProcessingTime,
                x => return Err(Error::CorruptState(format!("timer domain {x}"))),
            };
            let t = r.i64()?;
            if v.0.last().is_some_and(|l| *l >= (d, t)) {
                return Err(Error::CorruptState("timers out of order".into()));
            }
            v.0.push((d, t));
        }
        Ok(v)
    }
}

/// Timers kept as keyed state (per key, its timers: a checkpoint writes the keys whose timers changed, and
/// the disk backend can hold them), with a [`TimeIndex`] per domain as the firing order, derived from the
/// state (rebuilt when it is bound or restored, never written), which on the disk backend spills to a scratch
/// file over the memory budget.
///
/// Invariants:
/// - `state[key]` lists (domain, time) exactly when that timer is pending; `pending` counts them;
/// - every pending timer is listed in its domain's index under its time, or is in `due`; the index may also
///   list timers deleted or fired since (an entry is checked against the state when it comes due);
/// - `due` holds the timers of one domain taken from its index at one time or earlier, sorted by (time,
///   key), none later than the `upto` of the `pop_due` that took them.
pub struct KeyedTimers<K> {
    event: TimeIndex<K>,
    processing: TimeIndex<K>,
    due: VecDeque<(i64, K)>,
    due_domain: TimeDomain,
    pending: usize,
    state: KeyedState<K, KeyTimers>,
}

impl<K: Key> Default for KeyedTimers<K> {
    fn default() -> Self {
        KeyedTimers {
            event: TimeIndex::new(),
            processing: TimeIndex::new(),
            due: VecDeque::new(),
            due_domain: TimeDomain::EventTime,
            pending: 0,
            state: KeyedState::new(),
        }
    }
}

impl<K: Key> KeyedTimers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&mut self, domain: TimeDomain) -> &mut TimeIndex<K> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Binds the timers to the task's backend under the operator's state named `name`, and lists them.
    pub fn bind_named(&mut self, task: &TaskInfo, name: &str) {
        self.state.bind_named(task, name);
        self.event.bind(task);
        self.processing.bind(task);
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild();
    }

    fn rebuild(&mut self) -> Result<()> {
        let (event, processing) = (&mut self.event, &mut self.processing);
        event.clear();
        processing.clear();
        self.due.clear();
        let mut n = 0;
        self.state.for_each(|key, timers| {
            for (d, t) in &timers.0 {
                match d {
                    TimeDomain::EventTime => event.push(*t, key.clone()),
                    TimeDomain::ProcessingTime => processing.push(*t, key.clone()),
                }
                n += 1;
            }
        })?;
        self.pending = n;
        Ok(())
    }

    /// Whether `key` has a timer at `time` in `domain`.
    pub fn contains(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        self.state
            .get(key)
            .is_some_and(|t| t.0.binary_search(&(domain, time)).is_ok())
    }

    /// Registers a timer; false if it was already pending.
    pub fn register(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        let add = |timers: &mut KeyTimers| match timers.0.binary_search(&(domain, time)) {
            Ok(_) => false,
            Err(at) => {
                timers.0.insert(at, (domain, time));
                true
            }
        };
        let new = match self.state.get(key).map(|t| t.0.contains(&(domain, time))) {
            Some(true) => false,
            Some(false) => self.state.get_mut(key).is_some_and(add),
            None => {
                let mut timers = KeyTimers::default();
                add(&mut timers);
                self.state.put(key.to_stored(), timers);
                true
            }
        };
        if !new {
            return false;
        }
        self.pending += 1;
        // A timer at or before what `due` holds fires with it, in order; a later one waits in the index.
        if self.due_domain == domain && self.due.back().is_some_and(|b| (time, key) <= (b.0, &b.1))
        {
            let at = self.due.partition_point(|e| (e.0, &e.1) < (time, key));
            self.due.insert(at, (time, key.to_stored()));
        } else {
            self.index(domain).push(time, key.to_stored());
        }
        true
    }

    /// Forgets `key`'s timer (domain, time) in the state; true if it was pending.
    fn forget(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        let Some(timers) = self.state.get(key) else {
            return false;
        };
        if timers.0.binary_search(&(domain, time)).is_err() {
            return false;
        }
        let Some(timers) = self.state.get_mut(key) else {
            return false;
        };
        timers.0.retain(|x| *x != (domain, time));
        if timers.0.is_empty() {
            self.state.remove(key);
        }
        self.pending -= 1;
        true
    }

    /// Deletes a timer; false if there was none. (Its index entry stays, and is skipped when it comes due.)
    pub fn delete(&mut self, domain: TimeDomain, key: &K, time: i64) -> bool {
        self.forget(domain, key, time)
    }

    /// Removes and returns the earliest timer of `domain` at or before `upto`, as (time, key).
    pub fn pop_due(&mut self, domain: TimeDomain, upto: i64) -> Option<(i64, K)> {
        if self.due_domain != domain && !self.due.is_empty() {
            // The other domain's due timers go back to their index (a caller fires one domain at a time).
            let other = self.due_domain;
            let back: Vec<(i64, K)> = self.due.drain(..).collect();
            for (t, k) in back {
                self.index(other).push(t, k);
            }
        }
        self.due_domain = domain;
        loop {
            // The index may hold something earlier than `due` (a timer registered meanwhile in the past).
            let next = self.index(domain).first_time().filter(|t| *t <= upto);
            let take = match (next, self.due.front()) {
                (Some(t), Some(d)) => t < d.0,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if let (true, Some(t)) = (take, next) {
                let mut keys = Vec::new();
                self.index(domain).drain(t, |k| keys.push(k));
                let mut merged: Vec<(i64, K)> = self.due.drain(..).collect();
                merged.extend(keys.into_iter().map(|k| (t, k)));
                merged.sort();
                merged.dedup();
                self.due.extend(merged);
                continue;
            }
            let (t, key) = self.due.pop_front()?;
            if t > upto {
                self.due.push_front((t, key));
                return None;
            }
            if self.forget(domain, &key, t) {
                return Some((t, key));
            }
        }
    }

    /// Pending timers of both domains.
    pub fn len(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// At a checkpoint: a bound state stages the keys whose timers changed; an unbound one writes them all.
    pub fn checkpoint(&mut self, w: &mut StateWriter) {
        self.state.write_to(w);
    }

    /// Restores what [`KeyedTimers::checkpoint`] wrote.
    pub fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.state.restore(r.bytes()?)?;
        self.rebuild()
    }

    /// Restores a [`TimerQueue`] snapshot (the format from before timers were keyed state): every timer is
    /// registered again (and so goes to the store at the next checkpoint).
    pub fn restore_queue(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        let old = TimerQueue::<K>::decode(r)?;
        for d in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            for (t, k) in old.iter(d) {
                self.register(d, k, t);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    use TimeDomain::{EventTime, ProcessingTime};

    fn disk(dir: &std::path::Path, budget: usize) -> crate::keyed_state::StateHandle {
        crate::test_support::backend(dir, crate::keyed_state::BackendKind::Disk, budget)
    }

    fn keyed(h: Option<&crate::keyed_state::StateHandle>) -> KeyedTimers<u64> {
        let mut q = KeyedTimers::new();
        if let Some(h) = h {
            q.bind_named(&crate::test_support::task(h, 1, "p"), "timers");
        }
        q
    }

    /// Checkpoints `q` into the store and starts over from it, as a restarted pipeline would.
    fn restart(
        h: &crate::keyed_state::StateHandle,
        mut q: KeyedTimers<u64>,
        id: u64,
    ) -> KeyedTimers<u64> {
        let mut w = StateWriter::new();
        q.checkpoint(&mut w);
        crate::test_support::commit(h, id);
        drop(q);
        let mut q = keyed(Some(h));
        q.restore(&mut StateReader::new(&w.buf)).unwrap();
        q
    }

    /// 200,000 event-time timers over a 256 KiB budget: the index spills, and every timer still fires once,
    /// in order, with those registered while firing (in the past, now and later) among them.
    #[test]
    fn a_spilled_timer_index_fires_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let h = disk(dir.path(), 256 << 10);
        let mut q = keyed(Some(&h));
        let n = 200_000u64;
        for k in 0..n {
            q.register(EventTime, &k, (k % 1_000) as i64);
        }
        assert!(q.event.spilled() > 0, "the index spilled");
        let mut fired = Vec::new();
        while let Some((t, k)) = q.pop_due(EventTime, 2_000) {
            if k == 7 && t == 7 {
                // One in the past, one now, one later (all due).
                q.register(EventTime, &1_000_001, 3);
                q.register(EventTime, &1_000_002, 7);
                q.register(EventTime, &1_000_003, 1_500);
            }
            fired.push((t, k));
        }
        assert!(h.take_error().is_none());
        assert_eq!(fired.len() as u64, n + 3);
        assert!(q.is_empty());
        let mut sorted = fired.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), fired.len(), "each fired once");
        // In time order, except the timer registered in the past, which fires right after it was made.
        let late = fired.iter().position(|x| *x == (3, 1_000_001)).unwrap();
        let mut rest = fired.clone();
        rest.remove(late);
        assert!(rest.windows(2).all(|w| w[0] <= w[1]));
        assert!(fired[..late].contains(&(7, 7)));
    }

    #[test]
    fn registering_twice_gives_one_timer_per_domain() {
        let mut q = TimerQueue::new();
        assert!(q.register(EventTime, &"a".to_string(), 10));
        assert!(!q.register(EventTime, &"a".to_string(), 10));
        assert!(q.register(ProcessingTime, &"a".to_string(), 10));
        assert!(q.register(EventTime, &"b".to_string(), 10));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_due(EventTime, 10), Some((10, "a".to_string())));
        assert_eq!(q.pop_due(EventTime, 10), Some((10, "b".to_string())));
        assert_eq!(q.pop_due(EventTime, 10), None);
        assert_eq!(q.pop_due(ProcessingTime, 9), None, "not due yet");
        assert_eq!(q.pop_due(ProcessingTime, 10), Some((10, "a".to_string())));
        assert!(q.is_empty());
    }

    #[test]
    fn deleted_timers_never_pop() {
        let mut q = TimerQueue::new();
        q.register(EventTime, &1u64, 5);
        q.register(EventTime, &1u64, 7);
        assert!(q.delete(EventTime, &1u64, 5));
        assert!(!q.delete(EventTime, &1u64, 5));
        assert!(!q.delete(ProcessingTime, &1u64, 7), "other domain");
        assert!(q.contains(EventTime, &1u64, 7));
        assert_eq!(q.next_time(EventTime), Some(7));
        assert_eq!(q.pop_due(EventTime, i64::MAX), Some((7, 1)));
        assert_eq!(q.pop_due(EventTime, i64::MAX), None);
    }

    #[test]
    fn corrupt_snapshots_are_errors() {
        let mut q = TimerQueue::new();
        q.register(EventTime, &3u64, 1);
        let mut w = StateWriter::new();
        q.encode(&mut w);
        for cut in 0..w.buf.len() {
            let mut r = StateReader::new(&w.buf[..cut]);
            assert!(TimerQueue::<u64>::decode(&mut r).is_err(), "cut at {cut}");
        }
        // A count far larger than the bytes left is refused without allocating.
        let mut r = StateReader::new(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert!(TimerQueue::<u64>::decode(&mut r).is_err());
        // The same timer twice.
        let mut w = StateWriter::new();
        w.u32(2);
        for _ in 0..2 {
            w.i64(1);
            w.u64(3);
        }
        w.u32(0);
        assert!(TimerQueue::<u64>::decode(&mut StateReader::new(&w.buf)).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(TimeDomain, u64, i64),
        Delete(TimeDomain, u64, i64),
        Advance(TimeDomain, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let domain = prop_oneof![Just(EventTime), Just(ProcessingTime)];
        prop_oneof![
            4 => (domain.clone(), 0..4u64, 0..100i64).prop_map(|(d, k, t)| Op::Register(d, k, t)),
            1 => (domain.clone(), 0..4u64, 0..100i64).prop_map(|(d, k, t)| Op::Delete(d, k, t)),
            1 => (domain, 0..20i64).prop_map(|(d, step)| Op::Advance(d, step)),
        ]
    }

    proptest! {
        /// Against a model: every registered, undeleted timer pops exactly once, at the first advance that
        /// reaches it, in (time, key) order; the queue survives a snapshot at any point.
        #[test]
        fn timers_pop_once_in_order(ops in proptest::collection::vec(op(), 0..80)) {
            let mut q = TimerQueue::new();
            let mut model: BTreeMap<TimeDomain, BTreeSet<(i64, u64)>> = BTreeMap::new();
            let mut clock: BTreeMap<TimeDomain, i64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Register(d, k, t) => {
                        let new = model.entry(d).or_default().insert((t, k));
                        prop_assert_eq!(q.register(d, &k, t), new);
                    }
                    Op::Delete(d, k, t) => {
                        let had = model.entry(d).or_default().remove(&(t, k));
                        prop_assert_eq!(q.delete(d, &k, t), had);
                    }
                    Op::Advance(d, step) => {
                        let now = clock.entry(d).or_insert(0);
                        *now += step;
                        let mut popped = Vec::new();
                        while let Some(t) = q.pop_due(d, *now) {
                            popped.push(t);
                        }
                        let set = model.entry(d).or_default();
                        let rest = set.split_off(&(*now + 1, 0));
                        let due: Vec<(i64, u64)> = std::mem::replace(set, rest).into_iter().collect();
                        prop_assert_eq!(popped, due);
                    }
                }
                let mut w = StateWriter::new();
                q.encode(&mut w);
                let mut r = StateReader::new(&w.buf);
                prop_assert_eq!(&TimerQueue::<u64>::decode(&mut r).unwrap(), &q);
                prop_assert!(r.is_empty());
            }
        }

        /// Keyed timers against the same model, without a backend and on the disk backend (restored from
        /// the store at random points): every registered, undeleted timer pops exactly once, at the first
        /// advance that reaches it, in (time, key) order.
        #[test]
        fn keyed_timers_pop_once_in_order(ops in proptest::collection::vec(op(), 0..80),
                                          restarts in proptest::collection::vec(any::<bool>(), 80)) {
            let dir = tempfile::tempdir().unwrap();
            let h = disk(dir.path(), 1 << 20);
            for bound in [false, true] {
                let mut q = keyed(bound.then_some(&h));
                let mut model: BTreeMap<TimeDomain, BTreeSet<(i64, u64)>> = BTreeMap::new();
                let mut clock: BTreeMap<TimeDomain, i64> = BTreeMap::new();
                for (i, op) in ops.iter().enumerate() {
                    match *op {
                        Op::Register(d, k, t) => {
                            let new = model.entry(d).or_default().insert((t, k));
                            prop_assert_eq!(q.register(d, &k, t), new);
                        }
                        Op::Delete(d, k, t) => {
                            let had = model.entry(d).or_default().remove(&(t, k));
                            prop_assert_eq!(q.delete(d, &k, t), had);
                        }
                        Op::Advance(d, step) => {
                            let now = clock.entry(d).or_insert(0);
                            *now += step;
                            let mut popped = Vec::new();
                            while let Some(t) = q.pop_due(d, *now) {
                                popped.push(t);
                            }
                            let set = model.entry(d).or_default();
                            let rest = set.split_off(&(*now + 1, 0));
                            let due: Vec<(i64, u64)> =
                                std::mem::replace(set, rest).into_iter().collect();
                            prop_assert_eq!(popped, due);
                        }
                    }
                    let total: usize = model.values().map(BTreeSet::len).sum();
                    prop_assert_eq!(q.len(), total);
                    if bound && restarts[i] {
                        q = restart(&h, q, i as u64 + 1);
                    }
                }
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TimerQueue::<String>::decode(&mut StateReader::new(&data));
        }
    }
}
