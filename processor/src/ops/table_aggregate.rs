//! A stream aggregated into a table, without a window (Kafka Streams' `groupByKey().aggregate()` into a
//! KTable): one accumulator per key, and after every element the key's new value is emitted as a change
//! `(key, Some(value))` with the element's event time.
//!
//! Invariant: `accs` holds exactly the keys seen since the last restore or start (a table from a stream never
//! deletes; a later step may filter values into tombstones).

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator};
use crate::state::{Key, StateCodec, StateReader, StateWriter};

pub struct TableAggregate<K, T, A: Aggregator<T>> {
    agg: Arc<A>,
    accs: HashMap<K, A::Acc>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<K, T, A: Aggregator<T>> TableAggregate<K, T, A> {
    pub fn new(agg: Arc<A>) -> Self {
        TableAggregate {
            agg,
            accs: HashMap::new(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<K: Key, T, A: Aggregator<T>> Operator<(K, T)> for TableAggregate<K, T, A> {
    type Out = (K, Option<A::Out>);

    fn process(&mut self, timestamp: i64, (key, item): (K, T), out: &mut dyn Collector<Self::Out>) {
        let acc = match self.accs.get_mut(&key) {
            Some(acc) => acc,
            None => self
                .accs
                .entry(key.clone())
                .or_insert_with(|| self.agg.init()),
        };
        self.agg.add(acc, &item);
        let value = self.agg.finish(acc);
        out.emit(timestamp, (key, Some(value)));
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        if self.accs.is_empty() {
            return;
        }
        let mut w = StateWriter {
            buf: std::mem::take(state),
        };
        w.u8(1);
        w.u32(self.accs.len() as u32);
        for (k, acc) in &self.accs {
            k.encode(&mut w);
            acc.encode(&mut w);
        }
        *state = w.buf;
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if version != 1 {
            return Err(Error::CorruptState(format!(
                "table aggregate state version {version}"
            )));
        }
        for _ in 0..r.count(1)? {
            let k = K::decode(&mut r)?;
            let acc = A::Acc::decode(&mut r)?;
            self.accs.insert(k, acc);
        }
        if !r.is_empty() {
            return Err(Error::CorruptState("trailing bytes".into()));
        }
        Ok(())
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.state_entries += self.accs.len() as u64;
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
