//! The interval join (Flink's `intervalJoin(..).between(lower, upper)`): two streams, per key; a left element
//! `l` and a right element `r` of the same key join when `l.ts + lower <= r.ts <= l.ts + upper`.
//!
//! - A pair is emitted as soon as its second element arrives, with timestamp `max(l.ts, r.ts)`:
//!   `f(k, Some(l), Some(r))`. Pairs come out in arrival order of their second element; the elements it
//!   joins with in (timestamp, arrival) order.
//! - Elements are held until no future element can match them. After `on_watermark(w)` every element to come
//!   has `ts >= w` (the runtime's convention), so a left element expires once `l.ts + upper < w` and a right
//!   one once `r.ts - lower < w`. The final watermark `i64::MAX` (end of input) expires everything.
//! - With [`JoinKind::Left`], `Right` or `Full`, an element of a kept side that expires without ever having
//!   matched is emitted then, as `f(k, Some(l), None)` or `f(k, None, Some(r))`, with its own timestamp.
//!   Expiries come out in (timestamp, key, arrival) order, for one watermark the left side first.
//! - An element that arrives already expired (possible with a negative `upper`, or when it is late) is joined
//!   against what is held, and if unmatched emitted at once (kept sides), but not stored. Elements behind the
//!   watermark (`ts < w`) are counted in `late_records`: their partners may have expired already.
//!
//! Invariants:
//! - `watermark` only grows; every element held has not expired;
//! - `keys` holds, per key, both sides' elements in one slot of a slab: one lookup serves an element's probe
//!   of the other side and its own insertion. A key whose sides have emptied keeps its slot until the next
//!   checkpoint sweeps it, so a key that comes back soon (a bidder bidding every second, expiring every
//!   500 ms) reuses its queues instead of allocating and freeing them per element;
//! - `left_at` / `right_at` list, for every element held, its timestamp and slot in timestamp order, so that
//!   expiry visits only the keys that have something to expire, by slot: without hashing the key again
//!   (whose bytes are long out of cache by then). An entry may be stale (its element gone, its slot swept or
//!   even reused by another key): expiry at `ts` pops only elements at or before `ts`, which have expired
//!   whoever holds them, and any such element of the slot's present key is in this bucket or an earlier one
//!   (buckets are visited in time order), so a stale entry never changes what is emitted or in what order;
//! - a key's side is sorted by (timestamp, arrival sequence). Sides and the expiry lists are queues with an
//!   in-order fast path, not trees: elements mostly arrive in time order, and a key holds few elements, so
//!   this costs no allocation per element beyond the queue's growth.
//! - `seq` numbers elements in arrival order (it orders equal timestamps and is saved with the state).
//!
//! Checkpoints (in a pipeline, where the task has a state backend) are incremental: the elements live in
//! the store as a [`ChangeLog`], one entry per element under its side and `seq`, and a checkpoint writes
//! only the elements added since the last one that are still held (an element that expires between two
//! checkpoints is never written), the deletions of stored elements that expired, and the stored elements
//! of an outer side that matched for the first time. The snapshot keeps only the watermark and counters.
//! A restore reads the elements back from the store. Without a backend (unit tests, the test driver)
//! the snapshot holds every element, as before. Further invariants of a bound join:
//! - every element held with `seq < stored_below` is in the store (it was held at the last checkpoint),
//!   with its `matched` flag if its side is kept; every element held with a larger `seq`, and every stored
//!   element whose flag changed since, is listed in `changed`;
//! - the store holds no element that is not held, except deletions still in the log.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::change_log::ChangeLog;
use crate::error::{Error, Result};
use crate::fxhash::FxHashMap;
use crate::join::{Either, JoinKind};
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::state::{Key, StateCodec, StateReader, StateWriter};

/// Builds the output of a matched pair, or of an unmatched element (`None` for the other side).
pub type IntervalJoinFn<K, L, R, O> = Arc<dyn Fn(&K, Option<&L>, Option<&R>) -> O + Send + Sync>;

/// Version 2 keeps the elements in the store when bound (its snapshot carries them only when unbound);
/// version 1 (every element in the snapshot) is still read.
const STATE_VERSION: u8 = 2;

/// Sides in an element's store key.
const LEFT: u8 = 0;
const RIGHT: u8 = 1;

/// The store key of an element: its side and its sequence number (unique in its operator instance).
fn element_key(side: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = side;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// An element held, with whether it has matched yet.
struct Held<T> {
    value: T,
    matched: bool,
}

/// One side's elements of one key, sorted by (timestamp, arrival sequence).
struct Side<T> {
    items: VecDeque<(i64, u64, Held<T>)>,
}

impl<T> Default for Side<T> {
    fn default() -> Self {
        Side {
            items: VecDeque::new(),
        }
    }
}

impl<T> Side<T> {
    /// Inserts in order; `false` if (ts, seq) is already held.
    fn insert(&mut self, ts: i64, seq: u64, held: Held<T>) -> bool {
        if self.items.back().is_none_or(|b| (b.0, b.1) < (ts, seq)) {
            self.items.push_back((ts, seq, held));
            return true;
        }
        let at = self.items.partition_point(|e| (e.0, e.1) < (ts, seq));
        if self.items.get(at).is_some_and(|e| (e.0, e.1) == (ts, seq)) {
            return false;
        }
        self.items.insert(at, (ts, seq, held));
        true
    }

    /// The elements with a timestamp in `lo..=hi`, in order.
    /// The element (ts, seq), if held.
    fn find(&self, ts: i64, seq: u64) -> Option<&Held<T>> {
        let at = self.items.partition_point(|e| (e.0, e.1) < (ts, seq));
        self.items
            .get(at)
            .filter(|e| (e.0, e.1) == (ts, seq))
            .map(|e| &e.2)
    }

    fn range_mut(&mut self, lo: i64, hi: i64) -> impl Iterator<Item = &mut (i64, u64, Held<T>)> {
        let start = self.items.partition_point(|e| e.0 < lo);
        self.items.range_mut(start..).take_while(move |e| e.0 <= hi)
    }
}

/// Both sides' elements of one key.
struct Pair<K, L, R> {
    key: K,
    left: Side<L>,
    right: Side<R>,
}

impl<K, L, R> Pair<K, L, R> {
    fn is_empty(&self) -> bool {
        self.left.items.is_empty() && self.right.items.is_empty()
    }
}

/// The keys held, each in a slot of a slab that its index points to.
///
/// Invariants: `index[k] == i` exactly when `slots[i]` holds key `k`; `free` lists the empty slots.
struct Keys<K, L, R> {
    index: FxHashMap<K, u32>,
    slots: Vec<Option<Pair<K, L, R>>>,
    free: Vec<u32>,
}

impl<K: Key, L, R> Keys<K, L, R> {
    fn new() -> Self {
        Keys {
            index: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn find(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The slot of `key`, made if it has none.
    fn find_or_insert(&mut self, key: &K) -> u32 {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let pair = Pair {
            key: key.clone(),
            left: Side::default(),
            right: Side::default(),
        };
        // A freed slot is one `sweep` emptied, so it is in range; pushed otherwise.
        let i = match self.free.pop() {
            Some(i) if (i as usize) < self.slots.len() => {
                self.slots[i as usize] = Some(pair);
                i
            }
            _ => {
                self.slots.push(Some(pair));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key.clone(), i);
        i
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut Pair<K, L, R>> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    fn get(&self, i: u32) -> Option<&Pair<K, L, R>> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    /// Frees the slots of keys that hold nothing.
    fn sweep(&mut self) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(Pair::is_empty) {
                if let Some(p) = slot.take() {
                    self.index.remove(&p.key);
                }
                self.free.push(i as u32);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Pair<K, L, R>> {
        self.slots.iter().flatten()
    }

    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }
}

/// Timestamps and slots of the elements held, in timestamp order.
type ExpiryList = VecDeque<(i64, u32)>;

fn push_expiry(list: &mut ExpiryList, ts: i64, slot: u32) {
    if list.back().is_none_or(|b| b.0 <= ts) {
        list.push_back((ts, slot));
    } else {
        let at = list.partition_point(|e| e.0 <= ts);
        list.insert(at, (ts, slot));
    }
}

pub struct IntervalJoin<K, L, R, O> {
    kind: JoinKind,
    lower: i64,
    upper: i64,
    f: IntervalJoinFn<K, L, R, O>,
    watermark: i64,
    seq: u64,
    keys: Keys<K, L, R>,
    left_at: ExpiryList,
    right_at: ExpiryList,
    /// Slots of one expiry timestamp (reused).
    scratch: Vec<u32>,
    held: u64,
    late_records: u64,
    /// The elements in the store (unbound: none; see the module documentation).
    log: ChangeLog,
    /// Elements to write at the next checkpoint: side, slot, timestamp, seq (stale once expired).
    changed: Vec<(u8, u32, i64, u64)>,
    stored_below: u64,
    /// The largest seq read from the store at start (checked against the snapshot's counter).
    loaded_max: Option<u64>,
}

impl<K: Key, L, R, O> IntervalJoin<K, L, R, O> {
    /// Fails (with [`Error::Invalid`]) unless `lower_ms <= upper_ms`.
    pub fn new(
        kind: JoinKind,
        lower_ms: i64,
        upper_ms: i64,
        f: IntervalJoinFn<K, L, R, O>,
    ) -> Result<Self> {
        if lower_ms > upper_ms {
            return Err(Error::Invalid(format!(
                "interval join bounds: lower {lower_ms} > upper {upper_ms}"
            )));
        }
        Ok(IntervalJoin {
            kind,
            lower: lower_ms,
            upper: upper_ms,
            f,
            watermark: i64::MIN,
            seq: 0,
            keys: Keys::new(),
            left_at: ExpiryList::new(),
            right_at: ExpiryList::new(),
            scratch: Vec::new(),
            held: 0,
            late_records: 0,
            log: ChangeLog::default(),
            changed: Vec::new(),
            stored_below: 0,
            loaded_max: None,
        })
    }

    fn end_of_input(&self) -> bool {
        self.watermark == i64::MAX
    }

    /// No right element to come (all at `>= watermark`) can match a left one at `ts`.
    fn left_expired(&self, ts: i64) -> bool {
        ts.saturating_add(self.upper) < self.watermark || self.end_of_input()
    }

    /// No left element to come can match a right one at `ts`.
    fn right_expired(&self, ts: i64) -> bool {
        ts.saturating_sub(self.lower) < self.watermark || self.end_of_input()
    }

    fn add_left(&mut self, ts: i64, key: K, l: L, out: &mut dyn Collector<O>) {
        let expired = self.left_expired(ts);
        let slot = if expired {
            self.keys.find(&key)
        } else {
            Some(self.keys.find_or_insert(&key))
        };
        let mut matched = false;
        if let Some((i, pair)) = slot.and_then(|i| Some((i, self.keys.get_mut(i)?))) {
            // r.ts in [ts + lower, ts + upper]; saturating bounds are exact (no timestamp lies beyond them).
            let (lo, hi) = (ts.saturating_add(self.lower), ts.saturating_add(self.upper));
            let track = self.log.is_bound() && self.kind.keeps_right();
            for (rts, rseq, r) in pair.right.range_mut(lo, hi) {
                matched = true;
                if !r.matched && track && *rseq < self.stored_below {
                    self.changed.push((RIGHT, i, *rts, *rseq));
                }
                r.matched = true;
                out.emit(ts.max(*rts), (self.f)(&key, Some(&l), Some(&r.value)));
            }
            if !expired {
                if pair.left.insert(ts, self.seq, Held { value: l, matched }) {
                    self.held += 1;
                    if self.log.is_bound() {
                        self.changed.push((LEFT, i, ts, self.seq));
                    }
                }
                push_expiry(&mut self.left_at, ts, i);
                // Wrapping cannot collide in practice (2^64 elements), and must not panic on a restored
                // counter.
                self.seq = self.seq.wrapping_add(1);
                return;
            }
        }
        if !matched && self.kind.keeps_left() {
            out.emit(ts, (self.f)(&key, Some(&l), None));
        }
    }

    fn add_right(&mut self, ts: i64, key: K, r: R, out: &mut dyn Collector<O>) {
        let expired = self.right_expired(ts);
        let slot = if expired {
            self.keys.find(&key)
        } else {
            Some(self.keys.find_or_insert(&key))
        };
        let mut matched = false;
        if let Some((i, pair)) = slot.and_then(|i| Some((i, self.keys.get_mut(i)?))) {
            // l.ts in [ts - upper, ts - lower].
            let (lo, hi) = (ts.saturating_sub(self.upper), ts.saturating_sub(self.lower));
            let track = self.log.is_bound() && self.kind.keeps_left();
            for (lts, lseq, l) in pair.left.range_mut(lo, hi) {
                matched = true;
                if !l.matched && track && *lseq < self.stored_below {
                    self.changed.push((LEFT, i, *lts, *lseq));
                }
                l.matched = true;
                out.emit((*lts).max(ts), (self.f)(&key, Some(&l.value), Some(&r)));
            }
            if !expired {
                if pair.right.insert(ts, self.seq, Held { value: r, matched }) {
                    self.held += 1;
                    if self.log.is_bound() {
                        self.changed.push((RIGHT, i, ts, self.seq));
                    }
                }
                push_expiry(&mut self.right_at, ts, i);
                self.seq = self.seq.wrapping_add(1);
                return;
            }
        }
        if !matched && self.kind.keeps_right() {
            out.emit(ts, (self.f)(&key, None, Some(&r)));
        }
    }

    fn expire(&mut self, out: &mut dyn Collector<O>) {
        let mut slots = std::mem::take(&mut self.scratch);
        // Unmatched elements are emitted at expiry only by outer kinds; they order a bucket by key.
        let by_key = self.kind.keeps_left() || self.kind.keeps_right();
        while let Some(ts) = self
            .left_at
            .front()
            .map(|e| e.0)
            .filter(|t| self.left_expired(*t))
        {
            take_bucket(&mut self.left_at, ts, &mut slots, &self.keys, by_key);
            for i in slots.drain(..) {
                let Some(pair) = self.keys.get_mut(i) else {
                    continue; // stale: swept already
                };
                let side = &mut pair.left;
                while side.items.front().is_some_and(|e| e.0 <= ts) {
                    let Some((lts, lseq, l)) = side.items.pop_front() else {
                        break;
                    };
                    self.held -= 1;
                    if lseq < self.stored_below {
                        self.log.delete(&element_key(LEFT, lseq));
                    }
                    if !l.matched && self.kind.keeps_left() {
                        out.emit(lts, (self.f)(&pair.key, Some(&l.value), None));
                    }
                }
            }
        }
        while let Some(ts) = self
            .right_at
            .front()
            .map(|e| e.0)
            .filter(|t| self.right_expired(*t))
        {
            take_bucket(&mut self.right_at, ts, &mut slots, &self.keys, by_key);
            for i in slots.drain(..) {
                let Some(pair) = self.keys.get_mut(i) else {
                    continue;
                };
                let side = &mut pair.right;
                while side.items.front().is_some_and(|e| e.0 <= ts) {
                    let Some((rts, rseq, r)) = side.items.pop_front() else {
                        break;
                    };
                    self.held -= 1;
                    if rseq < self.stored_below {
                        self.log.delete(&element_key(RIGHT, rseq));
                    }
                    if !r.matched && self.kind.keeps_right() {
                        out.emit(rts, (self.f)(&pair.key, None, Some(&r.value)));
                    }
                }
            }
        }
        self.scratch = slots;
    }
}

/// Moves the slots of every entry at `ts` (the front ones) into `slots`, without repeats, ordered by key when
/// `by_key` (so that the unmatched elements outer kinds emit come out in the same order on every run,
/// restored or not: slots are handed out in arrival order, which a restore does not keep).
fn take_bucket<K: Key, L, R>(
    list: &mut ExpiryList,
    ts: i64,
    slots: &mut Vec<u32>,
    keys: &Keys<K, L, R>,
    by_key: bool,
) {
    while list.front().is_some_and(|e| e.0 == ts) {
        if let Some((_, i)) = list.pop_front() {
            slots.push(i);
        }
    }
    slots.sort_unstable();
    slots.dedup();
    if by_key && slots.len() > 1 {
        // A swept slot has no key; it is skipped by the caller, wherever it sorts.
        slots.sort_by(|a, b| {
            keys.get(*a)
                .map(|p| &p.key)
                .cmp(&keys.get(*b).map(|p| &p.key))
        });
    }
}

/// Writes one side of every key that holds elements on it (`side` picks the side).
fn write_sides<K: Key, L, R, T: StateCodec>(
    w: &mut StateWriter,
    keys: &Keys<K, L, R>,
    side: impl Fn(&Pair<K, L, R>) -> &Side<T>,
) {
    let held = || keys.iter().filter(|p| !side(p).items.is_empty());
    w.u32(held().count() as u32);
    for pair in held() {
        let side = side(pair);
        pair.key.encode(w);
        w.u32(side.items.len() as u32);
        for (ts, seq, held) in &side.items {
            w.i64(*ts);
            w.u64(*seq);
            w.u8(held.matched as u8);
            held.value.encode(w);
        }
    }
}

/// Reads what [`write_sides`] wrote into the side `side_of` picks, listing every element in `at`; returns
/// how many elements it read.
fn read_sides<K: Key, L, R, T: StateCodec>(
    r: &mut StateReader<'_>,
    next_seq: u64,
    keys: &mut Keys<K, L, R>,
    at: &mut ExpiryList,
    side_of: impl Fn(&mut Pair<K, L, R>) -> &mut Side<T>,
) -> Result<u64> {
    let mut n = 0;
    // A key takes at least its element count (4); an element its timestamp, sequence and flag (17).
    for _ in 0..r.count(4)? {
        let key = K::decode(r)?;
        let i = keys.find_or_insert(&key);
        let Some(pair) = keys.get_mut(i) else {
            return Err(Error::CorruptState("interval join: a lost slot".into()));
        };
        let side = side_of(pair);
        if !side.items.is_empty() {
            return Err(Error::CorruptState("interval join: a key twice".into()));
        }
        for _ in 0..r.count(17)? {
            let ts = r.i64()?;
            let seq = r.u64()?;
            let matched = match r.u8()? {
                0 => false,
                1 => true,
                t => return Err(Error::CorruptState(format!("interval join: bad flag {t}"))),
            };
            if seq >= next_seq {
                return Err(Error::CorruptState(
                    "interval join: an element from the future".into(),
                ));
            }
            let value = T::decode(r)?;
            if !side.insert(ts, seq, Held { value, matched }) {
                return Err(Error::CorruptState(
                    "interval join: an element twice".into(),
                ));
            }
            // Sorted once all are read (inserting in order here would be quadratic).
            at.push_back((ts, i));
            n += 1;
        }
    }
    Ok(n)
}

/// An element's store value: its key, timestamp, matched flag and value.
fn write_element<K: Key, T: StateCodec>(w: &mut StateWriter, key: &K, ts: i64, held: &Held<T>) {
    key.encode(w);
    w.i64(ts);
    w.u8(held.matched as u8);
    held.value.encode(w);
}

/// An element read back from the store: seq, key, timestamp, and the element on its side.
type Stored<K, L, R> = (u64, K, i64, Either<Held<L>, Held<R>>);

/// Reads what [`write_element`] wrote under the store key [`element_key`].
fn read_element<K: Key, L: StateCodec, R: StateCodec>(
    k: &[u8],
    v: &[u8],
) -> Result<Stored<K, L, R>> {
    let bad = |what: &str| Error::CorruptState(format!("interval join element: {what}"));
    let (&side, seq) = k.split_first().ok_or_else(|| bad("an empty key"))?;
    let seq: [u8; 8] = seq
        .try_into()
        .map_err(|_| bad("a key of the wrong length"))?;
    let mut r = StateReader::new(v);
    let key = K::decode(&mut r)?;
    let ts = r.i64()?;
    let matched = match r.u8()? {
        0 => false,
        1 => true,
        t => return Err(bad(&format!("bad flag {t}"))),
    };
    let held = match side {
        LEFT => Either::Left(Held {
            value: L::decode(&mut r)?,
            matched,
        }),
        RIGHT => Either::Right(Held {
            value: R::decode(&mut r)?,
            matched,
        }),
        s => return Err(bad(&format!("side {s}"))),
    };
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((u64::from_be_bytes(seq), key, ts, held))
}

/// Holds a restored element: in its key's side and its expiry list (sorted by the caller once all are in).
fn hold<K: Key, L, R, T>(
    keys: &mut Keys<K, L, R>,
    at: &mut ExpiryList,
    side_of: impl Fn(&mut Pair<K, L, R>) -> &mut Side<T>,
    (seq, key, ts, held): (u64, K, i64, Held<T>),
) -> Result<()> {
    let i = keys.find_or_insert(&key);
    let pair = keys
        .get_mut(i)
        .ok_or_else(|| Error::CorruptState("interval join: a lost slot".into()))?;
    if !side_of(pair).insert(ts, seq, held) {
        return Err(Error::CorruptState(
            "interval join: an element twice".into(),
        ));
    }
    at.push_back((ts, i));
    Ok(())
}

impl<K: Key, L: StateCodec, R: StateCodec, O> IntervalJoin<K, L, R, O> {
    /// At a checkpoint of a bound join: writes the elements added (or newly matched) since the last one that
    /// are still held, and hands them with the deletions logged since to the backend.
    fn stage_changes(&mut self) {
        let IntervalJoin {
            changed, keys, log, ..
        } = self;
        for (side, i, ts, seq) in changed.drain(..) {
            // A slot is swept only after this, so `i` still holds the element's key if it is held at all.
            let Some(pair) = keys.get(i) else { continue };
            let key = element_key(side, seq);
            if side == LEFT {
                if let Some(h) = pair.left.find(ts, seq) {
                    log.put(&key, |w| write_element(w, &pair.key, ts, h));
                }
            } else if let Some(h) = pair.right.find(ts, seq) {
                log.put(&key, |w| write_element(w, &pair.key, ts, h));
            }
        }
        self.stored_below = self.seq;
        self.log.stage();
    }

    /// Lists every element held as changed (after a restore from a snapshot that carried them: the store
    /// does not hold them yet).
    fn all_changed(&mut self) {
        for (i, slot) in self.keys.slots.iter().enumerate() {
            let Some(pair) = slot else { continue };
            for (ts, seq, _) in &pair.left.items {
                self.changed.push((LEFT, i as u32, *ts, *seq));
            }
            for (ts, seq, _) in &pair.right.items {
                self.changed.push((RIGHT, i as u32, *ts, *seq));
            }
        }
    }
}

impl<K, L, R, O> Operator<Either<(K, L), (K, R)>> for IntervalJoin<K, L, R, O>
where
    K: Key,
    L: StateCodec + Send,
    R: StateCodec + Send,
{
    type Out = O;

    fn process(
        &mut self,
        timestamp: i64,
        item: Either<(K, L), (K, R)>,
        out: &mut dyn Collector<O>,
    ) {
        if timestamp < self.watermark {
            self.late_records += 1;
        }
        match item {
            Either::Left((key, l)) => self.add_left(timestamp, key, l, out),
            Either::Right((key, r)) => self.add_right(timestamp, key, r, out),
        }
    }

    fn on_start(&mut self, task: &TaskInfo) {
        // A bound join's elements are in the store: read back here, before the snapshot's counters.
        let (mut lefts, mut rights, mut bad) = (Vec::new(), Vec::new(), None);
        self.log.bind(task, "elements", |k, v| {
            match read_element::<K, L, R>(k, v) {
                Ok((seq, key, ts, Either::Left(h))) => lefts.push((seq, key, ts, h)),
                Ok((seq, key, ts, Either::Right(h))) => rights.push((seq, key, ts, h)),
                Err(e) => {
                    bad.get_or_insert(e);
                }
            }
        });
        let mut held = Ok(());
        let max = lefts
            .iter()
            .map(|e| e.0)
            .chain(rights.iter().map(|e| e.0))
            .max();
        self.held += (lefts.len() + rights.len()) as u64;
        for e in lefts {
            held = held.and_then(|_| hold(&mut self.keys, &mut self.left_at, |p| &mut p.left, e));
        }
        for e in rights {
            held = held.and_then(|_| hold(&mut self.keys, &mut self.right_at, |p| &mut p.right, e));
        }
        self.left_at.make_contiguous().sort_by_key(|e| e.0);
        self.right_at.make_contiguous().sort_by_key(|e| e.0);
        if let Some(e) = bad.or(held.err()) {
            if let Some(h) = &task.state {
                h.fail(e);
            }
        }
        if let Some(max) = max {
            // Until a snapshot says otherwise, new elements are numbered after the stored ones.
            self.seq = self.seq.max(max.wrapping_add(1));
            self.loaded_max = Some(max);
        }
        self.stored_below = self.seq;
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector<O>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        self.expire(out);
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        let mut w = StateWriter {
            buf: std::mem::take(state),
        };
        w.u8(STATE_VERSION);
        w.i64(self.watermark);
        w.u64(self.seq);
        w.u64(self.late_records);
        // Staged before the sweep: `changed` names slots.
        self.stage_changes();
        // Keys whose sides have emptied since the last checkpoint are dropped here (see the invariants).
        self.keys.sweep();
        let mut sides = StateWriter::new();
        if !self.log.is_bound() {
            write_sides(&mut sides, &self.keys, |p| &p.left);
            write_sides(&mut sides, &self.keys, |p| &p.right);
        }
        w.bytes(&sides.buf);
        *state = w.buf;
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if version != 1 && version != STATE_VERSION {
            return Err(Error::CorruptState(format!(
                "interval join state version {version}"
            )));
        }
        self.watermark = r.i64()?;
        let seq = r.u64()?;
        self.late_records = r.u64()?;
        if self.loaded_max.is_some_and(|m| m >= seq) {
            return Err(Error::CorruptState(
                "interval join: a stored element from the future".into(),
            ));
        }
        self.seq = seq;
        self.stored_below = seq;
        if !self.log.is_bound() {
            self.keys.clear();
            self.left_at.clear();
            self.right_at.clear();
            self.held = 0;
        }
        // Version 1 has the elements inline; version 2 in a field, empty when they are in the store.
        let inner = if version == 1 { None } else { Some(r.bytes()?) };
        let mut ir = inner.map(StateReader::new);
        let sides = ir.as_mut().unwrap_or(&mut r);
        let mut n = 0;
        if version == 1 || !sides.is_empty() {
            n += read_sides(sides, seq, &mut self.keys, &mut self.left_at, |p| {
                &mut p.left
            })?;
            n += read_sides(sides, seq, &mut self.keys, &mut self.right_at, |p| {
                &mut p.right
            })?;
        }
        if !sides.is_empty() || !r.is_empty() {
            return Err(Error::CorruptState(
                "trailing bytes in interval join state".into(),
            ));
        }
        self.held += n;
        self.left_at.make_contiguous().sort_by_key(|e| e.0);
        self.right_at.make_contiguous().sort_by_key(|e| e.0);
        if n > 0 && self.log.is_bound() {
            // A snapshot from before the elements were in the store: written at the next checkpoint.
            self.all_changed();
        }
        Ok(())
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.late_records = self.late_records;
        m.state_entries = self.held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutRecord;

    #[derive(Default)]
    struct Out(Vec<(i64, String)>);
    impl Collector<String> for Out {
        fn emit(&mut self, timestamp: i64, item: String) {
            self.0.push((timestamp, item));
        }
        fn late(&mut self, _record: OutRecord) {}
    }

    type Op = IntervalJoin<String, String, String, String>;
    type In = Either<(String, String), (String, String)>;

    fn op(kind: JoinKind, lower: i64, upper: i64) -> Op {
        IntervalJoin::new(
            kind,
            lower,
            upper,
            Arc::new(|k: &String, l: Option<&String>, r: Option<&String>| {
                let s = |v: Option<&String>| v.map_or("-".to_string(), String::clone);
                format!("{k}:{}+{}", s(l), s(r))
            }),
        )
        .unwrap()
    }
    fn left(k: &str, v: &str) -> In {
        Either::Left((k.into(), v.into()))
    }
    fn right(k: &str, v: &str) -> In {
        Either::Right((k.into(), v.into()))
    }
    fn entries(j: &Op) -> u64 {
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        m.state_entries
    }

    #[test]
    fn bounds_are_checked() {
        let f: IntervalJoinFn<String, String, String, String> = Arc::new(|_, _, _| String::new());
        assert!(IntervalJoin::new(JoinKind::Inner, 5, 4, f.clone()).is_err());
        assert!(IntervalJoin::new(JoinKind::Inner, -5, -5, f).is_ok());
    }

    #[test]
    fn pairs_are_emitted_when_the_second_element_arrives() {
        let mut j = op(JoinKind::Inner, -5, 10);
        let mut out = Out::default();
        j.process(100, left("a", "l100"), &mut out);
        j.process(94, right("a", "r94"), &mut out); // 94 < 100 - 5
        j.process(95, right("a", "r95"), &mut out);
        j.process(110, right("a", "r110"), &mut out);
        j.process(111, right("a", "r111"), &mut out);
        j.process(100, right("b", "other key"), &mut out);
        assert_eq!(
            out.0,
            vec![
                (100, "a:l100+r95".to_string()),
                (110, "a:l100+r110".to_string())
            ]
        );
        out.0.clear();
        j.process(105, left("a", "l105"), &mut out);
        assert_eq!(
            out.0,
            vec![
                (110, "a:l105+r110".to_string()),
                (111, "a:l105+r111".to_string())
            ]
        );
    }

    #[test]
    fn outer_sides_emit_unmatched_elements_at_expiry() {
        let mut j = op(JoinKind::Full, 0, 10);
        let mut out = Out::default();
        j.process(100, left("a", "hit"), &mut out);
        j.process(105, right("a", "r105"), &mut out);
        j.process(200, left("a", "lonely"), &mut out);
        j.process(50, right("b", "r50"), &mut out);
        out.0.clear();
        j.on_watermark(110, &mut out);
        // Right elements expire once ts - lower < w: r50 and r105 (matched); left at 100 stays (100 + 10 >= 110).
        assert_eq!(out.0, vec![(50, "b:-+r50".to_string())]);
        assert_eq!(entries(&j), 2);
        out.0.clear();
        j.on_watermark(111, &mut out);
        assert!(
            out.0.is_empty(),
            "the matched left element expires silently"
        );
        assert_eq!(entries(&j), 1);
        j.on_watermark(i64::MAX, &mut out);
        assert_eq!(out.0, vec![(200, "a:lonely+-".to_string())]);
        assert_eq!(entries(&j), 0);
    }

    #[test]
    fn left_kind_keeps_only_left_elements() {
        let mut j = op(JoinKind::Left, 0, 0);
        let mut out = Out::default();
        j.process(1, left("a", "l"), &mut out);
        j.process(2, right("a", "r"), &mut out);
        j.on_watermark(i64::MAX, &mut out);
        assert_eq!(out.0, vec![(1, "a:l+-".to_string())]);
    }

    #[test]
    fn elements_that_arrive_expired_join_at_once() {
        // Right elements precede their left partners by 5 to 10 ms.
        let mut j = op(JoinKind::Full, -10, -5);
        let mut out = Out::default();
        j.process(93, right("a", "r93"), &mut out);
        j.on_watermark(100, &mut out);
        assert!(
            out.0.is_empty(),
            "r93 can still meet a left element at 100..=103"
        );
        // A left element at 100 can only match right ones at 90..=95: it is complete on arrival.
        j.process(100, left("a", "l100"), &mut out);
        j.process(101, left("b", "l101"), &mut out);
        assert_eq!(
            out.0,
            vec![
                (100, "a:l100+r93".to_string()),
                (101, "b:l101+-".to_string())
            ]
        );
        assert_eq!(entries(&j), 1);
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        assert_eq!(m.late_records, 0);
    }

    #[test]
    fn snapshot_round_trips_and_prefixes_fail() {
        let mut j = op(JoinKind::Full, -3, 3);
        let mut out = Out::default();
        j.process(10, left("a", "l10"), &mut out);
        j.process(12, right("a", "r12"), &mut out);
        j.process(20, right("b", "r20"), &mut out);
        j.on_watermark(5, &mut out);
        let mut state = Vec::new();
        j.on_checkpoint(&mut state);
        let mut k = op(JoinKind::Full, -3, 3);
        k.on_restore(&state).unwrap();
        assert_eq!(entries(&k), 3);
        let finish = |o: &mut Op| {
            let mut c = Out::default();
            o.process(11, left("b", "x"), &mut c);
            o.process(19, left("b", "y"), &mut c);
            o.on_watermark(i64::MAX, &mut c);
            c.0
        };
        let (a, b) = (finish(&mut j), finish(&mut k));
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        for cut in 0..state.len() {
            assert!(op(JoinKind::Full, -3, 3).on_restore(&state[..cut]).is_err());
        }
    }

    proptest::proptest! {
        /// Whatever a damaged store gives back as an element is an error, never a panic; what
        /// `write_element` wrote reads back.
        #[test]
        fn stored_elements_decode_or_fail(k in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                                          v in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                                          ts: i64, seq: u64, matched: bool) {
            let _ = read_element::<String, String, String>(&k, &v);
            let mut w = StateWriter::new();
            write_element(&mut w, &"key".to_string(), ts, &Held { value: "v".to_string(), matched });
            let (s, key, t, held) =
                read_element::<String, String, String>(&element_key(RIGHT, seq), &w.buf).unwrap();
            proptest::prop_assert_eq!((s, key.as_str(), t), (seq, "key", ts));
            let Either::Right(h) = held else { panic!("the right side") };
            proptest::prop_assert_eq!((h.value.as_str(), h.matched), ("v", matched));
        }
    }

    /// A store-backed join: what `commit` (seal, apply, mark applied) would do at a checkpoint.
    mod bound {
        use super::*;
        use crate::keyed_state::{BackendKind, StateHandle};
        use crate::test_support::{backend, commit, task};

        fn started(h: &StateHandle, kind: JoinKind) -> Op {
            let mut j = op(kind, 0, 1_000);
            j.on_start(&task(h, 3, "ij"));
            j
        }

        /// Checkpoints `j` and applies its changes; returns the snapshot and the change bytes.
        fn checkpoint(h: &StateHandle, j: &mut Op, id: u64) -> (Vec<u8>, usize) {
            let mut state = Vec::new();
            j.on_checkpoint(&mut state);
            (state, commit(h, id))
        }

        fn restored(h: &StateHandle, kind: JoinKind, state: &[u8]) -> Op {
            let mut j = started(h, kind);
            j.on_restore(state).unwrap();
            assert!(h.take_error().is_none());
            j
        }

        #[test]
        fn checkpoints_write_only_new_and_expired_elements_and_restore_from_the_store() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = started(&h, JoinKind::Inner);
            let mut out = Out::default();
            for i in 0..10_000 {
                j.process(
                    10,
                    left(&format!("k{i}"), "a value of some length"),
                    &mut out,
                );
            }
            let (_, load) = checkpoint(&h, &mut j, 1);
            // Ten more elements; an element that comes and expires between two checkpoints is never written.
            for i in 0..10 {
                j.process(20, left(&format!("k{i}"), "again"), &mut out);
            }
            let (_, small) = checkpoint(&h, &mut j, 2);
            assert!(
                small * 100 < load,
                "{small} bytes for 10 elements, {load} for 10,000"
            );
            let (state, _) = checkpoint(&h, &mut j, 3);
            assert!(
                state.len() < 64,
                "the snapshot holds counters only: {}",
                state.len()
            );

            let mut k = restored(&h, JoinKind::Inner, &state);
            assert_eq!(entries(&k), 10_010);
            let finish = |o: &mut Op| {
                let mut c = Out::default();
                o.process(500, right("k1", "r"), &mut c);
                o.process(500, right("k9999", "r"), &mut c);
                o.on_watermark(1_015, &mut c); // the elements at 10 expire, those at 20 stay
                o.process(1_016, right("k2", "late r"), &mut c);
                c.0
            };
            let (a, b) = (finish(&mut j), finish(&mut k));
            assert_eq!(a, b);
            assert_eq!(a.len(), 4);
            // The ten left elements at 20, and the right one at 1,016.
            assert_eq!(entries(&k), 11);
            // The expiries are deletions: after one more checkpoint the store holds the 11 still held.
            checkpoint(&h, &mut k, 4);
            let (state, _) = checkpoint(&h, &mut k, 5);
            let again = restored(&h, JoinKind::Inner, &state);
            assert_eq!(entries(&again), 11);
        }

        #[test]
        fn an_outer_side_keeps_its_matched_flags_across_restores() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = started(&h, JoinKind::Left);
            let mut out = Out::default();
            j.process(10, left("a", "la"), &mut out);
            j.process(10, left("b", "lb"), &mut out);
            checkpoint(&h, &mut j, 1);
            // "a" matches after it was stored: its flag must reach the store.
            j.process(11, right("a", "r"), &mut out);
            let (state, _) = checkpoint(&h, &mut j, 2);
            let mut k = restored(&h, JoinKind::Left, &state);
            let mut c = Out::default();
            k.on_watermark(i64::MAX, &mut c);
            assert_eq!(c.0, vec![(10, "b:lb+-".to_string())]);
        }

        #[test]
        fn a_whole_snapshot_moves_into_the_store_at_the_next_checkpoint() {
            let mut j = op(JoinKind::Full, -3, 3);
            let mut out = Out::default();
            j.process(10, left("a", "l10"), &mut out);
            j.process(20, right("b", "r20"), &mut out);
            let mut whole = Vec::new();
            j.on_checkpoint(&mut whole);
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut k = restored(&h, JoinKind::Full, &whole);
            assert_eq!(entries(&k), 2);
            let (state, bytes) = checkpoint(&h, &mut k, 1);
            assert!(bytes > 0);
            let mut again = restored(&h, JoinKind::Full, &state);
            let mut c = Out::default();
            again.on_watermark(i64::MAX, &mut c);
            assert_eq!(c.0.len(), 2, "{:?}", c.0);
        }

        #[test]
        fn a_stored_element_newer_than_the_snapshot_is_corrupt() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = started(&h, JoinKind::Inner);
            let mut out = Out::default();
            let (old, _) = checkpoint(&h, &mut j, 1);
            j.process(10, left("a", "l"), &mut out);
            checkpoint(&h, &mut j, 2);
            let mut k = started(&h, JoinKind::Inner);
            assert!(k.on_restore(&old).is_err());
        }
    }
}
