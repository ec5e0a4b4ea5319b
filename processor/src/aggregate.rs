//! Aggregations over windows: an accumulator per (key, window), updated per element, merged when session
//! windows merge (and sliding windows are assembled), and turned into the result when the window closes.
//!
//! Every accumulator is checkpointed through [`StateCodec`]; decoders read untrusted bytes and fail with an
//! error, never a panic, and never allocate more than the bytes they were given could hold.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::error::Result;
use crate::hll::HyperLogLog;
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

/// Counts distinct values exactly: the bytes `F` takes from each element (a `Bytes` slice of the record costs no
/// allocation; a value is copied only when it is new to the window). Memory grows with the distinct values: see
/// [`ApproxCountDistinct`] for a bounded estimate.
pub struct CountDistinct<F>(pub F);

/// The distinct values of a window, as owned bytes (never slices of input batches, which they would pin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistinctSet(pub HashSet<Vec<u8>>);

impl StateCodec for DistinctSet {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for v in &self.0 {
            w.bytes(v);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let n = r.count(4)?;
        let mut set = HashSet::with_capacity(n);
        for _ in 0..n {
            set.insert(r.bytes()?.to_vec());
        }
        Ok(DistinctSet(set))
    }
}

impl<T, V, F> Aggregator<T> for CountDistinct<F>
where
    V: AsRef<[u8]>,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    type Acc = DistinctSet;
    type Out = u64;
    fn init(&self) -> DistinctSet {
        DistinctSet::default()
    }
    fn add(&self, acc: &mut DistinctSet, item: &T) {
        let v = (self.0)(item);
        if !acc.0.contains(v.as_ref()) {
            acc.0.insert(v.as_ref().to_vec());
        }
    }
    fn merge(&self, acc: &mut DistinctSet, mut other: DistinctSet) {
        if other.0.len() > acc.0.len() {
            std::mem::swap(acc, &mut other);
        }
        acc.0.extend(other.0);
    }
    fn finish(&self, acc: &DistinctSet) -> u64 {
        acc.0.len() as u64
    }
}

/// Estimates the number of distinct values with a HyperLogLog sketch ([`crate::hll`]): at most
/// `2^precision` bytes per (key, window) whatever the cardinality, relative standard error about
/// `1.04 / sqrt(2^precision)` (0.81% at the default precision 14), mergeable.
pub struct ApproxCountDistinct<F> {
    value: F,
    precision: u8,
}

impl<F> ApproxCountDistinct<F> {
    /// Precision 14 (16 KiB per window at most, 0.81% standard error).
    pub fn new(value: F) -> Self {
        Self::with_precision(value, crate::hll::DEFAULT_PRECISION)
    }
    /// `precision` is clamped to 4 ..= 18.
    pub fn with_precision(value: F, precision: u8) -> Self {
        ApproxCountDistinct {
            value,
            precision: precision.clamp(crate::hll::MIN_PRECISION, crate::hll::MAX_PRECISION),
        }
    }
}

impl<T, V, F> Aggregator<T> for ApproxCountDistinct<F>
where
    V: AsRef<[u8]>,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    type Acc = HyperLogLog;
    type Out = u64;
    fn init(&self) -> HyperLogLog {
        HyperLogLog::new(self.precision)
    }
    fn add(&self, acc: &mut HyperLogLog, item: &T) {
        acc.insert((self.value)(item).as_ref());
    }
    fn merge(&self, acc: &mut HyperLogLog, other: HyperLogLog) {
        acc.merge(&other);
    }
    fn finish(&self, acc: &HyperLogLog) -> u64 {
        acc.count()
    }
}

/// The `n` largest `(score, value)` pairs of a window, largest first: ordered by score (`f64::total_cmp`, so
/// a NaN score ranks above infinity), ties by value. Pairs, not distinct values: a value that occurs twice
/// can take two places. The value is taken from an element only when its score could enter the top `n`.
pub struct TopN<F, G> {
    pub n: usize,
    pub value: F,
    pub score: G,
}

impl<F, G> TopN<F, G> {
    pub fn new(n: usize, value: F, score: G) -> Self {
        TopN { n, value, score }
    }
}

/// At most `n` pairs, sorted largest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranked<V>(pub Vec<(f64, V)>);

fn rank_cmp<V: Ord>(a: (f64, &V), b: (f64, &V)) -> Ordering {
    a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

impl<V: Ord> Ranked<V> {
    fn offer(&mut self, n: usize, score: f64, value: V) {
        if self.0.len() >= n {
            match self.0.last() {
                Some((s, v)) if rank_cmp((score, &value), (*s, v)) == Ordering::Greater => {}
                _ => return,
            }
        }
        let at = self
            .0
            .partition_point(|(s, v)| rank_cmp((*s, v), (score, &value)) != Ordering::Less);
        self.0.insert(at, (score, value));
        self.0.truncate(n);
    }
}

impl<V: StateCodec + Ord> StateCodec for Ranked<V> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (s, v) in &self.0 {
            w.f64(*s);
            v.encode(w);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let n = r.count(9)?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let s = r.f64()?;
            pairs.push((s, V::decode(r)?));
        }
        // Sorted again, so that damaged (but decodable) bytes cannot break the order `offer` relies on.
        pairs.sort_by(|a, b| rank_cmp((b.0, &b.1), (a.0, &a.1)));
        Ok(Ranked(pairs))
    }
}

impl<T, V, F, G> Aggregator<T> for TopN<F, G>
where
    V: StateCodec + Ord + Clone + Send + 'static,
    F: Fn(&T) -> V + Send + Sync + 'static,
    G: Fn(&T) -> f64 + Send + Sync + 'static,
{
    type Acc = Ranked<V>;
    type Out = Vec<(f64, V)>;
    fn init(&self) -> Ranked<V> {
        Ranked(Vec::new())
    }
    fn add(&self, acc: &mut Ranked<V>, item: &T) {
        if self.n == 0 {
            return;
        }
        let score = (self.score)(item);
        // Below the smallest kept score: it cannot enter, and its value need not be made.
        if acc.0.len() >= self.n
            && acc
                .0
                .last()
                .is_some_and(|(s, _)| score.total_cmp(s) == Ordering::Less)
        {
            return;
        }
        acc.offer(self.n, score, (self.value)(item));
    }
    fn merge(&self, acc: &mut Ranked<V>, other: Ranked<V>) {
        for (s, v) in other.0 {
            acc.offer(self.n, s, v);
        }
    }
    fn finish(&self, acc: &Ranked<V>) -> Vec<(f64, V)> {
        acc.0.iter().take(self.n).cloned().collect()
    }
}

/// Collects the values of a window into a list, in arrival order, keeping at most `cap` of them: beyond the
/// cap values are not taken (not even made), only counted in [`Collected::dropped`], so memory stays bounded
/// and the result says it is incomplete. Merged lists (sessions, sliding windows) keep the first `cap` values
/// of the earlier list, then of the later one.
pub struct CollectList<F> {
    pub cap: usize,
    pub value: F,
}

impl<F> CollectList<F> {
    pub fn new(cap: usize, value: F) -> Self {
        CollectList { cap, value }
    }
}

/// A capped list of values and how many did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected<V> {
    pub items: Vec<V>,
    pub dropped: u64,
}

impl<V: StateCodec> StateCodec for Collected<V> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.items.len() as u32);
        for v in &self.items {
            v.encode(w);
        }
        w.u64(self.dropped);
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        // Every value takes at least one byte (true of every StateCodec here).
        let n = r.count(1)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(V::decode(r)?);
        }
        Ok(Collected {
            items,
            dropped: r.u64()?,
        })
    }
}

impl<T, V, F> Aggregator<T> for CollectList<F>
where
    V: StateCodec + Clone + Send + 'static,
    F: Fn(&T) -> V + Send + Sync + 'static,
{
    type Acc = Collected<V>;
    type Out = Collected<V>;
    fn init(&self) -> Collected<V> {
        Collected {
            items: Vec::new(),
            dropped: 0,
        }
    }
    fn add(&self, acc: &mut Collected<V>, item: &T) {
        if acc.items.len() < self.cap {
            acc.items.push((self.value)(item));
        } else {
            acc.dropped += 1;
        }
    }
    fn merge(&self, acc: &mut Collected<V>, other: Collected<V>) {
        acc.dropped += other.dropped;
        for v in other.items {
            if acc.items.len() < self.cap {
                acc.items.push(v);
            } else {
                acc.dropped += 1;
            }
        }
    }
    fn finish(&self, acc: &Collected<V>) -> Collected<V> {
        acc.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fold<T, A: Aggregator<T>>(agg: &A, items: &[T]) -> A::Acc {
        let mut acc = agg.init();
        for i in items {
            agg.add(&mut acc, i);
        }
        acc
    }

    fn round_trip<A: StateCodec + PartialEq + std::fmt::Debug>(a: &A) {
        let mut w = StateWriter::new();
        a.encode(&mut w);
        let mut r = StateReader::new(&w.buf);
        assert_eq!(&A::decode(&mut r).expect("decodes"), a);
        assert!(r.is_empty());
    }

    proptest! {
        #[test]
        fn new_aggregations_match_a_reference(items in proptest::collection::vec((0u64..50, -5i64..5), 0..200),
                                              split in 0usize..200, n in 0usize..6, cap in 0usize..20) {
            let split = split.min(items.len());
            let (a, b) = items.split_at(split);
            let value = |x: &(u64, i64)| x.0;
            let score = |x: &(u64, i64)| x.1 as f64;

            let cd = CountDistinct(|x: &(u64, i64)| x.0.to_be_bytes());
            let mut acc = fold(&cd, a);
            cd.merge(&mut acc, fold(&cd, b));
            let want: HashSet<u64> = items.iter().map(|x| x.0).collect();
            prop_assert_eq!(cd.finish(&acc), want.len() as u64);
            round_trip(&acc);

            let top = TopN::new(n, value, score);
            let mut acc = fold(&top, a);
            top.merge(&mut acc, fold(&top, b));
            let mut want: Vec<(f64, u64)> = items.iter().map(|x| (x.1 as f64, x.0)).collect();
            want.sort_by(|x, y| rank_cmp((y.0, &y.1), (x.0, &x.1)));
            want.truncate(n);
            prop_assert_eq!(top.finish(&acc), want);
            round_trip(&acc);

            let list = CollectList::new(cap, value);
            let mut acc = fold(&list, a);
            list.merge(&mut acc, fold(&list, b));
            let got = list.finish(&acc);
            let mut want: Vec<u64> = a.iter().take(cap).map(|x| x.0).collect();
            want.extend(b.iter().take(cap).map(|x| x.0));
            want.truncate(cap);
            prop_assert_eq!(&got.items, &want);
            prop_assert_eq!(got.dropped as usize, items.len() - want.len());
            round_trip(&acc);
        }

        #[test]
        fn decoders_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = DistinctSet::decode(&mut StateReader::new(&junk));
            let _ = Ranked::<String>::decode(&mut StateReader::new(&junk));
            let _ = Collected::<Vec<u8>>::decode(&mut StateReader::new(&junk));
            let _ = HyperLogLog::decode(&mut StateReader::new(&junk));
        }
    }

    #[test]
    fn approx_count_distinct_is_within_two_percent() {
        let agg = ApproxCountDistinct::new(|x: &u64| x.to_le_bytes());
        let values: Vec<u64> = (0..100_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect();
        let (a, b) = values.split_at(37_000);
        let mut acc = fold(&agg, a);
        agg.merge(&mut acc, fold(&agg, b));
        let est = agg.finish(&acc) as f64;
        assert!((est - 100_000.0).abs() < 2_000.0, "estimate {est}");
    }
}
