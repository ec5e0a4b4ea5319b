//! The table-table join (Kafka Streams' KTable-KTable join): two changelogs, per key (`None` is a tombstone),
//! joined into a changelog of the joined table.
//!
//! - The latest value of each side is kept per key; changes apply in arrival order (a changelog's order is
//!   its offsets, not its event times, so the watermark plays no part and nothing is late).
//! - On every change the joined value is recomputed: it exists when [`JoinKind::Inner`]: both sides are
//!   present; `Left`: the left one is; `Right`: the right one is; `Full`: either is. Then
//!   `(k, Some(f(k, a, b)))` is emitted when it exists, `(k, None)` (a tombstone) when it existed before the
//!   change and no longer does, and nothing when it existed neither before nor after. Always with the
//!   changing element's timestamp. (A change that leaves the joined value equal is still emitted: values
//!   need not be comparable.)
//!
//! The rows are [`KeyedState`]: checkpoints write the keys that changed, and on the disk backend both tables
//! may be larger than memory. (Snapshots of version 1, the whole map, are what an unbound keyed state
//! writes, so they still restore.)
//!
//! Invariant: every key held has at least one side present (a key both of whose sides are deleted is
//! forgotten).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::join::{Either, JoinKind};
use crate::keyed_state::KeyedState;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::state::{Key, StateCodec, StateReader, StateWriter};

/// Builds the joined value from the key and the current value of each side.
pub type TableJoinFn<K, A, B, O> = Arc<dyn Fn(&K, Option<&A>, Option<&B>) -> O + Send + Sync>;

/// The current row of both tables for one key.
pub struct Row<A, B> {
    left: Option<A>,
    right: Option<B>,
}

impl<A: StateCodec, B: StateCodec> StateCodec for Row<A, B> {
    fn encode(&self, w: &mut StateWriter) {
        self.left.encode(w);
        self.right.encode(w);
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let row = Row {
            left: Option::<A>::decode(r)?,
            right: Option::<B>::decode(r)?,
        };
        if row.left.is_none() && row.right.is_none() {
            return Err(Error::CorruptState("table join: an empty row".into()));
        }
        Ok(row)
    }
}

pub struct TableJoin<K, A, B, O> {
    kind: JoinKind,
    f: TableJoinFn<K, A, B, O>,
    rows: KeyedState<K, Row<A, B>>,
}

impl<K: Key, A, B, O> TableJoin<K, A, B, O> {
    pub fn new(kind: JoinKind, f: TableJoinFn<K, A, B, O>) -> Self {
        TableJoin {
            kind,
            f,
            rows: KeyedState::new(),
        }
    }
}

/// Whether the joined table has a row for a key whose two sides are `row`.
fn joined<A, B>(kind: JoinKind, row: &Row<A, B>) -> bool {
    let (l, r) = (row.left.is_some(), row.right.is_some());
    match kind {
        JoinKind::Inner => l && r,
        JoinKind::Left => l,
        JoinKind::Right => r,
        JoinKind::Full => l || r,
    }
}

impl<K, A, B, O> Operator<Either<(K, Option<A>), (K, Option<B>)>> for TableJoin<K, A, B, O>
where
    K: Key,
    A: StateCodec + Send,
    B: StateCodec + Send,
{
    type Out = (K, Option<O>);

    fn process(
        &mut self,
        timestamp: i64,
        item: Either<(K, Option<A>), (K, Option<B>)>,
        out: &mut dyn Collector<Self::Out>,
    ) {
        // Which side changes, to what.
        let (key, change) = match item {
            Either::Left((key, a)) => (key, Either::Left(a)),
            Either::Right((key, b)) => (key, Either::Right(b)),
        };
        let kind = self.kind;
        let before = match self.rows.get(&key) {
            Some(row) => joined(kind, row),
            None => {
                if matches!(change, Either::Left(None) | Either::Right(None)) {
                    return; // deleting what never was: nothing before, nothing after
                }
                false
            }
        };
        let row = self.rows.get_or_insert_with(key.clone(), || Row {
            left: None,
            right: None,
        });
        match change {
            Either::Left(a) => row.left = a,
            Either::Right(b) => row.right = b,
        }
        if joined(kind, row) {
            let o = (self.f)(&key, row.left.as_ref(), row.right.as_ref());
            out.emit(timestamp, (key, Some(o)));
        } else {
            if row.left.is_none() && row.right.is_none() {
                self.rows.remove(&key);
            }
            if before {
                out.emit(timestamp, (key, None));
            }
        }
    }

    fn on_start(&mut self, task: &TaskInfo) {
        self.rows.bind(task);
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        self.rows.checkpoint(state);
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        self.rows.restore(state)
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.state_entries = self.rows.resident() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutRecord;

    type Change = (i64, (String, Option<String>));

    #[derive(Default)]
    struct Out(Vec<Change>);
    impl Collector<(String, Option<String>)> for Out {
        fn emit(&mut self, timestamp: i64, item: (String, Option<String>)) {
            self.0.push((timestamp, item));
        }
        fn late(&mut self, _record: OutRecord) {}
    }

    type Op = TableJoin<String, String, String, String>;
    type In = Either<(String, Option<String>), (String, Option<String>)>;

    fn op(kind: JoinKind) -> Op {
        TableJoin::new(
            kind,
            Arc::new(|_k: &String, a: Option<&String>, b: Option<&String>| {
                let v = |v: Option<&String>| v.map_or("-".to_string(), String::clone);
                format!("{}+{}", v(a), v(b))
            }),
        )
    }
    fn left(k: &str, v: Option<&str>) -> In {
        Either::Left((k.into(), v.map(str::to_string)))
    }
    fn right(k: &str, v: Option<&str>) -> In {
        Either::Right((k.into(), v.map(str::to_string)))
    }
    fn ch(ts: i64, k: &str, v: Option<&str>) -> Change {
        (ts, (k.to_string(), v.map(str::to_string)))
    }

    #[test]
    fn inner_emits_changes_and_tombstones() {
        let mut j = op(JoinKind::Inner);
        let mut out = Out::default();
        j.process(1, left("a", Some("a1")), &mut out);
        j.process(2, right("a", Some("b1")), &mut out);
        j.process(3, left("a", Some("a2")), &mut out);
        j.process(4, right("a", None), &mut out);
        j.process(5, left("a", None), &mut out);
        j.process(6, right("x", None), &mut out);
        assert_eq!(
            out.0,
            vec![
                ch(2, "a", Some("a1+b1")),
                ch(3, "a", Some("a2+b1")),
                ch(4, "a", None)
            ]
        );
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        assert_eq!(m.state_entries, 0);
    }

    #[test]
    fn outer_kinds_keep_their_side() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(1, right("a", Some("b")), &mut out);
        j.process(2, left("a", Some("a")), &mut out);
        j.process(3, right("a", None), &mut out);
        j.process(4, left("a", None), &mut out);
        assert_eq!(
            out.0,
            vec![
                ch(2, "a", Some("a+b")),
                ch(3, "a", Some("a+-")),
                ch(4, "a", None)
            ]
        );
        let mut j = op(JoinKind::Full);
        let mut out = Out::default();
        j.process(1, right("a", Some("b")), &mut out);
        j.process(2, right("a", None), &mut out);
        j.process(3, left("a", None), &mut out);
        assert_eq!(out.0, vec![ch(1, "a", Some("-+b")), ch(2, "a", None)]);
        let mut j = op(JoinKind::Right);
        let mut out = Out::default();
        j.process(1, left("a", Some("a")), &mut out);
        j.process(2, right("a", Some("b")), &mut out);
        j.process(3, left("a", None), &mut out);
        assert_eq!(
            out.0,
            vec![ch(2, "a", Some("a+b")), ch(3, "a", Some("-+b"))]
        );
    }

    #[test]
    fn snapshot_round_trips_and_prefixes_fail() {
        let mut j = op(JoinKind::Full);
        let mut out = Out::default();
        j.process(1, left("a", Some("a")), &mut out);
        j.process(2, right("b", Some("b")), &mut out);
        let mut state = Vec::new();
        j.on_checkpoint(&mut state);
        let mut k = op(JoinKind::Full);
        k.on_restore(&state).unwrap();
        let finish = |o: &mut Op| {
            let mut c = Out::default();
            o.process(3, right("a", Some("x")), &mut c);
            o.process(4, right("b", None), &mut c);
            c.0
        };
        assert_eq!(finish(&mut j), finish(&mut k));
        for cut in 1..state.len() {
            assert!(op(JoinKind::Full).on_restore(&state[..cut]).is_err());
        }
    }
}
