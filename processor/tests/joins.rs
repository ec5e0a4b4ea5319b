//! Property tests of the join operators: for random records of a few keys, delivered in random orders whose
//! disorder stays below a bound `D` with the watermark fed after each element as (largest time seen - D),
//! every join's output equals a nested-loop reference join over the same records; a run that is
//! checkpointed and restored into a fresh operator midway emits exactly what an uninterrupted one does; and
//! damaged state bytes are refused without a panic.
//!
//! Disorder: element `e` may arrive after `f` only if `e.ts >= f.ts - D`, so every element arrives at or
//! after the watermark that precedes it: the runtime's contract (after `on_watermark(w)`, elements at `w`
//! may still come, none earlier), boundary included. Records are ordered by `ts + jitter` with jitter in
//! `[0, D]`, which guarantees exactly that.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use millrace_processor::{
    Collector, Either, IntervalJoin, JoinKind, Operator, OperatorMetrics, OutRecord, TableJoin,
    TemporalJoin, Window, WindowJoin,
};
use proptest::prelude::*;

/// Collects what an operator emits.
struct Sink<T>(Vec<(i64, T)>);

impl<T> Collector<T> for Sink<T> {
    fn emit(&mut self, timestamp: i64, item: T) {
        self.0.push((timestamp, item));
    }
    fn late(&mut self, _record: OutRecord) {
        panic!("joins send nothing to the late topic");
    }
}

/// What the runtime does to an operator: an element, or a watermark.
#[derive(Debug, Clone)]
enum Step<In> {
    Element(i64, In),
    Watermark(i64),
}

/// The arrival order of `records` (by `ts + jitter`), each followed by the watermark, then `i64::MAX`.
fn schedule<In: Clone>(records: &[(i64, In)], jitter: &[i64], d: i64) -> Vec<Step<In>> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| records[i].0 + jitter[i % jitter.len()]);
    let mut steps = Vec::new();
    let mut max_ts = i64::MIN;
    for i in order {
        let (ts, item) = records[i].clone();
        max_ts = max_ts.max(ts);
        steps.push(Step::Element(ts, item));
        steps.push(Step::Watermark(max_ts - d));
    }
    steps.push(Step::Watermark(i64::MAX));
    steps
}

fn run<In: Clone, Op: Operator<In>>(op: &mut Op, steps: &[Step<In>], out: &mut Sink<Op::Out>) {
    for s in steps {
        match s {
            Step::Element(ts, item) => op.process(*ts, item.clone(), out),
            Step::Watermark(w) => op.on_watermark(*w, out),
        }
    }
}

/// Runs every step; returns the output and the state entries left.
fn run_all<In: Clone, Op: Operator<In>>(
    mut op: Op,
    steps: &[Step<In>],
) -> (Vec<(i64, Op::Out)>, u64) {
    let mut out = Sink(Vec::new());
    run(&mut op, steps, &mut out);
    let mut m = OperatorMetrics::default();
    op.report(&mut m);
    assert_eq!(m.late_records, 0, "the schedule delivers nothing late");
    (out.0, m.state_entries)
}

/// Runs `steps[..cut]` on one operator, snapshots it, restores into a fresh one and runs the rest there.
fn run_restored<In: Clone, Op: Operator<In>>(
    make: impl Fn() -> Op,
    steps: &[Step<In>],
    cut: usize,
) -> Vec<(i64, Op::Out)> {
    let cut = cut.min(steps.len());
    let mut out = Sink(Vec::new());
    let mut first = make();
    run(&mut first, &steps[..cut], &mut out);
    let mut state = Vec::new();
    first.on_checkpoint(&mut state);
    drop(first);
    let mut second = make();
    second.on_restore(&state).unwrap();
    run(&mut second, &steps[cut..], &mut out);
    out.0
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn kinds() -> impl Strategy<Value = JoinKind> {
    prop_oneof![
        Just(JoinKind::Inner),
        Just(JoinKind::Left),
        Just(JoinKind::Right),
        Just(JoinKind::Full),
    ]
}

/// Raw records: (is_left, key, ts); the record's index is its value (so every output names its inputs).
type Raw = Vec<(bool, u64, i64)>;

/// Up to 40 records of 3 keys at times 0..50, a disorder bound and a jitter per record.
fn records() -> impl Strategy<Value = (Raw, i64, Vec<i64>)> {
    (0i64..10).prop_flat_map(|d| {
        (
            proptest::collection::vec((any::<bool>(), 0u64..3, 0i64..50), 0..40),
            Just(d),
            proptest::collection::vec(0..=d, 40),
        )
    })
}

// ---- temporal join ----

type TemporalIn = Either<(u64, u64), (u64, Option<u64>)>;
type TemporalOut = (u64, u64, Option<u64>);

fn temporal(kind: JoinKind) -> TemporalJoin<u64, u64, u64, TemporalOut> {
    TemporalJoin::new(
        kind,
        Arc::new(|k: &u64, l: u64, v: Option<&u64>| (*k, l, v.copied())),
    )
}

/// Left records are probes, right ones versions (every third a tombstone). Equal version times of one key
/// are left out: the operator lets the later arrival win, which the reference cannot know.
fn temporal_records(raw: &Raw) -> Vec<(i64, TemporalIn)> {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    for (i, &(left, key, ts)) in raw.iter().enumerate() {
        let id = i as u64;
        if left {
            v.push((ts, Either::Left((key, id))));
        } else if seen.insert((key, ts)) {
            let row = (!id.is_multiple_of(3)).then_some(id);
            v.push((ts, Either::Right((key, row))));
        }
    }
    v
}

fn temporal_reference(kind: JoinKind, records: &[(i64, TemporalIn)]) -> Vec<(i64, TemporalOut)> {
    let mut out = Vec::new();
    for (t, r) in records {
        let Either::Left((k, l)) = r else { continue };
        let version = records
            .iter()
            .filter_map(|(vt, r)| match r {
                Either::Right((vk, row)) if vk == k && vt <= t => Some((*vt, *row)),
                _ => None,
            })
            .max_by_key(|&(vt, _)| vt);
        let row = version.and_then(|(_, row)| row);
        if row.is_some() || kind == JoinKind::Left {
            out.push((*t, (*k, *l, row)));
        }
    }
    out
}

// ---- interval join ----

type StreamIn = Either<(u64, u64), (u64, u64)>;
type IntervalOut = (u64, Option<u64>, Option<u64>);

fn interval(kind: JoinKind, lower: i64, upper: i64) -> IntervalJoin<u64, u64, u64, IntervalOut> {
    IntervalJoin::new(
        kind,
        lower,
        upper,
        Arc::new(|k: &u64, l: Option<&u64>, r: Option<&u64>| (*k, l.copied(), r.copied())),
    )
    .unwrap()
}

fn stream_records(raw: &Raw) -> Vec<(i64, StreamIn)> {
    raw.iter()
        .enumerate()
        .map(|(i, &(left, key, ts))| {
            let id = i as u64;
            let item = if left {
                Either::Left((key, id))
            } else {
                Either::Right((key, id))
            };
            (ts, item)
        })
        .collect()
}

/// A stream element as the references see it: (ts, key, value).
type Flat = (i64, u64, u64);

fn sides(records: &[(i64, StreamIn)]) -> (Vec<Flat>, Vec<Flat>) {
    let (mut ls, mut rs) = (Vec::new(), Vec::new());
    for (ts, r) in records {
        match r {
            Either::Left((k, v)) => ls.push((*ts, *k, *v)),
            Either::Right((k, v)) => rs.push((*ts, *k, *v)),
        }
    }
    (ls, rs)
}

fn interval_reference(
    kind: JoinKind,
    lower: i64,
    upper: i64,
    records: &[(i64, StreamIn)],
) -> Vec<(i64, IntervalOut)> {
    let (ls, rs) = sides(records);
    let joins = |l: &Flat, r: &Flat| l.1 == r.1 && l.0 + lower <= r.0 && r.0 <= l.0 + upper;
    let mut out = Vec::new();
    for l in &ls {
        for r in &rs {
            if joins(l, r) {
                out.push((l.0.max(r.0), (l.1, Some(l.2), Some(r.2))));
            }
        }
    }
    if kind.keeps_left() {
        for l in ls.iter().filter(|l| !rs.iter().any(|r| joins(l, r))) {
            out.push((l.0, (l.1, Some(l.2), None)));
        }
    }
    if kind.keeps_right() {
        for r in rs.iter().filter(|r| !ls.iter().any(|l| joins(l, r))) {
            out.push((r.0, (r.1, None, Some(r.2))));
        }
    }
    out
}

// ---- window join ----

type WindowOut = (u64, Option<u64>, Option<u64>, i64, i64);

fn window_join(kind: JoinKind, w: Window) -> WindowJoin<u64, u64, u64, WindowOut> {
    WindowJoin::new(
        kind,
        w,
        Arc::new(|k: &u64, l: Option<&u64>, r: Option<&u64>, s, e| {
            (*k, l.copied(), r.copied(), s, e)
        }),
    )
    .unwrap()
}

fn windows() -> impl Strategy<Value = Window> {
    prop_oneof![
        (1i64..15).prop_map(|size_ms| Window::Tumbling { size_ms }),
        (1i64..15)
            .prop_flat_map(|size| (Just(size), 1..=size))
            .prop_map(|(size_ms, advance_ms)| Window::Hopping {
                size_ms,
                advance_ms
            }),
    ]
}

fn window_reference(
    kind: JoinKind,
    w: Window,
    records: &[(i64, StreamIn)],
) -> Vec<(i64, WindowOut)> {
    // (key, start, end) -> (lefts, rights)
    type Cells = BTreeMap<(u64, i64, i64), (Vec<u64>, Vec<u64>)>;
    let mut cells = Cells::new();
    for (ts, r) in records {
        w.assign(*ts, |s, e| {
            let (k, left, v) = match r {
                Either::Left((k, v)) => (*k, true, *v),
                Either::Right((k, v)) => (*k, false, *v),
            };
            let cell = cells.entry((k, s, e)).or_default();
            if left {
                cell.0.push(v)
            } else {
                cell.1.push(v)
            }
        });
    }
    let mut out = Vec::new();
    for ((k, s, e), (ls, rs)) in cells {
        for l in &ls {
            for r in &rs {
                out.push((e - 1, (k, Some(*l), Some(*r), s, e)));
            }
        }
        if rs.is_empty() && kind.keeps_left() {
            out.extend(ls.iter().map(|l| (e - 1, (k, Some(*l), None, s, e))));
        }
        if ls.is_empty() && kind.keeps_right() {
            out.extend(rs.iter().map(|r| (e - 1, (k, None, Some(*r), s, e))));
        }
    }
    out
}

// ---- table join ----

type TableIn = Either<(u64, Option<u64>), (u64, Option<u64>)>;
type TableOut = (Option<u64>, Option<u64>);

fn table(kind: JoinKind) -> TableJoin<u64, u64, u64, TableOut> {
    TableJoin::new(
        kind,
        Arc::new(|_k: &u64, a: Option<&u64>, b: Option<&u64>| (a.copied(), b.copied())),
    )
}

/// Changes in arrival order (a changelog is ordered by offset); every fourth is a tombstone.
fn table_records(raw: &Raw) -> Vec<(i64, TableIn)> {
    raw.iter()
        .enumerate()
        .map(|(i, &(left, key, ts))| {
            let id = i as u64;
            let v = (!id.is_multiple_of(4)).then_some(id);
            let item = if left {
                Either::Left((key, v))
            } else {
                Either::Right((key, v))
            };
            (ts, item)
        })
        .collect()
}

fn table_steps(records: &[(i64, TableIn)]) -> Vec<Step<TableIn>> {
    records
        .iter()
        .flat_map(|(ts, r)| [Step::Element(*ts, r.clone()), Step::Watermark(*ts - 5)])
        .collect()
}

/// The joined table after every change: the latest value of each side per key, joined.
fn table_reference(kind: JoinKind, records: &[(i64, TableIn)]) -> BTreeMap<u64, TableOut> {
    let mut latest: BTreeMap<u64, TableOut> = BTreeMap::new();
    for (_, r) in records {
        match r {
            Either::Left((k, a)) => latest.entry(*k).or_default().0 = *a,
            Either::Right((k, b)) => latest.entry(*k).or_default().1 = *b,
        }
    }
    latest
        .into_iter()
        .filter(|(_, (a, b))| match kind {
            JoinKind::Inner => a.is_some() && b.is_some(),
            JoinKind::Left => a.is_some(),
            JoinKind::Right => b.is_some(),
            JoinKind::Full => a.is_some() || b.is_some(),
        })
        .collect()
}

/// Applies a changelog to a table, checking that every tombstone deletes a row that exists.
fn apply(changes: &[(i64, (u64, Option<TableOut>))]) -> BTreeMap<u64, TableOut> {
    let mut t = BTreeMap::new();
    for (_, (k, v)) in changes {
        match v {
            Some(v) => {
                t.insert(*k, *v);
            }
            None => assert!(
                t.remove(k).is_some(),
                "a tombstone for a row that never was"
            ),
        }
    }
    t
}

/// Feeds `state` to `op`'s restore; if it is accepted, running on must not panic either.
fn restore_garbage<In: Clone, Op: Operator<In>>(
    mut op: Op,
    state: &[u8],
    steps: &[Step<In>],
) -> bool {
    match op.on_restore(state) {
        Ok(()) => {
            run(&mut op, steps, &mut Sink(Vec::new()));
            true
        }
        Err(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn temporal_join_matches_the_reference((raw, d, jitter) in records(), left in any::<bool>()) {
        let kind = if left { JoinKind::Left } else { JoinKind::Inner };
        let recs = temporal_records(&raw);
        let steps = schedule(&recs, &jitter, d);
        let (got, _) = run_all(temporal(kind), &steps);
        // Without late probes, results come out in event-time order.
        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
        prop_assert_eq!(sorted(got), sorted(temporal_reference(kind, &recs)));
    }

    #[test]
    fn interval_join_matches_the_reference((raw, d, jitter) in records(), kind in kinds(),
                                           lower in -12i64..12, width in 0i64..12) {
        let upper = lower + width;
        let recs = stream_records(&raw);
        let steps = schedule(&recs, &jitter, d);
        let (got, left) = run_all(interval(kind, lower, upper), &steps);
        prop_assert_eq!(left, 0, "the final watermark expires everything");
        prop_assert_eq!(sorted(got), sorted(interval_reference(kind, lower, upper, &recs)));
    }

    #[test]
    fn window_join_matches_the_reference((raw, d, jitter) in records(), kind in kinds(), w in windows()) {
        let recs = stream_records(&raw);
        let steps = schedule(&recs, &jitter, d);
        let (got, left) = run_all(window_join(kind, w), &steps);
        prop_assert_eq!(left, 0, "the final watermark closes every window");
        prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
        prop_assert_eq!(sorted(got), sorted(window_reference(kind, w, &recs)));
    }

    #[test]
    fn table_join_ends_in_the_joined_table((raw, _d, _jitter) in records(), kind in kinds()) {
        let recs = table_records(&raw);
        let mut op = table(kind);
        let mut out = Sink(Vec::new());
        run(&mut op, &table_steps(&recs), &mut out);
        prop_assert_eq!(apply(&out.0), table_reference(kind, &recs));
        let mut m = OperatorMetrics::default();
        op.report(&mut m);
        let keys: HashSet<u64> = raw.iter().map(|r| r.1).collect();
        prop_assert!(m.state_entries <= keys.len() as u64);
    }

    #[test]
    fn restored_runs_emit_what_uninterrupted_ones_do((raw, d, jitter) in records(), kind in kinds(),
                                                     w in windows(), lower in -12i64..12,
                                                     width in 0i64..12, cut in 0usize..100) {
        let tk = if kind == JoinKind::Inner { JoinKind::Inner } else { JoinKind::Left };
        let recs = temporal_records(&raw);
        let steps = schedule(&recs, &jitter, d);
        prop_assert_eq!(run_restored(|| temporal(tk), &steps, cut), run_all(temporal(tk), &steps).0);

        let recs = stream_records(&raw);
        let steps = schedule(&recs, &jitter, d);
        let upper = lower + width;
        prop_assert_eq!(
            run_restored(|| interval(kind, lower, upper), &steps, cut),
            run_all(interval(kind, lower, upper), &steps).0
        );
        prop_assert_eq!(
            run_restored(|| window_join(kind, w), &steps, cut),
            run_all(window_join(kind, w), &steps).0
        );

        let recs = table_records(&raw);
        let steps = table_steps(&recs);
        let mut whole = Sink(Vec::new());
        run(&mut table(kind), &steps, &mut whole);
        prop_assert_eq!(run_restored(|| table(kind), &steps, cut), whole.0);
    }

    #[test]
    fn garbage_state_is_refused_without_panic(data in proptest::collection::vec(any::<u8>(), 0..200),
                                              (raw, d, jitter) in records()) {
        let t = schedule(&temporal_records(&raw), &jitter, d);
        let s = schedule(&stream_records(&raw), &jitter, d);
        let c = table_steps(&table_records(&raw));
        let w = Window::Hopping { size_ms: 10, advance_ms: 3 };
        let accepted = [
            restore_garbage(temporal(JoinKind::Left), &data, &t),
            restore_garbage(interval(JoinKind::Full, -3, 4), &data, &s),
            restore_garbage(window_join(JoinKind::Full, w), &data, &s),
            restore_garbage(table(JoinKind::Full), &data, &c),
        ];
        // Every snapshot starts with its format version, 1 (or 2 for the temporal join, whose table moved to
        // keyed state); anything else is refused, but empty bytes, which are an empty table join.
        let first = data.first().copied();
        if first != Some(1) {
            prop_assert!(!accepted[1] && !accepted[2]);
            prop_assert!(!accepted[3] || data.is_empty());
        }
        if !matches!(first, Some(1 | 2)) {
            prop_assert!(!accepted[0]);
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_without_panic((raw, d, jitter) in records(), cut in 0usize..100,
                                                   flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        // Real snapshots taken midway, truncated (always refused) or with bytes changed (refused, or accepted
        // and then run on, without a panic either way).
        fn check<In: Clone, Op: Operator<In>>(make: impl Fn() -> Op, steps: &[Step<In>], cut: usize,
                                              flips: &[(usize, u8)]) -> Result<(), TestCaseError> {
            let mut op = make();
            run(&mut op, &steps[..cut.min(steps.len())], &mut Sink(Vec::new()));
            let mut state = Vec::new();
            op.on_checkpoint(&mut state);
            // (Not the empty prefix: empty bytes are an empty table join.)
            for n in 1..state.len() {
                prop_assert!(make().on_restore(&state[..n]).is_err());
            }
            if state.is_empty() {
                return Ok(()); // an empty table join: nothing to damage
            }
            let mut damaged = state.clone();
            for &(at, b) in flips {
                let i = at % damaged.len();
                damaged[i] = b;
            }
            restore_garbage(make(), &damaged, steps);
            Ok(())
        }
        let t = schedule(&temporal_records(&raw), &jitter, d);
        let s = schedule(&stream_records(&raw), &jitter, d);
        let c = table_steps(&table_records(&raw));
        let w = Window::Hopping { size_ms: 10, advance_ms: 3 };
        check(|| temporal(JoinKind::Left), &t, cut, &flips)?;
        check(|| interval(JoinKind::Full, -3, 4), &s, cut, &flips)?;
        check(|| window_join(JoinKind::Full, w), &s, cut, &flips)?;
        check(|| table(JoinKind::Full), &c, cut, &flips)?;
    }
}

#[test]
fn message_values_can_be_joined() {
    // Messages as both sides of an interval join, so whole records can be buffered in state.
    use millrace_processor::Message;
    let f: millrace_processor::ops::interval_join::IntervalJoinFn<u64, Message, Message, String> =
        Arc::new(|_k, l, r| {
            let v = |m: Option<&Message>| {
                m.and_then(|m| m.value.as_deref())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            format!("{}+{}", v(l), v(r))
        });
    let mut j = IntervalJoin::new(JoinKind::Inner, 0, 10, f).unwrap();
    let mut out = Sink(Vec::new());
    j.process(
        1,
        Either::Left((1, Message::new(None, Some(&b"click"[..]), 1))),
        &mut out,
    );
    let mut state = Vec::new();
    j.on_checkpoint(&mut state);
    let f2: millrace_processor::ops::interval_join::IntervalJoinFn<u64, Message, Message, String> =
        Arc::new(|_k, _l, _r| "restored".to_string());
    let mut k = IntervalJoin::new(JoinKind::Inner, 0, 10, f2).unwrap();
    k.on_restore(&state).unwrap();
    j.process(
        5,
        Either::Right((1, Message::new(None, Some(&b"buy"[..]), 5))),
        &mut out,
    );
    k.process(
        5,
        Either::Right((1, Message::new(None, Some(&b"buy"[..]), 5))),
        &mut out,
    );
    assert_eq!(
        out.0,
        vec![(5, "click+buy".to_string()), (5, "restored".to_string())]
    );
}
