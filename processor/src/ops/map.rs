//! `map`: one element in, one out; the event time is kept.

use crate::operator::{Collector, Operator};

pub struct Map<F>(pub F);

impl<In, Out, F: FnMut(In) -> Out + Send> Operator<In> for Map<F> {
    type Out = Out;
    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<Out>) {
        out.emit(timestamp, (self.0)(item));
    }
}
