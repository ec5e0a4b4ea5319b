//! Any bytes as a pipeline checkpoint (read back from disk at start), as the state of the stateful operators
//! inside one (every window kind, joins, tables, keyed process functions), and as stored record batches the
//! processor decodes: errors, never panics or huge allocations.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_processor::checkpoint::Checkpoint;
use millrace_processor::json_rec::Rec;
use std::time::Duration;

use millrace_processor::ops::{
    IntervalJoin, KeyedContext, KeyedProcess, KeyedProcessFunction, TableAggregate, TableJoin,
    TemporalJoin, WindowAggregate, WindowJoin,
};
use millrace_processor::source::for_each_record;
use millrace_processor::trigger::Trigger;
use millrace_processor::{Count, JoinKind, Message, Operator, OutRecord, TimeDomain, Window};

/// A keyed process function that keeps a value and does nothing else (its state is what is restored).
struct Keep;

impl KeyedProcessFunction<Bytes, Message> for Keep {
    type State = u64;
    type Out = ();
    fn process_element(
        &mut self,
        _: &Bytes,
        _: i64,
        _: Message,
        _: &mut KeyedContext<'_, Bytes, u64, ()>,
    ) {
    }
    fn on_timer(
        &mut self,
        _: &Bytes,
        _: i64,
        _: TimeDomain,
        _: &mut KeyedContext<'_, Bytes, u64, ()>,
    ) {
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::decode(data) {
        // A decodable checkpoint encodes back to the same bytes.
        assert_eq!(Checkpoint::decode(&c.encode()).ok(), Some(c));
    }
    let _ = for_each_record(&Bytes::copy_from_slice(data), 0, 0, |_| {});

    let mut t = TemporalJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Left, Arc::new(|_, _, _| ()));
    let _ = t.on_restore(data);
    if let Ok(mut i) =
        IntervalJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Full, 0, 10, Arc::new(|_, _, _| ()))
    {
        let _ = i.on_restore(data);
    }
    let mut tt = TableJoin::<Bytes, Rec, Rec, ()>::new(JoinKind::Full, Arc::new(|_, _, _| ()));
    let _ = tt.on_restore(data);
    let mut a = TableAggregate::<Bytes, Rec, Count>::new(Arc::new(Count));
    let _ = a.on_restore(data);

    let d = Duration::from_millis;
    for window in [
        Window::tumbling(d(1_000)),
        Window::session(d(500)),
        Window::sliding(d(500)),
        Window::global(Trigger::count(3)),
    ] {
        let late = Arc::new(|_: &Bytes, _: &Rec, ts| OutRecord::new(None, None, ts));
        let mut w = WindowAggregate::<Bytes, Rec, Count>::new(window, 0, Arc::new(Count), late);
        let _ = w.on_restore(data);
    }
    let wj = WindowJoin::<Bytes, Rec, Rec, ()>::new(
        JoinKind::Full,
        Window::tumbling(d(1_000)),
        Arc::new(|_, _, _, _, _| ()),
    );
    if let Ok(mut wj) = wj {
        let _ = wj.on_restore(data);
    }
    let mut kp = KeyedProcess::new(Keep);
    let _ = <KeyedProcess<Bytes, Message, Keep> as Operator<(Bytes, Message)>>::on_restore(
        &mut kp, data,
    );
});
