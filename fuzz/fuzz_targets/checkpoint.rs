//! Any bytes as a pipeline checkpoint (read back from disk at start), as the state of the stateful operators
//! inside one (windows, joins, tables), and as stored record batches the processor decodes: errors, never
//! panics or huge allocations.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_processor::checkpoint::Checkpoint;
use millrace_processor::json_rec::Rec;
use millrace_processor::ops::{IntervalJoin, TableAggregate, TableJoin, TemporalJoin};
use millrace_processor::source::for_each_record;
use millrace_processor::{Count, JoinKind, Operator};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::decode(data) {
        // A decodable checkpoint encodes back to the same bytes.
        assert_eq!(Checkpoint::decode(&c.encode()).ok(), Some(c));
    }
    let _ = for_each_record(&Bytes::copy_from_slice(data), 0, 0, |_| {});

    let mut t = TemporalJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Left, Arc::new(|_, _, _| ()));
    let _ = t.on_restore(data);
    if let Ok(mut i) = IntervalJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Full, 0, 10, Arc::new(|_, _, _| ())) {
        let _ = i.on_restore(data);
    }
    let mut tt = TableJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Full, Arc::new(|_, _, _| ()));
    let _ = tt.on_restore(data);
    let mut a = TableAggregate::<Bytes, Rec, Count>::new(Arc::new(Count));
    let _ = a.on_restore(data);
});
