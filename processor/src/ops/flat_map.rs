//! `flat_map`: zero or more elements out per element in, all with the input's event time.

use crate::operator::{Collector, Operator};

pub struct FlatMap<F>(pub F);

impl<In, Out, I, F> Operator<In> for FlatMap<F>
where
    I: IntoIterator<Item = Out>,
    F: FnMut(In) -> I + Send,
{
    type Out = Out;
    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<Out>) {
        for x in (self.0)(item) {
            out.emit(timestamp, x);
        }
    }
}
