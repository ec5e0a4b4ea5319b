//! A stream aggregated into a table, without a window (Kafka Streams' `groupByKey().aggregate()` into a
//! KTable): one accumulator per key, and after every element the key's new value is emitted as a change
//! `(key, Some(value))` with the element's event time.
//!
//! The accumulators are [`KeyedState`]: checkpoints write only the keys changed since the previous one, and
//! on the disk backend the table may be larger than memory.
//!
//! Invariant: `accs` holds exactly the keys seen (a table from a stream never deletes; a later step may
//! filter values into tombstones).

use std::sync::Arc;

use crate::aggregate::Aggregator;
use crate::error::Result;
use crate::keyed_state::KeyedState;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::state::Key;

pub struct TableAggregate<K, T, A: Aggregator<T>> {
    agg: Arc<A>,
    accs: KeyedState<K, A::Acc>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<K, T, A: Aggregator<T>> TableAggregate<K, T, A> {
    pub fn new(agg: Arc<A>) -> Self {
        TableAggregate {
            agg,
            accs: KeyedState::new(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<K: Key, T, A: Aggregator<T>> Operator<(K, T)> for TableAggregate<K, T, A> {
    type Out = (K, Option<A::Out>);

    fn on_start(&mut self, task: &TaskInfo) {
        self.accs.bind(task);
    }

    fn process(&mut self, timestamp: i64, (key, item): (K, T), out: &mut dyn Collector<Self::Out>) {
        let agg = &self.agg;
        let acc = self.accs.get_or_insert_with(key.clone(), || agg.init());
        agg.add(acc, &item);
        let value = agg.finish(acc);
        out.emit(timestamp, (key, Some(value)));
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        self.accs.checkpoint(state);
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        self.accs.restore(state)
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.state_entries += self.accs.resident() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;
    use crate::record::OutRecord;

    struct Vec2(Vec<(i64, (String, Option<u64>))>);
    impl Collector<(String, Option<u64>)> for Vec2 {
        fn emit(&mut self, ts: i64, item: (String, Option<u64>)) {
            self.0.push((ts, item));
        }
        fn late(&mut self, _r: OutRecord) {}
    }

    #[test]
    fn emits_every_change_and_restores() {
        let mut op = TableAggregate::<String, (), Count>::new(Arc::new(Count));
        let mut out = Vec2(Vec::new());
        op.process(1, ("a".into(), ()), &mut out);
        op.process(2, ("a".into(), ()), &mut out);
        op.process(3, ("b".into(), ()), &mut out);
        assert_eq!(
            out.0,
            vec![
                (1, ("a".into(), Some(1))),
                (2, ("a".into(), Some(2))),
                (3, ("b".into(), Some(1)))
            ]
        );
        let mut snap = Vec::new();
        op.on_checkpoint(&mut snap);
        let mut back = TableAggregate::<String, (), Count>::new(Arc::new(Count));
        back.on_restore(&snap).unwrap();
        let mut out = Vec2(Vec::new());
        back.process(4, ("a".into(), ()), &mut out);
        assert_eq!(out.0, vec![(4, ("a".into(), Some(3)))]);
        assert!(back.on_restore(&snap[..snap.len() - 1]).is_err());
    }
}
