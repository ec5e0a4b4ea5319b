//! `filter`: keeps the elements the predicate accepts.

use crate::operator::{Collector, Operator};

pub struct Filter<F>(pub F);

impl<T, F: FnMut(&T) -> bool + Send> Operator<T> for Filter<F> {
    type Out = T;
    fn process(&mut self, timestamp: i64, item: T, out: &mut dyn Collector<T>) {
        if (self.0)(&item) {
            out.emit(timestamp, item);
        }
    }
}
