//! Aggregations over windows: an accumulator per (key, window), updated per element, merged when session
//! windows merge, and turned into the result when the window closes.

use crate::state::{StateCodec, StateReader, StateWriter};

pub trait Aggregator<T>: Send + Sync + 'static {
    /// What is kept per (key, window); snapshotted at checkpoints.
    type Acc: StateCodec + Clone + Send;
    /// What the window emits.
    type Out: Send;
    fn init(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, item: &T);
    /// Folds `other` into `acc` (session windows that merge).
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    fn finish(&self, acc: &Self::Acc) -> Self::Out;
}

/// Counts elements.
#[derive(Debug, Clone, Copy)]
pub struct Count;

impl<T> Aggregator<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn init(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _item: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn finish(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Sums a number taken from each element.
pub struct Sum<F>(pub F);

impl<T, F: Fn(&T) -> f64 + Send + Sync + 'static> Aggregator<T> for Sum<F> {
    type Acc = f64;
    type Out = f64;
    fn init(&self) -> f64 {
        0.0
    }
    fn add(&self, acc: &mut f64, item: &T) {
        *acc += (self.0)(item);
    }
    fn merge(&self, acc: &mut f64, other: f64) {
        *acc += other;
    }
    fn finish(&self, acc: &f64) -> f64 {
        *acc
    }
}

/// The smallest number taken from the elements.
pub struct Min<F>(pub F);

impl<T, F: Fn(&T) -> f64 + Send + Sync + 'static> Aggregator<T> for Min<F> {
    type Acc = Option<f64>;
    type Out = f64;
    fn init(&self) -> Option<f64> {
        None
    }
    fn add(&self, acc: &mut Option<f64>, item: &T) {
        let x = (self.0)(item);
        *acc = Some(acc.map_or(x, |a| a.min(x)));
    }
    fn merge(&self, acc: &mut Option<f64>, other: Option<f64>) {
        if let Some(o) = other {
            *acc = Some(acc.map_or(o, |a| a.min(o)));
        }
    }
    fn finish(&self, acc: &Option<f64>) -> f64 {
        acc.unwrap_or(f64::NAN)
    }
}

/// The largest number taken from the elements.
pub struct Max<F>(pub F);

impl<T, F: Fn(&T) -> f64 + Send + Sync + 'static> Aggregator<T> for Max<F> {
    type Acc = Option<f64>;
    type Out = f64;
    fn init(&self) -> Option<f64> {
        None
    }
    fn add(&self, acc: &mut Option<f64>, item: &T) {
        let x = (self.0)(item);
        *acc = Some(acc.map_or(x, |a| a.max(x)));
    }
    fn merge(&self, acc: &mut Option<f64>, other: Option<f64>) {
        if let Some(o) = other {
            *acc = Some(acc.map_or(o, |a| a.max(o)));
        }
    }
    fn finish(&self, acc: &Option<f64>) -> f64 {
        acc.unwrap_or(f64::NAN)
    }
}

/// The mean of a number taken from the elements.
pub struct Avg<F>(pub F);

impl<T, F: Fn(&T) -> f64 + Send + Sync + 'static> Aggregator<T> for Avg<F> {
    type Acc = (f64, u64);
    type Out = f64;
    fn init(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), item: &T) {
        acc.0 += (self.0)(item);
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, u64), other: (f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn finish(&self, acc: &(f64, u64)) -> f64 {
        if acc.1 == 0 {
            f64::NAN
        } else {
            acc.0 / acc.1 as f64
        }
    }
}

/// A custom fold: an initial accumulator, how an element updates it, and how two merge.
pub struct Fold<A, FA, FM> {
    pub init: A,
    pub add: FA,
    pub merge: FM,
}

impl<T, A, FA, FM> Aggregator<T> for Fold<A, FA, FM>
where
    A: StateCodec + Clone + Send + Sync + 'static,
    FA: Fn(&mut A, &T) + Send + Sync + 'static,
    FM: Fn(&mut A, A) + Send + Sync + 'static,
{
    type Acc = A;
    type Out = A;
    fn init(&self) -> A {
        self.init.clone()
    }
    fn add(&self, acc: &mut A, item: &T) {
        (self.add)(acc, item)
    }
    fn merge(&self, acc: &mut A, other: A) {
        (self.merge)(acc, other)
    }
    fn finish(&self, acc: &A) -> A {
        acc.clone()
    }
}

/// Combines elements pairwise with `f` (which must be associative).
pub struct Reduce<F>(pub F);

/// Reduce's accumulator: nothing yet, or the combination so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced<T>(pub Option<T>);

impl<T: StateCodec> StateCodec for Reduced<T> {
    fn encode(&self, w: &mut StateWriter) {
        self.0.encode(w)
    }
    fn decode(r: &mut StateReader<'_>) -> crate::error::Result<Self> {
        Option::<T>::decode(r).map(Reduced)
    }
}

impl<T, F> Aggregator<T> for Reduce<F>
where
    T: StateCodec + Clone + Send + 'static,
    F: Fn(&T, &T) -> T + Send + Sync + 'static,
{
    type Acc = Reduced<T>;
    type Out = Option<T>;
    fn init(&self) -> Reduced<T> {
        Reduced(None)
    }
    fn add(&self, acc: &mut Reduced<T>, item: &T) {
        acc.0 = Some(match &acc.0 {
            None => item.clone(),
            Some(a) => (self.0)(a, item),
        });
    }
    fn merge(&self, acc: &mut Reduced<T>, other: Reduced<T>) {
        if let Some(o) = other.0 {
            self.add(acc, &o);
        }
    }
    fn finish(&self, acc: &Reduced<T>) -> Option<T> {
        acc.0.clone()
    }
}
