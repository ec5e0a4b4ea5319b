//! Global windows: one never-ending window per key, emitted whenever its [`Trigger`] fires.
//!
//! Results carry `window_start = i64::MIN` and a `window_end` that says when they fired (it is not an
//! exclusive end: a global window has none), which is also the result's output timestamp:
//!
//! - fired by an element (count triggers, [`CustomTrigger::on_element`]): the largest event time among the
//!   elements in the emitted aggregate (with a purging trigger, those since the key's previous firing);
//! - fired by the watermark: the multiple of the interval it crossed (event-time triggers; when one watermark
//!   crosses several multiples the key fires once, at the largest), or the watermark (custom triggers);
//! - fired by processing time: the multiple of the interval crossed, or `now` (custom triggers).
//!
//! A firing emits the aggregate of everything the key received so far (since its previous firing when
//! purging): elements are not split by event time, so an event-time firing at `m` may include elements at or
//! after `m` that arrived before the watermark reached it (as in Flink, where a firing emits the pane).
//!
//! An event-time trigger fires a key at `m` when its pending pane holds an element below `m` (a key's pending
//! elements become due at the first multiple above the smallest of their timestamps, as Flink's
//! `ContinuousEventTimeTrigger` registers its timer). A processing-time trigger fires when processing time
//! crosses a multiple between two callbacks; the first callback after a start or a restore only learns where
//! processing time is (it is not checkpointed: wall time, or the test driver's virtual time, starts over), so
//! restored keys fire at the next multiple crossed, at most one interval later.
//!
//! Global windows have no late records: every element is added. State: per key the accumulator and its
//! [`Pane`]; with a purging trigger a key is forgotten when it fires, with an accumulating one it is kept.
//! `pending` (time triggers that visit keys) lists the keys with pending elements, possibly twice or stale
//! (cleaned at each time firing); `due` (event-time triggers) lists keys by the multiple at which they are due.
//! The per-key state is [`KeyedState`] (a checkpoint writes the keys that changed; the disk backend can hold
//! more than memory); `pending`, `due` and `count` are derived from it (rebuilt when it is bound or restored).

use std::collections::BTreeMap;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::keyed_state::KeyedState;
use crate::operator::TaskInfo;
use crate::record::WindowResult;
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::trigger::{floor_to, CustomTrigger, Pane, Trigger, TriggerKind};

/// One key's global window.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState<Acc> {
    acc: Acc,
    pane: Pane,
    /// The largest event time in `acc` (differs from `pane.max_ts` only when accumulating).
    acc_max_ts: i64,
}

impl<Acc: StateCodec> StateCodec for KeyState<Acc> {
    fn encode(&self, w: &mut StateWriter) {
        self.acc.encode(w);
        w.u64(self.pane.count);
        w.i64(self.pane.min_ts);
        w.i64(self.pane.max_ts);
        w.i64(self.acc_max_ts);
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let acc = Acc::decode(r)?;
        let pane = Pane {
            count: r.u64()?,
            min_ts: r.i64()?,
            max_ts: r.i64()?,
        };
        let acc_max_ts = r.i64()?;
        if pane.count > 0 && pane.min_ts > pane.max_ts {
            return Err(Error::CorruptState("global window pane bounds".into()));
        }
        Ok(KeyState {
            acc,
            pane,
            acc_max_ts,
        })
    }
}

pub(crate) struct GlobalWindows<K, Acc> {
    trigger: Trigger,
    keys: KeyedState<K, KeyState<Acc>>,
    /// Keys held.
    count: usize,
    pending: Vec<K>,
    due: BTreeMap<i64, Vec<K>>,
    /// The multiple of the processing-time interval last fired at (None: not since the start).
    pt_fired: Option<i64>,
}

type Emit<'a, K, O> = &'a mut dyn FnMut(i64, WindowResult<K, O>);

impl<K: Key, Acc: StateCodec + Clone> GlobalWindows<K, Acc> {
    pub(crate) fn new(trigger: Trigger) -> Self {
        GlobalWindows {
            trigger,
            keys: KeyedState::new(),
            count: 0,
            pending: Vec::new(),
            due: BTreeMap::new(),
            pt_fired: None,
        }
    }

    /// Binds the keys' state to the task's backend (as the operator's state `global`) and lists them.
    pub(crate) fn bind(&mut self, task: &TaskInfo) {
        self.keys.bind_named(task, "global");
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild();
    }

    /// Lists the keys with pending elements (and when they are due) again, and counts the keys.
    fn rebuild(&mut self) -> Result<()> {
        let (mut pending, mut due, mut count) = (Vec::new(), BTreeMap::<i64, Vec<K>>::new(), 0);
        let trigger = self.trigger;
        self.keys.for_each(|k, s| {
            count += 1;
            if s.pane.count > 0 {
                if trigger.tracks_pending() {
                    pending.push(k.clone());
                }
                if let TriggerKind::EventTime { interval_ms } = trigger.kind {
                    due.entry(Self::due_at(interval_ms, s.pane.min_ts))
                        .or_default()
                        .push(k.clone());
                }
            }
        })?;
        self.pending = pending;
        self.due = due;
        self.count = count;
        Ok(())
    }

    /// The multiple of the interval at which a pane whose smallest timestamp is `min_ts` is due.
    fn due_at(interval: i64, min_ts: i64) -> i64 {
        floor_to(min_ts, interval).saturating_add(interval)
    }

    pub(crate) fn add<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        key: &K,
        ts: i64,
        item: &T,
        emit: Emit<'_, K, A::Out>,
    ) {
        if self.keys.get_mut(key).is_none() {
            let fresh = KeyState {
                acc: agg.init(),
                pane: Pane::EMPTY,
                acc_max_ts: i64::MIN,
            };
            self.keys.put(key.clone(), fresh);
            self.count += 1;
        }
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        agg.add(&mut state.acc, item);
        let was_empty = state.pane.count == 0;
        let old_min = state.pane.min_ts;
        state.pane.add(ts);
        state.acc_max_ts = state.acc_max_ts.max(ts);
        let fire = match self.trigger.kind {
            TriggerKind::Count(n) => state.pane.count >= n,
            TriggerKind::Custom(t) => t.on_element(&state.pane, ts),
            TriggerKind::EventTime { interval_ms } => {
                // Due earlier when the smallest pending timestamp moves below its multiple.
                if was_empty || Self::due_at(interval_ms, ts) < Self::due_at(interval_ms, old_min) {
                    self.due
                        .entry(Self::due_at(interval_ms, ts))
                        .or_default()
                        .push(key.clone());
                }
                false
            }
            TriggerKind::ProcessingTime { .. } => false,
        };
        if fire {
            self.fire_key(agg, key, None, emit);
        } else if was_empty && self.trigger.tracks_pending() {
            self.pending.push(key.clone());
        }
    }

    /// Emits `key`'s aggregate at `at` (None: its largest timestamp) and purges or resets its pane.
    fn fire_key<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        key: &K,
        at: Option<i64>,
        emit: Emit<'_, K, A::Out>,
    ) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let end = at.unwrap_or(state.acc_max_ts);
        let r = WindowResult {
            key: key.clone(),
            window_start: i64::MIN,
            window_end: end,
            value: agg.finish(&state.acc),
        };
        if self.trigger.purge {
            self.keys.remove(key);
            self.count = self.count.saturating_sub(1);
        } else {
            state.pane = Pane::EMPTY;
        }
        emit(end, r);
    }

    /// Fires the keys listed in `pending` that `decide` accepts, at `at`; the others stay pending.
    fn fire_pending<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        at: i64,
        decide: &dyn Fn(&Pane) -> bool,
        emit: Emit<'_, K, A::Out>,
    ) {
        let mut keys = std::mem::take(&mut self.pending);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(state) = self.keys.get(&key) else {
                continue;
            };
            if state.pane.count == 0 {
                continue;
            }
            if decide(&state.pane) {
                self.fire_key(agg, &key, Some(at), emit);
            } else {
                self.pending.push(key);
            }
        }
    }

    /// The watermark moved from `old` to `new`.
    pub(crate) fn on_watermark<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        old: i64,
        new: i64,
        emit: Emit<'_, K, A::Out>,
    ) {
        match self.trigger.kind {
            TriggerKind::EventTime { interval_ms } => {
                let m = floor_to(new, interval_ms);
                if old != i64::MIN && m <= floor_to(old, interval_ms) {
                    return;
                }
                let mut keys = Vec::new();
                while let Some(entry) = self.due.first_entry() {
                    if *entry.key() > m {
                        break;
                    }
                    keys.extend(entry.remove());
                }
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    // Stale entries: a key fired since, or pending again only with later elements (their own
                    // entry is still in `due`).
                    if self
                        .keys
                        .get(&key)
                        .is_some_and(|s| s.pane.count > 0 && s.pane.min_ts < m)
                    {
                        self.fire_key(agg, &key, Some(m), emit);
                    }
                }
            }
            TriggerKind::Custom(t) if t.uses_time() => {
                let t: &dyn CustomTrigger = t;
                self.fire_pending(agg, new, &|p| t.on_watermark(p, new), emit);
            }
            _ => {}
        }
    }

    pub(crate) fn on_processing_time<T, A: Aggregator<T, Acc = Acc>>(
        &mut self,
        agg: &A,
        now: i64,
        emit: Emit<'_, K, A::Out>,
    ) {
        match self.trigger.kind {
            TriggerKind::ProcessingTime { interval_ms } => {
                let m = floor_to(now, interval_ms);
                let Some(fired) = self.pt_fired.replace(m) else {
                    // The first callback only learns where processing time is.
                    return;
                };
                if m > fired {
                    self.fire_pending(agg, m, &|_| true, emit);
                } else {
                    self.pt_fired = Some(fired);
                }
            }
            TriggerKind::Custom(t) if t.uses_time() => {
                let t: &dyn CustomTrigger = t;
                self.fire_pending(agg, now, &|p| t.on_processing_time(p, now), emit);
            }
            _ => {}
        }
    }

    pub(crate) fn entries(&self) -> usize {
        self.count
    }

    /// Forgets what is pending (a restore starts from here; processing time starts over).
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.due.clear();
        self.pt_fired = None;
    }

    /// At a checkpoint: a bound state stages the keys that changed; an unbound one writes them all.
    pub(crate) fn checkpoint(&mut self, w: &mut StateWriter) {
        self.keys.write_to(w);
    }

    /// Restores what `checkpoint` wrote.
    pub(crate) fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.reset();
        self.keys.restore(r.bytes()?)?;
        self.rebuild()
    }

    /// Reads a snapshot from before the keys were keyed state (every key inline) into the state.
    pub(crate) fn restore_inline(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.reset();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..r.count(32)? {
            let k = K::decode(r)?;
            let state = KeyState::<Acc>::decode(r)?;
            if !seen.insert(k.clone()) {
                return Err(Error::CorruptState("global window: a key twice".into()));
            }
            self.keys.put(k, state);
        }
        self.rebuild()
    }
}
