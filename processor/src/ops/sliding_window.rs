//! Sliding windows by record time (Kafka Streams' `SlidingWindows`, KIP-450), emitted on close.
//!
//! # Which windows exist
//!
//! For a key whose records have the timestamps `R` and a time difference `d`, the windows are, as Kafka
//! Streams defines them (each written `[s, s + d]`, both ends inclusive):
//!
//! - the *left window* `[t - d, t]` of every `t` in `R`;
//! - the *right window* `[t + 1, t + 1 + d]` of every `t` in `R` that some record falls in (some `u` in `R`
//!   with `t < u <= t + 1 + d`).
//!
//! Windows with the same start are one window (a right window `[t + 1, t + 1 + d]` is the left window of a
//! record at `t + 1 + d`). Each window's aggregate covers the key's records in `[s, s + d]`. These are exactly
//! the distinct windows Kafka Streams creates and emits with `EmitStrategy.onWindowClose()` (or
//! `suppress(untilWindowCloses)`), with one difference: Kafka clamps the windows of records earlier than
//! `d` to `[0, d]` (its timestamps are never negative), here windows may start below 0.
//!
//! In results a window appears as `window_start = s`, `window_end = s + d + 1` (the exclusive end every
//! window result uses), with the output timestamp `s + d`.
//!
//! # Closing and lateness
//!
//! A window closes when the watermark reaches `s + d + 1 + lateness`, and is emitted then, once. Closed
//! windows are never emitted again, and a window that comes into existence already closed (made by a record
//! that arrived after its close) is not emitted at all. A record at `t` is late, sent to the late topic and
//! not kept, when even its right window (start `t + 1`) has closed, as Kafka Streams drops it; it is
//! *partially late* (counted, added to what is still open) when its own left window has closed.
//!
//! # State and cost
//!
//! Per key, the records are kept as one accumulator per distinct timestamp (`init` + `add` of the records at
//! that timestamp) in a `BTreeMap` by timestamp, until no open window needs them: a record at `t` is dropped
//! once every window starting at or before `t + 1` has closed. A window's aggregate is computed when it closes,
//! by merging (clones of) the accumulators in `[s, s + d]`: O(records in the window) per emitted window.
//! `due` lists, by window start, the keys that may have a window starting there (two entries per distinct
//! timestamp: its left and its right window), so a watermark visits only keys with something to close.
//!
//! The per-key records are [`KeyedState`]: a checkpoint writes the keys whose records changed, and the disk
//! backend can hold more than memory. `due` is derived from them (rebuilt when the state is bound or
//! restored, never written), and so is `count`.
//!
//! Invariants: every window starting at or before `closed_upto` has been emitted or never will be; `closed_upto`
//! only grows; after each firing every record kept has `t >= closed_upto`; `due` holds an entry at `s` for
//! every key with a window starting at `s > closed_upto` (it may hold stale entries too: harmless, a key with
//! nothing to close is skipped).

use std::collections::BTreeMap;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::keyed_state::KeyedState;
use crate::operator::TaskInfo;
use crate::record::WindowResult;
use crate::state::{Key, StateCodec, StateReader, StateWriter};

/// How a record was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Added; its own left window is open.
    Open,
    /// Added to the windows still open; its left window had closed.
    PartiallyLate,
    /// Every window it could affect has closed.
    Late,
}

/// One key's records: an accumulator per distinct timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Records<Acc>(BTreeMap<i64, Acc>);

impl<Acc> Default for Records<Acc> {
    fn default() -> Self {
        Records(BTreeMap::new())
    }
}

impl<Acc: StateCodec> StateCodec for Records<Acc> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (ts, acc) in &self.0 {
            w.i64(*ts);
            acc.encode(w);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut records = BTreeMap::new();
        for _ in 0..r.count(8)? {
            let ts = r.i64()?;
            if records.insert(ts, Acc::decode(r)?).is_some() {
                return Err(Error::CorruptState(
                    "sliding window: a timestamp twice".into(),
                ));
            }
        }
        Ok(Records(records))
    }
}

pub(crate) struct SlidingWindows<K, Acc> {
    /// The time difference `d`: windows are `[s, s + d]`.
    diff: i64,
    lateness: i64,
    keys: KeyedState<K, Records<Acc>>,
    /// Records held (distinct timestamps over all keys).
    count: usize,
    due: BTreeMap<i64, Vec<K>>,
    /// Windows starting at or before this have closed.
    closed_upto: i64,
    starts: Vec<i64>,
}

impl<K: Key, Acc: StateCodec + Clone> SlidingWindows<K, Acc> {
    pub(crate) fn new(diff: i64, lateness: i64) -> Self {
        SlidingWindows {
            diff,
            lateness,
            keys: KeyedState::new(),
            count: 0,
            due: BTreeMap::new(),
            closed_upto: i64::MIN,
            starts: Vec::new(),
        }
    }

    /// Binds the records to the task's backend (as the operator's state `sliding`) and lists them.
    pub(crate) fn bind(&mut self, task: &TaskInfo) {
        self.keys.bind_named(task, "sliding");
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild();
    }

    /// Lists every key's windows in `due` again, and counts the records.
    fn rebuild(&mut self) -> Result<()> {
        let (mut due, mut count) = (BTreeMap::<i64, Vec<K>>::new(), 0);
        let d = self.diff;
        self.keys.for_each(|key, records| {
            for ts in records.0.keys() {
                count += 1;
                due.entry(ts.saturating_sub(d))
                    .or_default()
                    .push(key.clone());
                due.entry(ts.saturating_add(1))
                    .or_default()
                    .push(key.clone());
            }
        })?;
        self.due = due;
        self.count = count;
        Ok(())
    }

    /// The largest window start closed at `watermark`: `s + d + 1 + lateness <= watermark`.
    fn threshold(&self, watermark: i64) -> i64 {
        if watermark == i64::MIN {
            return i64::MIN;
        }
        watermark
            .saturating_sub(self.lateness)
            .saturating_sub(self.diff)
            .saturating_sub(1)
    }

    pub(crate) fn add<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        key: &K,
        ts: i64,
        item: &T,
    ) -> Admit {
        // Its right window starts at ts + 1: closed when ts + 1 <= closed_upto.
        if ts < self.closed_upto {
            return Admit::Late;
        }
        let add = |records: &mut Records<Acc>| match records.0.get_mut(&ts) {
            Some(acc) => {
                agg.add(acc, item);
                false
            }
            None => {
                let mut acc = agg.init();
                agg.add(&mut acc, item);
                records.0.insert(ts, acc);
                true
            }
        };
        let new_ts = match self.keys.get_mut(key) {
            Some(records) => add(records),
            None => {
                let mut records = Records::default();
                add(&mut records);
                self.keys.put(key.clone(), records);
                true
            }
        };
        if new_ts {
            self.count += 1;
            // A new timestamp may start two windows: its left one and its right one.
            self.due
                .entry(ts.saturating_sub(self.diff))
                .or_default()
                .push(key.to_stored());
            self.due
                .entry(ts.saturating_add(1))
                .or_default()
                .push(key.to_stored());
        }
        if ts.saturating_sub(self.diff) <= self.closed_upto {
            Admit::PartiallyLate
        } else {
            Admit::Open
        }
    }

    /// Emits every window that closes at `watermark` (by start, then key) and forgets what no open window
    /// needs.
    pub(crate) fn fire<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        watermark: i64,
        emit: &mut dyn FnMut(i64, WindowResult<K, A::Out>),
    ) {
        let old = self.closed_upto;
        let new = self.threshold(watermark);
        if new <= old {
            return;
        }
        self.closed_upto = new;
        let mut keys = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > new {
                break;
            }
            keys.extend(entry.remove());
        }
        if keys.is_empty() {
            return;
        }
        keys.sort_unstable();
        keys.dedup();
        let d = self.diff;
        let mut results: Vec<(i64, K, A::Out)> = Vec::new();
        let mut starts = std::mem::take(&mut self.starts);
        for key in keys {
            let Some(Records(records)) = self.keys.get_mut(&key) else {
                continue;
            };
            starts.clear();
            // Left windows [t - d, t] starting in (old, new]: t in (old + d, new + d].
            let (lo, hi) = (
                old.saturating_add(d).saturating_add(1),
                new.saturating_add(d),
            );
            if lo <= hi {
                starts.extend(records.range(lo..=hi).map(|(t, _)| t - d));
            }
            // Right windows [v + 1, v + 1 + d] starting in (old, new]: v in [old, new - 1], with a next record
            // at most d + 1 after v.
            let mut it = records.range(old..).map(|(t, _)| *t).peekable();
            while let Some(v) = it.next() {
                if v >= new {
                    break;
                }
                if it
                    .peek()
                    .is_some_and(|&u| u.saturating_sub(v) <= d.saturating_add(1))
                {
                    starts.push(v + 1);
                }
            }
            starts.sort_unstable();
            starts.dedup();
            for &s in &starts {
                let mut acc = agg.init();
                for (_, a) in records.range(s..=s.saturating_add(d)) {
                    agg.merge(&mut acc, a.clone());
                }
                results.push((s, key.clone(), agg.finish(&acc)));
            }
            // Records before `new` are in no open window and start no open one.
            let before = records.len();
            *records = records.split_off(&new);
            self.count = self.count.saturating_sub(before - records.len());
            if records.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.starts = starts;
        results.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (s, key, value) in results {
            let r = WindowResult {
                key,
                window_start: s,
                window_end: s.saturating_add(d).saturating_add(1),
                value,
            };
            emit(s.saturating_add(d), r);
        }
    }

    pub(crate) fn entries(&self) -> usize {
        self.count
    }

    /// Forgets what is due, as of `watermark` (after a restore that had no sliding windows: the state holds
    /// none either).
    pub(crate) fn reset(&mut self, watermark: i64) {
        self.due.clear();
        self.closed_upto = self.threshold(watermark);
    }

    /// At a checkpoint: a bound state stages the keys whose records changed; an unbound one writes them all.
    pub(crate) fn checkpoint(&mut self, w: &mut StateWriter) {
        self.keys.write_to(w);
    }

    /// Restores what `checkpoint` wrote; `watermark` is the restored watermark (it decides what has closed).
    pub(crate) fn restore(&mut self, r: &mut StateReader<'_>, watermark: i64) -> Result<()> {
        self.keys.restore(r.bytes()?)?;
        self.closed_upto = self.threshold(watermark);
        self.rebuild()
    }

    /// Reads the records of a snapshot from before they were keyed state (every key inline), into the state.
    pub(crate) fn restore_inline(&mut self, r: &mut StateReader<'_>, watermark: i64) -> Result<()> {
        for _ in 0..r.count(5)? {
            let k = K::decode(r)?;
            let records = Records::<Acc>::decode(r)?;
            if !records.0.is_empty() {
                self.keys.put(k, records);
            }
        }
        self.closed_upto = self.threshold(watermark);
        self.rebuild()
    }
}
