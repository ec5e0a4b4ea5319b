//! Several aggregations of JSON records in one window, as a pipeline file's `aggregates = [...]` lists them:
//! count, sum, min, max, avg and count_distinct of a field. One accumulator per listed aggregation; the
//! result is one JSON value per aggregation, in the listed order.
//!
//! A field that is missing or not a number counts for `count` (which counts records) and is skipped by the
//! numeric ones; `min`, `max` and `avg` of no numbers are null.

use std::collections::HashSet;

use serde_json::Value;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::json_rec::Rec;
use crate::state::{StateCodec, StateReader, StateWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

impl AggOp {
    pub fn parse(s: &str) -> Option<AggOp> {
        Some(match s {
            "count" => AggOp::Count,
            "sum" => AggOp::Sum,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "avg" => AggOp::Avg,
            "count_distinct" => AggOp::CountDistinct,
            _ => return None,
        })
    }

    /// Whether the aggregation reads a field.
    pub fn needs_field(self) -> bool {
        self != AggOp::Count
    }
}

/// One accumulator.
#[derive(Debug, Clone, PartialEq)]
pub enum Acc {
    Count(u64),
    Sum(f64),
    Min(Option<f64>),
    Max(Option<f64>),
    Avg(f64, u64),
    Distinct(HashSet<Vec<u8>>),
}

/// The accumulators of one (key, window).
#[derive(Debug, Clone, PartialEq)]
pub struct Accs(pub Vec<Acc>);

pub struct JsonAggs {
    /// (operation, field) per output, in order.
    pub aggs: Vec<(AggOp, Option<String>)>,
}

impl Aggregator<Rec> for JsonAggs {
    type Acc = Accs;
    type Out = Vec<Value>;

    fn init(&self) -> Accs {
        Accs(
            self.aggs
                .iter()
                .map(|(op, _)| match op {
                    AggOp::Count => Acc::Count(0),
                    AggOp::Sum => Acc::Sum(0.0),
                    AggOp::Min => Acc::Min(None),
                    AggOp::Max => Acc::Max(None),
                    AggOp::Avg => Acc::Avg(0.0, 0),
                    AggOp::CountDistinct => Acc::Distinct(HashSet::new()),
                })
                .collect(),
        )
    }

    fn add(&self, acc: &mut Accs, item: &Rec) {
        for ((_, field), a) in self.aggs.iter().zip(acc.0.iter_mut()) {
            let v = field.as_deref().and_then(|f| item.get(f));
            let num = v.and_then(Value::as_f64);
            match a {
                Acc::Count(n) => *n += 1,
                Acc::Sum(s) => *s += num.unwrap_or(0.0),
                Acc::Min(m) => {
                    if let Some(x) = num {
                        *m = Some(m.map_or(x, |m| m.min(x)));
                    }
                }
                Acc::Max(m) => {
                    if let Some(x) = num {
                        *m = Some(m.map_or(x, |m| m.max(x)));
                    }
                }
                Acc::Avg(s, n) => {
                    if let Some(x) = num {
                        *s += x;
                        *n += 1;
                    }
                }
                Acc::Distinct(set) => {
                    if let Some(v) = v.filter(|v| !v.is_null()) {
                        let bytes = v.to_string().into_bytes();
                        if !set.contains(&bytes) {
                            set.insert(bytes);
                        }
                    }
                }
            }
        }
    }

    fn merge(&self, acc: &mut Accs, other: Accs) {
        for (a, b) in acc.0.iter_mut().zip(other.0) {
            match (a, b) {
                (Acc::Count(x), Acc::Count(y)) => *x += y,
                (Acc::Sum(x), Acc::Sum(y)) => *x += y,
                (Acc::Min(x), Acc::Min(y)) => *x = min_opt(*x, y, f64::min),
                (Acc::Max(x), Acc::Max(y)) => *x = min_opt(*x, y, f64::max),
                (Acc::Avg(s, n), Acc::Avg(t, m)) => {
                    *s += t;
                    *n += m;
                }
                (Acc::Distinct(x), Acc::Distinct(y)) => x.extend(y),
                // Accumulators of one aggregator always line up.
                _ => {}
            }
        }
    }

    fn finish(&self, acc: &Accs) -> Vec<Value> {
        acc.0
            .iter()
            .map(|a| match a {
                Acc::Count(n) => Value::from(*n),
                Acc::Sum(s) => number(*s),
                Acc::Min(m) | Acc::Max(m) => m.map_or(Value::Null, number),
                Acc::Avg(_, 0) => Value::Null,
                Acc::Avg(s, n) => number(*s / *n as f64),
                Acc::Distinct(set) => Value::from(set.len() as u64),
            })
            .collect()
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A whole number as an integer (sums of integer amounts stay integers in the output), else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

impl StateCodec for Accs {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for a in &self.0 {
            match a {
                Acc::Count(n) => {
                    w.u8(0);
                    w.u64(*n);
                }
                Acc::Sum(s) => {
                    w.u8(1);
                    w.f64(*s);
                }
                Acc::Min(m) => {
                    w.u8(2);
                    m.encode(w);
                }
                Acc::Max(m) => {
                    w.u8(3);
                    m.encode(w);
                }
                Acc::Avg(s, n) => {
                    w.u8(4);
                    w.f64(*s);
                    w.u64(*n);
                }
                Acc::Distinct(set) => {
                    w.u8(5);
                    w.u32(set.len() as u32);
                    let mut v: Vec<&Vec<u8>> = set.iter().collect();
                    v.sort();
                    for x in v {
                        w.bytes(x);
                    }
                }
            }
        }
    }

    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut v = Vec::new();
        for _ in 0..r.count(2)? {
            v.push(match r.u8()? {
                0 => Acc::Count(r.u64()?),
                1 => Acc::Sum(r.f64()?),
                2 => Acc::Min(Option::<f64>::decode(r)?),
                3 => Acc::Max(Option::<f64>::decode(r)?),
                4 => Acc::Avg(r.f64()?, r.u64()?),
                5 => {
                    let mut set = HashSet::new();
                    for _ in 0..r.count(4)? {
                        set.insert(r.bytes()?.to_vec());
                    }
                    Acc::Distinct(set)
                }
                t => return Err(Error::CorruptState(format!("bad aggregate tag {t}"))),
            });
        }
        Ok(Accs(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rec(v: Value) -> Rec {
        Rec::derived(None, 0, v)
    }

    #[test]
    fn aggregates_in_order() {
        let a = JsonAggs {
            aggs: vec![
                (AggOp::Sum, Some("amount".into())),
                (AggOp::Count, None),
                (AggOp::Avg, Some("amount".into())),
                (AggOp::Min, Some("amount".into())),
                (AggOp::Max, Some("x".into())),
                (AggOp::CountDistinct, Some("u".into())),
            ],
        };
        let mut acc = a.init();
        a.add(&mut acc, &rec(json!({"amount": 10, "u": "a"})));
        a.add(&mut acc, &rec(json!({"amount": 2.5, "u": "a"})));
        let mut other = a.init();
        a.add(&mut other, &rec(json!({"amount": 1, "u": "b"})));
        a.merge(&mut acc, other);
        assert_eq!(
            a.finish(&acc),
            vec![
                json!(13.5),
                json!(3),
                json!(4.5),
                json!(1),
                Value::Null,
                json!(2)
            ]
        );
        let mut w = StateWriter::new();
        acc.encode(&mut w);
        assert_eq!(Accs::decode(&mut StateReader::new(&w.buf)).unwrap(), acc);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Accs::decode(&mut StateReader::new(&data));
        }
    }
}
