//! The keyed window aggregation: an accumulator per (key, window), emitted once when the watermark passes the
//! window's end plus the allowed lateness, and late elements sent unchanged to the late-record topic.
//!
//! Fixed windows (tumbling, hopping, cumulative) and sessions are kept here; sliding windows in
//! [`super::sliding_window`], global windows with their trigger in [`super::global_window`] (they have no late
//! elements). One operator type serves every window kind, so that a pipeline's window step is the same
//! operator (and snapshot) whatever its shape.
//!
//! Fixed windows' accumulators are [`KeyedState`]: per key, the open windows it has an accumulator in (one
//! entry per key, not per window: an element costs one lookup however many windows it falls in, and the map
//! stays as small as the key count). A checkpoint writes the keys whose accumulators changed since the last,
//! and on the disk backend they may be more than memory holds. `fixed_keys` lists the keys of every open
//! window, so that a window that closes is emitted without a pass over all the state; it is derived (rebuilt
//! from the state at a restore, never written), and on the disk backend it spills to a scratch file when the
//! pipeline is over its memory budget (see [`TimeIndex`]). Sessions are keyed state as well (per key, its
//! open sessions), with `session_ends` their derived index, and so are sliding and global windows (see
//! [`super::sliding_window`], [`super::global_window`]).
//!
//! Invariants:
//! - every window held is still open: `end + lateness > watermark`;
//! - `watermark` only grows; a window is emitted exactly once, when it closes, and then forgotten;
//! - `fixed[key]` holds an accumulator for window `end` exactly when `fixed_keys[end]` lists `key` (it may
//!   list it twice after a restore; a key without that window is skipped when its end is drained), and
//!   `fixed_count` is how many accumulators there are; a key's panes are sorted by end and never empty;
//! - `session_ends` lists, for every open session, its end and key (it may also hold stale entries for sessions
//!   that merged or closed: they are skipped when popped); a key's session list is never empty.
//!
//! An element is late when every window it belongs to has closed. With hopping windows an element can be late
//! for some of its windows only: it is added to the open ones and counted in `partially_late`.

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::keyed_state::KeyedState;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::record::{OutRecord, WindowResult};
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::time_index::TimeIndex;
use crate::window::Window;

use super::global_window::GlobalWindows;
use super::sliding_window::{Admit, SlidingWindows};

/// Turns a late element back into the record written to the late topic.
pub type LateFn<K, T> = Arc<dyn Fn(&K, &T, i64) -> OutRecord + Send + Sync>;

/// One key's fixed-window accumulators: (window end, accumulator), sorted by end. A tumbling window has one
/// open at a time (two around a boundary with allowed lateness), kept inline.
#[derive(Debug, Clone, PartialEq)]
pub struct Panes<A>(SmallVec<[(i64, A); 2]>);

impl<A> Default for Panes<A> {
    fn default() -> Self {
        Panes(SmallVec::new())
    }
}

impl<A: StateCodec> StateCodec for Panes<A> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (end, acc) in &self.0 {
            w.i64(*end);
            acc.encode(w);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut p = Panes::default();
        // A pane takes its end (8 bytes) and an accumulator.
        for _ in 0..r.count(8)? {
            let end = r.i64()?;
            let acc = A::decode(r)?;
            if p.0.last().is_some_and(|l| l.0 >= end) {
                return Err(Error::CorruptState("window panes out of order".into()));
            }
            p.0.push((end, acc));
        }
        Ok(p)
    }
}

/// Version 3 keeps fixed windows in keyed state; versions 1 and 2 (everything in the snapshot) are still read.
const STATE_VERSION: u8 = 3;

#[derive(Debug, Clone, PartialEq)]
struct Session<A> {
    start: i64,
    end: i64,
    acc: A,
}

/// One key's open sessions (disjoint; usually one, kept inline).
#[derive(Debug, Clone, PartialEq)]
pub struct Sessions<A>(SmallVec<[Session<A>; 1]>);

impl<A> Default for Sessions<A> {
    fn default() -> Self {
        Sessions(SmallVec::new())
    }
}

impl<A: StateCodec> StateCodec for Sessions<A> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for s in &self.0 {
            w.i64(s.start);
            w.i64(s.end);
            s.acc.encode(w);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut v = Sessions::default();
        // A session takes its start and end (16 bytes) and an accumulator.
        for _ in 0..r.count(16)? {
            let start = r.i64()?;
            let end = r.i64()?;
            let acc = A::decode(r)?;
            v.0.push(Session { start, end, acc });
        }
        Ok(v)
    }
}

/// The result of a window that closed.
fn result<K, T, A: Aggregator<T>>(
    agg: &A,
    key: K,
    start: i64,
    end: i64,
    acc: &A::Acc,
) -> WindowResult<K, A::Out> {
    WindowResult {
        key,
        window_start: start,
        window_end: end,
        value: agg.finish(acc),
    }
}

pub struct WindowAggregate<K, T, A: Aggregator<T>> {
    window: Window,
    lateness: i64,
    agg: Arc<A>,
    late: LateFn<K, T>,
    watermark: i64,
    /// Fixed (tumbling, hopping, cumulative) windows' accumulators.
    fixed: KeyedState<K, Panes<A::Acc>>,
    /// The keys of each open fixed window, by end.
    fixed_keys: TimeIndex<K>,
    fixed_count: usize,
    /// Open sessions (counted when the index is rebuilt, and as sessions are made and closed).
    session_count: usize,
    sessions: KeyedState<K, Sessions<A::Acc>>,
    session_ends: TimeIndex<K>,
    sliding: SlidingWindows<K, A::Acc>,
    global: GlobalWindows<K, A::Acc>,
    scratch: Vec<(i64, i64)>,
    late_records: u64,
    partially_late: u64,
}

impl<K: Key, T, A: Aggregator<T>> WindowAggregate<K, T, A> {
    pub fn new(window: Window, lateness_ms: i64, agg: Arc<A>, late: LateFn<K, T>) -> Self {
        let lateness = lateness_ms.max(0);
        let diff = match window {
            Window::Sliding { difference_ms } => difference_ms,
            _ => 1,
        };
        let trigger = match window {
            Window::Global { trigger } => trigger,
            _ => crate::trigger::Trigger::count(u64::MAX),
        };
        WindowAggregate {
            window,
            lateness,
            agg,
            late,
            watermark: i64::MIN,
            fixed: KeyedState::new(),
            fixed_keys: TimeIndex::new(),
            fixed_count: 0,
            session_count: 0,
            sessions: KeyedState::new(),
            session_ends: TimeIndex::new(),
            sliding: SlidingWindows::new(diff, lateness),
            global: GlobalWindows::new(trigger),
            scratch: Vec::new(),
            late_records: 0,
            partially_late: 0,
        }
    }

    fn closed(&self, end: i64) -> bool {
        end.saturating_add(self.lateness) <= self.watermark
    }

    fn add_fixed(&mut self, ts: i64, key: &K, item: &T) -> bool {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.window.assign(ts, |s, e| windows.push((s, e)));
        let all = windows.len();
        windows.retain(|&(_, end)| !self.closed(end));
        let open = windows.len();
        if open > 0 {
            let (agg, index) = (&*self.agg, &mut self.fixed_keys);
            let mut add = |panes: &mut Panes<A::Acc>| {
                let mut new = 0;
                for &(_, end) in &windows {
                    let at = panes.0.partition_point(|p| p.0 < end);
                    match panes.0.get_mut(at) {
                        Some(p) if p.0 == end => agg.add(&mut p.1, item),
                        _ => {
                            let mut acc = agg.init();
                            agg.add(&mut acc, item);
                            panes.0.insert(at, (end, acc));
                            // Detached from the read buffer, as the state stores a new key.
                            index.push(end, key.to_stored());
                            new += 1;
                        }
                    }
                }
                new
            };
            let new = match self.fixed.get_mut(key) {
                Some(panes) => add(panes),
                None => {
                    let mut panes = Panes::default();
                    let new = add(&mut panes);
                    self.fixed.put(key.clone(), panes);
                    new
                }
            };
            self.fixed_count += new;
        }
        if open > 0 && open < all {
            self.partially_late += 1;
        }
        self.scratch = windows;
        open > 0
    }

    fn add_session(&mut self, ts: i64, gap: i64, key: &K, item: &T) -> bool {
        let (mut start, mut end) = (ts, ts.saturating_add(gap));
        let (agg, lateness, watermark) = (&*self.agg, self.lateness, self.watermark);
        // Returns the new session's end and how many sessions the key had before and after.
        let mut add = |sessions: &mut Sessions<A::Acc>| -> Option<(i64, usize, usize)> {
            let before = sessions.0.len();
            let overlaps = |s: &Session<A::Acc>| s.start < end && start < s.end;
            if !sessions.0.iter().any(overlaps) && end.saturating_add(lateness) <= watermark {
                return None;
            }
            let mut acc = agg.init();
            agg.add(&mut acc, item);
            let mut i = 0;
            while i < sessions.0.len() {
                if sessions.0[i].start < end && start < sessions.0[i].end {
                    let s = sessions.0.swap_remove(i);
                    start = start.min(s.start);
                    end = end.max(s.end);
                    agg.merge(&mut acc, s.acc);
                    // A merge can reach sessions that did not overlap the element alone: look again.
                    i = 0;
                } else {
                    i += 1;
                }
            }
            sessions.0.push(Session { start, end, acc });
            Some((end, before, sessions.0.len()))
        };
        let added = match self.sessions.get_mut(key) {
            Some(sessions) => add(sessions),
            None => {
                let mut sessions = Sessions::default();
                let added = add(&mut sessions);
                if added.is_some() {
                    self.sessions.put(key.clone(), sessions);
                }
                added
            }
        };
        match added {
            Some((end, before, after)) => {
                self.session_count = (self.session_count + after).saturating_sub(before);
                self.session_ends.push(end, key.to_stored());
                true
            }
            None => false,
        }
    }

    fn fire(&mut self, out: &mut dyn Collector<WindowResult<K, A::Out>>) {
        while let Some(end) = self.fixed_keys.first_time() {
            if !self.closed(end) {
                break;
            }
            // Keys come sorted (per spilled extent), so that results come out in the same order on every run
            // whose index stayed in memory (and in the test driver).
            let WindowAggregate {
                fixed_keys,
                fixed,
                fixed_count,
                window,
                agg,
                ..
            } = self;
            fixed_keys.drain(end, |key| {
                let Some(panes) = fixed.get_mut(&key) else {
                    return; // only if the state store failed, which fails the pipeline
                };
                let Some(at) = panes.0.iter().position(|p| p.0 == end) else {
                    return;
                };
                let (_, acc) = panes.0.remove(at);
                if panes.0.is_empty() {
                    fixed.remove(&key);
                }
                *fixed_count = fixed_count.saturating_sub(1);
                let r = result(&**agg, key, window.fixed_start(end), end, &acc);
                out.emit(end.saturating_sub(1), r);
            });
        }
        while let Some(end) = self.session_ends.first_time() {
            if !self.closed(end) {
                break;
            }
            let WindowAggregate {
                session_ends,
                sessions,
                session_count,
                agg,
                ..
            } = self;
            session_ends.drain(end, |key| {
                let Some(held) = sessions.get_mut(&key) else {
                    return;
                };
                let mut closed = Vec::new();
                let mut i = 0;
                while i < held.0.len() {
                    // Only the sessions ending here or before (each has its own entry): so sessions close in
                    // order of end, whatever stale entries a key has, and a restored operator (whose entries
                    // are rebuilt without the stale ones) emits in the same order.
                    if held.0[i].end <= end {
                        closed.push(held.0.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                if held.0.is_empty() {
                    sessions.remove(&key);
                }
                *session_count = session_count.saturating_sub(closed.len());
                closed.sort_unstable_by_key(|s| s.start);
                for s in closed {
                    let r = result(&**agg, key.clone(), s.start, s.end, &s.acc);
                    out.emit(s.end.saturating_sub(1), r);
                }
            });
        }
    }

    fn state_entries(&self) -> u64 {
        (self.fixed_count + self.session_count + self.sliding.entries() + self.global.entries())
            as u64
    }

    /// Lists every fixed window's keys again from the state (after it was loaded or restored).
    fn rebuild_fixed_keys(&mut self) -> Result<()> {
        let index = &mut self.fixed_keys;
        index.clear();
        let mut n = 0;
        self.fixed.for_each(|key, panes| {
            for (end, _) in &panes.0 {
                index.push(*end, key.clone());
                n += 1;
            }
        })?;
        self.fixed_count = n;
        Ok(())
    }

    /// Lists every open session's end again from the state (after it was loaded or restored).
    fn rebuild_session_ends(&mut self) -> Result<()> {
        let index = &mut self.session_ends;
        index.clear();
        let mut n = 0;
        self.sessions.for_each(|key, sessions| {
            for s in &sessions.0 {
                index.push(s.end, key.clone());
                n += 1;
            }
        })?;
        self.session_count = n;
        Ok(())
    }
}

impl<K: Key, T: Send, A: Aggregator<T>> Operator<(K, T)> for WindowAggregate<K, T, A> {
    type Out = WindowResult<K, A::Out>;

    fn on_start(&mut self, task: &TaskInfo) {
        self.fixed.bind(task);
        self.sessions.bind_named(task, "sessions");
        self.fixed_keys.bind(task);
        self.session_ends.bind(task);
        self.sliding.bind(task);
        self.global.bind(task);
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild_fixed_keys();
        let _ = self.rebuild_session_ends();
    }

    fn process(&mut self, timestamp: i64, (key, item): (K, T), out: &mut dyn Collector<Self::Out>) {
        let accepted = match self.window {
            Window::Session { gap_ms } => self.add_session(timestamp, gap_ms, &key, &item),
            Window::Sliding { .. } => match self.sliding.add(&*self.agg, &key, timestamp, &item) {
                Admit::Open => true,
                Admit::PartiallyLate => {
                    self.partially_late += 1;
                    true
                }
                Admit::Late => false,
            },
            Window::Global { .. } => {
                let mut emit = |ts, r| out.emit(ts, r);
                self.global
                    .add(&*self.agg, &key, timestamp, &item, &mut emit);
                true
            }
            Window::Tumbling { .. } | Window::Hopping { .. } | Window::Cumulative { .. } => {
                self.add_fixed(timestamp, &key, &item)
            }
        };
        if !accepted {
            self.late_records += 1;
            out.late((self.late)(&key, &item, timestamp));
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector<Self::Out>) {
        if watermark <= self.watermark {
            return;
        }
        let old = self.watermark;
        self.watermark = watermark;
        self.fire(out);
        let mut emit = |ts, r| out.emit(ts, r);
        match self.window {
            Window::Sliding { .. } => self.sliding.fire(&*self.agg, watermark, &mut emit),
            Window::Global { .. } => self
                .global
                .on_watermark(&*self.agg, old, watermark, &mut emit),
            _ => {}
        }
    }

    fn on_processing_time(&mut self, now: i64, out: &mut dyn Collector<Self::Out>) {
        if let Window::Global { .. } = self.window {
            let mut emit = |ts, r| out.emit(ts, r);
            self.global.on_processing_time(&*self.agg, now, &mut emit);
        }
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        let mut w = StateWriter {
            buf: std::mem::take(state),
        };
        // Version 3: the counters, then fixed windows, sessions, sliding and global windows, each as keyed state
        // (a bound state stages its changes and writes nothing here).
        w.u8(STATE_VERSION);
        w.i64(self.watermark);
        w.u64(self.late_records);
        w.u64(self.partially_late);
        self.fixed.write_to(&mut w);
        self.sessions.write_to(&mut w);
        self.sliding.checkpoint(&mut w);
        self.global.checkpoint(&mut w);
        *state = w.buf;
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if !(1..=STATE_VERSION).contains(&version) {
            return Err(Error::CorruptState(format!(
                "window state version {version}"
            )));
        }
        self.watermark = r.i64()?;
        self.late_records = r.u64()?;
        self.partially_late = r.u64()?;
        if version >= 3 {
            self.fixed.restore(r.bytes()?)?;
        } else {
            // Every accumulator in the snapshot: put into the state (into the store at the next checkpoint).
            let mut all: BTreeMap<K, Panes<A::Acc>> = BTreeMap::new();
            for _ in 0..r.count(12)? {
                let end = r.i64()?;
                for _ in 0..r.count(1)? {
                    let key = K::decode(&mut r)?;
                    let acc = A::Acc::decode(&mut r)?;
                    let panes = all.entry(key).or_default();
                    if panes.0.last().is_some_and(|l| l.0 >= end) {
                        return Err(Error::CorruptState("window ends out of order".into()));
                    }
                    panes.0.push((end, acc));
                }
            }
            for (key, panes) in all {
                self.fixed.put(key, panes);
            }
        }
        self.rebuild_fixed_keys()?;
        if version >= 3 {
            self.sessions.restore(r.bytes()?)?;
        } else {
            for _ in 0..r.count(5)? {
                let k = K::decode(&mut r)?;
                let mut v = Sessions::default();
                for _ in 0..r.count(16)? {
                    let start = r.i64()?;
                    let end = r.i64()?;
                    let acc = A::Acc::decode(&mut r)?;
                    v.0.push(Session { start, end, acc });
                }
                if !v.0.is_empty() {
                    self.sessions.put(k, v);
                }
            }
        }
        self.rebuild_session_ends()?;
        if version >= 3 {
            self.sliding.restore(&mut r, self.watermark)?;
            self.global.restore(&mut r)?;
        } else if version == 2 {
            self.sliding.restore_inline(&mut r, self.watermark)?;
            self.global.restore_inline(&mut r)?;
        } else {
            self.sliding.reset(self.watermark);
            self.global.reset();
        }
        if !r.is_empty() {
            return Err(Error::CorruptState("trailing bytes in window state".into()));
        }
        Ok(())
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.late_records = self.late_records;
        m.partially_late = self.partially_late;
        m.state_entries = self.state_entries();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;
    use crate::trigger::Trigger;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Out(Vec<(i64, WindowResult<u64, u64>)>);

    impl Collector<WindowResult<u64, u64>> for Out {
        fn emit(&mut self, ts: i64, item: WindowResult<u64, u64>) {
            self.0.push((ts, item));
        }
        fn late(&mut self, _record: OutRecord) {}
    }

    fn op(window: Window) -> WindowAggregate<u64, u64, Count> {
        let late: LateFn<u64, u64> = Arc::new(|_, _, ts| OutRecord::new(None, None, ts));
        WindowAggregate::new(window, 100, Arc::new(Count), late)
    }

    fn kinds() -> Vec<Window> {
        let d = Duration::from_millis;
        vec![
            Window::tumbling(d(500)),
            Window::session(d(300)),
            Window::cumulative(d(200), d(1_000)),
            Window::sliding(d(400)),
            Window::global(Trigger::count(1_000)),
            Window::global(Trigger::event_time(d(700))),
        ]
    }

    /// On the disk backend over its budget, the index of a window's keys and of sessions' ends spills to a
    /// scratch file, and the window still fires once per key with exact counts.
    #[test]
    fn a_spilled_index_fires_every_key_exactly() {
        use crate::keyed_state::BackendKind;
        use crate::test_support::{backend, task};
        let d = Duration::from_millis;
        for window in [Window::tumbling(d(1_000)), Window::session(d(300))] {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Disk, 256 << 10);
            let mut w = op(window);
            w.on_start(&task(&h, 0, "w"));
            let mut out = Out::default();
            let keys = 50_000u64;
            for round in 0..2 {
                for k in 0..keys {
                    if round == 0 || k % 10 == 0 {
                        w.process(10 + round, (k, 1), &mut out);
                    }
                }
            }
            let spilled = w.fixed_keys.spilled() + w.session_ends.spilled();
            assert!(spilled > 10_000, "{window:?}: spilled {spilled}");
            w.on_watermark(10_000, &mut out);
            assert!(h.take_error().is_none());
            assert_eq!(out.0.len() as u64, keys, "{window:?}");
            let mut seen = std::collections::HashSet::new();
            for (_, r) in &out.0 {
                assert!(seen.insert(r.key), "{window:?}: key {} twice", r.key);
                assert_eq!(r.value, if r.key % 10 == 0 { 2 } else { 1 }, "{window:?}");
            }
            assert!(w.fixed_keys.is_empty() && w.session_ends.is_empty());
        }
    }

    proptest! {
        /// A snapshot restores to an operator that emits what the original would; damaged snapshots are errors
        /// or (when they still decode) some state, never a panic.
        #[test]
        fn snapshots_round_trip_and_damage_never_panics(
            elements in proptest::collection::vec((0u64..4, 0i64..3_000), 0..40),
            cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bits in 1u8..=255,
        ) {
            for w in kinds() {
                let mut a = op(w);
                let mut out = Out::default();
                for (i, &(k, ts)) in elements.iter().enumerate() {
                    a.process(ts, (k, i as u64), &mut out);
                    a.on_watermark(ts - 200, &mut out);
                }
                let mut snap = Vec::new();
                a.on_checkpoint(&mut snap);
                let mut b = op(w);
                b.on_restore(&snap).expect("restores");
                let (mut oa, mut ob) = (Out::default(), Out::default());
                a.on_watermark(i64::MAX - 1, &mut oa);
                b.on_watermark(i64::MAX - 1, &mut ob);
                prop_assert_eq!(oa.0, ob.0, "{:?}", w);

                let mut c = op(w);
                let _ = c.on_restore(&snap[..cut.index(snap.len() + 1)]);
                let mut damaged = snap.clone();
                if !damaged.is_empty() {
                    let i = flip.index(damaged.len());
                    damaged[i] ^= bits;
                }
                let mut c = op(w);
                if c.on_restore(&damaged).is_ok() {
                    c.process(5, (1, 1), &mut Out::default());
                    c.on_watermark(i64::MAX - 1, &mut Out::default());
                }
            }
        }
    }

    #[test]
    fn version_1_snapshots_still_restore() {
        let mut w = StateWriter::new();
        w.u8(1);
        w.i64(1_000);
        w.u64(0);
        w.u64(0);
        w.u32(1); // one fixed window, ending at 1500, one key
        w.i64(1_500);
        w.u32(1);
        7u64.encode(&mut w);
        3u64.encode(&mut w);
        w.u32(0); // no sessions
        let mut a = op(Window::tumbling(Duration::from_millis(500)));
        a.on_restore(&w.buf).expect("restores");
        let mut out = Out::default();
        a.on_watermark(2_000, &mut out);
        assert_eq!(out.0.len(), 1);
        assert_eq!((out.0[0].1.key, out.0[0].1.value), (7, 3));
        assert_eq!(out.0[0].1.window_start, 1_000);
    }
}
