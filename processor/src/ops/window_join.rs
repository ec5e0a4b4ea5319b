//! The window join (Flink's `join(..).window(..)`): two streams, per key, joined within each tumbling or
//! hopping window both elements fall into.
//!
//! - Elements of both sides are collected per (key, window). When the watermark passes the window's end
//!   (`end <= watermark`: every element of `[start, end)` has arrived) the window is emitted and forgotten:
//!   every pair `f(k, Some(l), Some(r), start, end)`, and, when one side of the window is empty, the other
//!   side's elements with `None` for the kept sides of [`JoinKind`] (for `Full`, either). All with
//!   timestamp `end - 1`, windows in order of their end, keys in key order, pairs in arrival order (left
//!   outer, right inner) so that runs are reproducible.
//! - An element all of whose windows have closed on arrival is late: it is dropped and counted in
//!   `late_records` (a join has no single record to send to the late topic unchanged). With hopping windows
//!   an element can be late for some of its windows only: it joins the open ones and is counted in
//!   `partially_late`.
//!
//! The cells are [`KeyedState`]: per key, its open windows' cells, so a checkpoint writes the keys that
//! received elements since the last one, and the disk backend can hold more than memory. `ends` lists the
//! keys of every open window (derived: rebuilt when the state is bound or restored, never written).
//!
//! Invariants: `watermark` only grows; every window held is open (`end > watermark`); a hopping window's
//! elements are copies (an element is cloned into each of its windows); `cells[key]` has a cell for `end`
//! exactly when `ends[end]` lists `key` (once); `held` counts the elements in all cells.

use std::collections::BTreeMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::join::{Either, JoinKind};
use crate::keyed_state::KeyedState;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::window::Window;

/// Builds the output of a pair (or of an unmatched element) of the window `[start, end)`.
pub type WindowJoinFn<K, L, R, O> =
    Arc<dyn Fn(&K, Option<&L>, Option<&R>, i64, i64) -> O + Send + Sync>;

/// Version 2 keeps the cells in keyed state; version 1 (every cell in the snapshot) is still read.
const STATE_VERSION: u8 = 2;

/// What one key collected in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell<L, R> {
    left: Vec<L>,
    right: Vec<R>,
}

/// One key's cells, by window end (sorted; a tumbling window has one open at a time, kept inline).
#[derive(Debug, Clone, PartialEq)]
pub struct Cells<L, R>(SmallVec<[(i64, Cell<L, R>); 1]>);

impl<L, R> Default for Cells<L, R> {
    fn default() -> Self {
        Cells(SmallVec::new())
    }
}

impl<L: StateCodec, R: StateCodec> StateCodec for Cells<L, R> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (end, cell) in &self.0 {
            w.i64(*end);
            write_list(w, &cell.left);
            write_list(w, &cell.right);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut cells = Cells::default();
        // A cell takes its end and two list counts (16 bytes).
        for _ in 0..r.count(16)? {
            let end = r.i64()?;
            let cell = Cell {
                left: read_list(r)?,
                right: read_list(r)?,
            };
            if cells.0.last().is_some_and(|c| c.0 >= end) {
                return Err(Error::CorruptState(
                    "window join: cells out of order".into(),
                ));
            }
            cells.0.push((end, cell));
        }
        Ok(cells)
    }
}

fn write_list<T: StateCodec>(w: &mut StateWriter, v: &[T]) {
    w.u32(v.len() as u32);
    for x in v {
        x.encode(w);
    }
}

impl<L, R> Default for Cell<L, R> {
    fn default() -> Self {
        Cell {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

pub struct WindowJoin<K, L, R, O> {
    kind: JoinKind,
    window: Window,
    size: i64,
    f: WindowJoinFn<K, L, R, O>,
    watermark: i64,
    /// Per key, its open windows' cells.
    cells: KeyedState<K, Cells<L, R>>,
    /// The keys of each open window, by end.
    ends: BTreeMap<i64, Vec<K>>,
    scratch: Vec<i64>,
    held: u64,
    late_records: u64,
    partially_late: u64,
}

impl<K: Key, L: StateCodec + Clone, R: StateCodec + Clone, O> WindowJoin<K, L, R, O> {
    /// Fails (with [`Error::Invalid`]) for session windows, which have no fixed assignment to join in, and
    /// for windows that do not validate.
    pub fn new(kind: JoinKind, window: Window, f: WindowJoinFn<K, L, R, O>) -> Result<Self> {
        window.validate().map_err(Error::Invalid)?;
        let size = match window {
            Window::Tumbling { size_ms } | Window::Hopping { size_ms, .. } => size_ms,
            Window::Session { .. }
            | Window::Cumulative { .. }
            | Window::Sliding { .. }
            | Window::Global { .. } => {
                return Err(Error::Invalid(
                    "a window join needs tumbling or hopping windows".into(),
                ))
            }
        };
        Ok(WindowJoin {
            kind,
            window,
            size,
            f,
            watermark: i64::MIN,
            cells: KeyedState::new(),
            ends: BTreeMap::new(),
            scratch: Vec::new(),
            held: 0,
            late_records: 0,
            partially_late: 0,
        })
    }

    fn closed(&self, end: i64) -> bool {
        end <= self.watermark
    }

    /// Adds one element to each of its open windows, on the side `side` picks: moved into the last window,
    /// cloned into the others (hopping windows only).
    fn add<T: Clone>(
        &mut self,
        ts: i64,
        key: K,
        item: T,
        side: fn(&mut Cell<L, R>) -> &mut Vec<T>,
    ) {
        let mut ends = std::mem::take(&mut self.scratch);
        ends.clear();
        let mut assigned = 0;
        self.window.assign(ts, |_, end| {
            assigned += 1;
            ends.push(end);
        });
        ends.retain(|&end| !self.closed(end));
        if ends.is_empty() {
            self.late_records += 1;
        } else if ends.len() < assigned {
            self.partially_late += 1;
        }
        if !ends.is_empty() {
            let (index, held) = (&mut self.ends, &mut self.held);
            let add = |cells: &mut Cells<L, R>| {
                let mut item = Some(item);
                for (i, &end) in ends.iter().enumerate() {
                    let Some(v) = (if i + 1 == ends.len() {
                        item.take()
                    } else {
                        item.clone()
                    }) else {
                        break;
                    };
                    let at = cells.0.partition_point(|c| c.0 < end);
                    if cells.0.get(at).is_none_or(|c| c.0 != end) {
                        cells.0.insert(at, (end, Cell::default()));
                        // Detached from the read buffer, as the state stores a new key.
                        index.entry(end).or_default().push(key.to_stored());
                    }
                    if let Some((_, cell)) = cells.0.get_mut(at) {
                        side(cell).push(v);
                        *held += 1;
                    }
                }
            };
            match self.cells.get_mut(&key) {
                Some(cells) => add(cells),
                None => {
                    let mut cells = Cells::default();
                    add(&mut cells);
                    self.cells.put(key, cells);
                }
            }
        }
        self.scratch = ends;
    }

    /// Lists every open window's keys again from the state, and counts the elements.
    fn rebuild(&mut self) -> Result<()> {
        let (mut index, mut held) = (BTreeMap::<i64, Vec<K>>::new(), 0u64);
        self.cells.for_each(|key, cells| {
            for (end, cell) in &cells.0 {
                index.entry(*end).or_default().push(key.clone());
                held += (cell.left.len() + cell.right.len()) as u64;
            }
        })?;
        self.ends = index;
        self.held = held;
        Ok(())
    }

    fn fire(&mut self, out: &mut dyn Collector<O>) {
        while let Some((&end, _)) = self.ends.first_key_value() {
            if !self.closed(end) {
                break;
            }
            let Some((_, mut keys)) = self.ends.pop_first() else {
                break;
            };
            let start = end.saturating_sub(self.size);
            let ts = end.saturating_sub(1);
            keys.sort_unstable();
            keys.dedup();
            let mut cells: Vec<(K, Cell<L, R>)> = Vec::with_capacity(keys.len());
            for key in keys {
                let Some(per_key) = self.cells.get_mut(&key) else {
                    continue; // only if the state store failed, which fails the pipeline
                };
                let Some(at) = per_key.0.iter().position(|c| c.0 == end) else {
                    continue;
                };
                let (_, cell) = per_key.0.remove(at);
                if per_key.0.is_empty() {
                    self.cells.remove(&key);
                }
                cells.push((key, cell));
            }
            for (key, cell) in cells {
                self.held -= (cell.left.len() + cell.right.len()) as u64;
                if cell.right.is_empty() {
                    if self.kind.keeps_left() {
                        for l in &cell.left {
                            out.emit(ts, (self.f)(&key, Some(l), None, start, end));
                        }
                    }
                } else if cell.left.is_empty() {
                    if self.kind.keeps_right() {
                        for r in &cell.right {
                            out.emit(ts, (self.f)(&key, None, Some(r), start, end));
                        }
                    }
                } else {
                    for l in &cell.left {
                        for r in &cell.right {
                            out.emit(ts, (self.f)(&key, Some(l), Some(r), start, end));
                        }
                    }
                }
            }
        }
    }
}

fn read_list<T: StateCodec>(r: &mut StateReader<'_>) -> Result<Vec<T>> {
    let n = r.count(1)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(T::decode(r)?);
    }
    Ok(v)
}

impl<K, L, R, O> Operator<Either<(K, L), (K, R)>> for WindowJoin<K, L, R, O>
where
    K: Key,
    L: StateCodec + Clone + Send,
    R: StateCodec + Clone + Send,
{
    type Out = O;

    fn on_start(&mut self, task: &TaskInfo) {
        self.cells.bind(task);
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild();
    }

    fn process(
        &mut self,
        timestamp: i64,
        item: Either<(K, L), (K, R)>,
        _out: &mut dyn Collector<O>,
    ) {
        match item {
            Either::Left((key, l)) => self.add(timestamp, key, l, |c| &mut c.left),
            Either::Right((key, r)) => self.add(timestamp, key, r, |c| &mut c.right),
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector<O>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        self.fire(out);
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        let mut w = StateWriter {
            buf: std::mem::take(state),
        };
        w.u8(STATE_VERSION);
        w.i64(self.watermark);
        w.u64(self.late_records);
        w.u64(self.partially_late);
        self.cells.write_to(&mut w);
        *state = w.buf;
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if version != 1 && version != STATE_VERSION {
            return Err(Error::CorruptState(format!(
                "window join state version {version}"
            )));
        }
        self.watermark = r.i64()?;
        self.late_records = r.u64()?;
        self.partially_late = r.u64()?;
        if version == STATE_VERSION {
            self.cells.restore(r.bytes()?)?;
        } else {
            // Every cell in the snapshot, by window: put into the state (into the store at the next
            // checkpoint).
            let mut all: BTreeMap<K, Cells<L, R>> = BTreeMap::new();
            // A window takes its end and key count (12); a cell its two list counts (8).
            for _ in 0..r.count(12)? {
                let end = r.i64()?;
                for _ in 0..r.count(8)? {
                    let key = K::decode(&mut r)?;
                    let cell = Cell {
                        left: read_list(&mut r)?,
                        right: read_list(&mut r)?,
                    };
                    let cells = all.entry(key).or_default();
                    if cells.0.last().is_some_and(|c| c.0 >= end) {
                        return Err(Error::CorruptState(
                            "window join: a key twice in a window".into(),
                        ));
                    }
                    cells.0.push((end, cell));
                }
            }
            for (key, cells) in all {
                self.cells.put(key, cells);
            }
        }
        self.rebuild()?;
        if !r.is_empty() {
            return Err(Error::CorruptState(
                "trailing bytes in window join state".into(),
            ));
        }
        Ok(())
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.late_records = self.late_records;
        m.partially_late = self.partially_late;
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

    type Op = WindowJoin<String, String, String, String>;
    type In = Either<(String, String), (String, String)>;

    fn op(kind: JoinKind, window: Window) -> Op {
        WindowJoin::new(
            kind,
            window,
            Arc::new(|k: &String, l: Option<&String>, r: Option<&String>, s, e| {
                let v = |v: Option<&String>| v.map_or("-".to_string(), String::clone);
                format!("{k}[{s},{e}):{}+{}", v(l), v(r))
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
    const TUMBLING: Window = Window::Tumbling { size_ms: 10 };

    #[test]
    fn session_windows_are_refused() {
        let f: WindowJoinFn<String, String, String, String> =
            Arc::new(|_, _, _, _, _| String::new());
        assert!(
            WindowJoin::new(JoinKind::Inner, Window::Session { gap_ms: 5 }, f.clone()).is_err()
        );
        assert!(WindowJoin::new(JoinKind::Inner, Window::Tumbling { size_ms: 0 }, f).is_err());
    }

    #[test]
    fn pairs_within_a_window_are_emitted_when_it_closes() {
        let mut j = op(JoinKind::Inner, TUMBLING);
        let mut out = Out::default();
        j.process(1, left("a", "l1"), &mut out);
        j.process(9, right("a", "r9"), &mut out);
        j.process(3, left("a", "l3"), &mut out);
        j.process(10, right("a", "r10"), &mut out); // the next window
        j.process(5, right("b", "rb"), &mut out);
        j.on_watermark(9, &mut out);
        assert!(out.0.is_empty());
        j.on_watermark(10, &mut out);
        assert_eq!(
            out.0,
            vec![
                (9, "a[0,10):l1+r9".to_string()),
                (9, "a[0,10):l3+r9".to_string())
            ]
        );
        out.0.clear();
        j.on_watermark(i64::MAX, &mut out);
        assert!(out.0.is_empty());
    }

    #[test]
    fn outer_kinds_emit_the_unmatched_side() {
        for (kind, want) in [
            (JoinKind::Left, vec!["a[0,10):l+-"]),
            (JoinKind::Right, vec!["b[0,10):-+r"]),
            (JoinKind::Full, vec!["a[0,10):l+-", "b[0,10):-+r"]),
        ] {
            let mut j = op(kind, TUMBLING);
            let mut out = Out::default();
            j.process(1, left("a", "l"), &mut out);
            j.process(2, right("b", "r"), &mut out);
            j.on_watermark(10, &mut out);
            let got: Vec<_> = out.0.iter().map(|(_, s)| s.as_str()).collect();
            assert_eq!(got, want, "{kind:?}");
        }
    }

    #[test]
    fn hopping_windows_and_late_elements() {
        let mut j = op(
            JoinKind::Inner,
            Window::Hopping {
                size_ms: 10,
                advance_ms: 5,
            },
        );
        let mut out = Out::default();
        j.process(7, left("a", "l7"), &mut out); // [0,10) and [5,15)
        j.process(12, right("a", "r12"), &mut out); // [5,15) and [10,20)
        j.on_watermark(10, &mut out);
        assert!(out.0.is_empty(), "[0,10) has no right element");
        j.process(8, right("a", "r8"), &mut out); // [0,10) is closed: late for it only
        j.process(3, right("a", "r3"), &mut out); // [0,10) and [-5,5): late
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        assert_eq!((m.late_records, m.partially_late), (1, 1));
        j.on_watermark(15, &mut out);
        assert_eq!(
            out.0,
            vec![
                (14, "a[5,15):l7+r12".to_string()),
                (14, "a[5,15):l7+r8".to_string())
            ]
        );
    }

    #[test]
    fn snapshot_round_trips_and_prefixes_fail() {
        let mut j = op(
            JoinKind::Full,
            Window::Hopping {
                size_ms: 10,
                advance_ms: 5,
            },
        );
        let mut out = Out::default();
        j.process(7, left("a", "l7"), &mut out);
        j.process(12, right("a", "r12"), &mut out);
        j.process(13, right("b", "r13"), &mut out);
        let mut state = Vec::new();
        j.on_checkpoint(&mut state);
        let mut k = op(
            JoinKind::Full,
            Window::Hopping {
                size_ms: 10,
                advance_ms: 5,
            },
        );
        k.on_restore(&state).unwrap();
        let finish = |o: &mut Op| {
            let mut c = Out::default();
            o.process(14, left("b", "l14"), &mut c);
            o.on_watermark(i64::MAX, &mut c);
            c.0
        };
        let (a, b) = (finish(&mut j), finish(&mut k));
        assert_eq!(a, b);
        assert!(!a.is_empty());
        for cut in 0..state.len() {
            let mut fresh = op(
                JoinKind::Full,
                Window::Hopping {
                    size_ms: 10,
                    advance_ms: 5,
                },
            );
            assert!(fresh.on_restore(&state[..cut]).is_err());
        }
    }
}
