//! Ad attribution: every click is attributed to every impression of the same ad shown at most 10 minutes
//! before it (`impression.ts <= click.ts <= impression.ts + 600000`): an event-time interval join. The
//! pipeline of `examples/pipelines/ad_attribution.toml`, written with the typed Rust API and embedded in the
//! broker:
//!
//! ```text
//! cargo run --release --example ad_attribution -- serve --listen 127.0.0.1:9092 --data-dir ./millrace-data
//! ```
//!
//! takes the arguments of `millrace serve` (more pipelines with `--pipeline FILE` included). It has the file's
//! name, so its checkpoints are in the same topic: run one or the other on a data directory, not both.
//!
//! - `impressions`: key ad id, value `{"impression_id", "ad_id", "ts"}`
//! - `clicks`: key ad id, value `{"click_id", "ad_id", "ts"}`
//! - `attributed_clicks`: key click id, one record per (click, impression):
//!   `{"click_id", "impression_id", "ad_id", "delay_ms"}` with `delay_ms = click.ts - impression.ts`
//!
//! Event time is the value's `ts` field (the record timestamp when it has none); records may arrive up to 5 s
//! out of order, and a partition quiet for 2 s stops holding the watermark back (which drops the join's state
//! once an impression's 10 minutes have passed).

use std::time::Duration;

use bytes::Bytes;
use millrace_processor::json_rec::{key_of, Rec};
use millrace_processor::{Job, JoinKind, Message, Pipeline, Result};
use serde_json::{json, Value};

fn main() -> anyhow::Result<()> {
    millrace::main_with(vec![job()?])
}

/// The pipeline as the file defines it.
pub fn job() -> Result<Job> {
    pipeline(Pipeline::new("ad_attribution"))
}

/// The pipeline's graph on `p` (which may carry settings of its own, e.g. a parallelism).
pub fn pipeline(p: Pipeline) -> Result<Job> {
    let p = p
        .out_of_orderness(Duration::from_millis(5_000))
        .idle_timeout(Duration::from_millis(2_000));
    let impressions = p
        .source_with_partitions("impressions", Some(3))
        .event_time(ts_field)
        .map(parse)
        .key_by(|i: &Rec| field_key(i, "ad_id"))
        .uid("pairs.left_key");
    let clicks = p
        .source_with_partitions("clicks", Some(3))
        .event_time(ts_field)
        .map(parse)
        .key_by(|c: &Rec| field_key(c, "ad_id"))
        .uid("pairs.right_key");
    impressions
        .interval_join_ms(
            &clicks,
            JoinKind::Inner,
            0,       // click.ts >= impression.ts + 0
            600_000, // click.ts <= impression.ts + 600000
            |ad: &Bytes, imp: Option<&Rec>, click: Option<&Rec>| {
                let field = |r: Option<&Rec>, f: &str| {
                    r.and_then(|r| r.get(f)).cloned().unwrap_or(Value::Null)
                };
                let value = json!({
                    "click_id": field(click, "click_id"),
                    "impression_id": field(imp, "impression_id"),
                    "ad_id": field(imp, "ad_id"),
                    "delay_ms": sub(&field(click, "ts"), &field(imp, "ts")),
                });
                // The pair's time is the later of the two (the click's, in an inner join).
                let ts = imp
                    .map_or(i64::MIN, |i| i.timestamp)
                    .max(click.map_or(i64::MIN, |c| c.timestamp));
                Rec::derived(Some(ad.clone()), ts, value)
            },
        )
        .uid("pairs")
        .sink_with_partitions("attributed_clicks", Some(3), |r: Rec| {
            let key = r.get("click_id").filter(|v| !v.is_null()).map(key_of);
            r.into_record(key)
        })
}

/// `a - b` of two JSON numbers (integers when both are), null when either is not a number.
fn sub(a: &Value, b: &Value) -> Value {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => Value::from(x.saturating_sub(y)),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                serde_json::Number::from_f64(x - y).map_or(Value::Null, Value::Number)
            }
            _ => Value::Null,
        },
    }
}

/// Event time: the value's `ts` field (None: the record timestamp).
fn ts_field(m: &Message) -> Option<i64> {
    let v: Value = serde_json::from_slice(m.value.as_deref()?).ok()?;
    v.get("ts")?.as_i64()
}

/// The record with its value parsed as JSON (null when it is not JSON), stamped with its event time.
fn parse(m: Message) -> Rec {
    let stored = m.timestamp;
    let mut r = Rec::from_message(m, stored);
    if let Some(ts) = r.get("ts").and_then(Value::as_i64) {
        r.timestamp = ts;
    }
    r
}

/// The key bytes of field `f` (a string as its text, anything else as its JSON); empty when it is missing.
fn field_key(r: &Rec, f: &str) -> Bytes {
    r.get(f)
        .filter(|v| !v.is_null())
        .map(key_of)
        .unwrap_or_default()
}
