//! Revenue by country: a graph with two sinks. Orders joined with their user (as in `orders_enriched`) are
//! summed per country in tumbling 60-second event-time windows; from the same orders source, every order of
//! 1000 or more goes unchanged to `large_orders`. The pipeline of `examples/pipelines/revenue_by_country.toml`,
//! written with the typed Rust API and embedded in the broker:
//!
//! ```text
//! cargo run --release --example revenue_by_country -- serve --listen 127.0.0.1:9092 --data-dir ./millrace-data
//! ```
//!
//! takes the arguments of `millrace serve` (more pipelines with `--pipeline FILE` included). It has the file's
//! name, so its checkpoints are in the same topic: run one or the other on a data directory, not both.
//!
//! - `orders`: key order id, value `{"order_id", "user_id", "amount", "ts"}`
//! - `users`: compacted, key user id, value `{"user_id", "name", "country", "ts"}` or a tombstone
//! - `revenue_by_country`: key country, value `{"country", "window_start", "window_end", "revenue", "orders"}`,
//!   one per (country, window) when the watermark passes the window's end; orders without a country count
//!   under `"unknown"`.
//! - `revenue_by_country.late`: orders that came after their window closed, as joined.
//! - `large_orders`: the orders of `amount >= 1000`, unchanged.
//!
//! Event time is the value's `ts` field (the record timestamp when it has none); records may arrive up to 5 s
//! out of order, and a partition quiet for 2 s stops holding results back.

use std::time::Duration;

use bytes::Bytes;
use millrace_processor::json_rec::{key_of, Rec};
use millrace_processor::{
    Fold, Job, JoinKind, Message, OutRecord, Pipeline, Result, Window, WindowResult,
};
use serde_json::{json, Value};

fn main() -> anyhow::Result<()> {
    millrace::main_with(vec![job()?])
}

/// The pipeline as the file defines it.
pub fn job() -> Result<Job> {
    pipeline(Pipeline::new("revenue_by_country"))
}

/// The pipeline's graph on `p` (which may carry settings of its own, e.g. a parallelism).
pub fn pipeline(p: Pipeline) -> Result<Job> {
    let p = p
        .out_of_orderness(Duration::from_millis(5_000))
        .idle_timeout(Duration::from_millis(2_000));
    let orders = p
        .source_with_partitions("orders", Some(3))
        .event_time(ts_field)
        .map(parse);
    let users = p
        .table_with_partitions("users", Some(3))
        .event_time(ts_field)
        .map_values(parse);

    // Each order with the country of its user as of the order's time (null: no user then).
    let enriched = orders
        .clone()
        .key_by(|order: &Rec| field_key(order, "user_id").unwrap_or_default())
        .uid("enriched.key")
        .join_table(
            &users,
            JoinKind::Left,
            |_, order: Rec, user: Option<&Rec>| {
                let mut value = match order.value {
                    Value::Object(o) => o,
                    _ => serde_json::Map::new(),
                };
                let country = user
                    .and_then(|u| u.get("country"))
                    .cloned()
                    .unwrap_or(Value::Null);
                value.insert("country".to_string(), country);
                Rec::derived(order.key, order.timestamp, Value::Object(value))
            },
        )
        .uid("enriched");

    // Revenue and order count per country and minute. An order is late when the watermark has passed the end
    // of its window; it goes to the late topic as joined.
    enriched
        .key_by(|order: &Rec| field_key(order, "country").unwrap_or_else(|| "unknown".into()))
        .uid("by_country.key")
        .window(Window::tumbling(Duration::from_secs(60)))
        .late_to("revenue_by_country.late", Some(3), |_, order: &Rec, _| {
            order.clone().into()
        })
        .aggregate(Fold {
            init: (0.0f64, 0u64),
            add: |acc: &mut (f64, u64), order: &Rec| {
                acc.0 += order.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
                acc.1 += 1;
            },
            merge: |acc: &mut (f64, u64), other: (f64, u64)| {
                acc.0 += other.0;
                acc.1 += other.1;
            },
        })
        .uid("by_country")
        .map(|w: WindowResult<Bytes, (f64, u64)>| {
            let value = json!({
                "country": String::from_utf8_lossy(&w.key),
                "window_start": w.window_start,
                "window_end": w.window_end,
                "revenue": number(w.value.0),
                "orders": w.value.1,
            });
            Rec::derived(Some(w.key), w.window_end.saturating_sub(1), value)
        })
        .uid("by_country.result")
        .to_with_partitions("revenue_by_country", Some(3), OutRecord::from);

    // From the same source: large orders, unchanged (their original bytes and key).
    orders
        .filter(|order: &Rec| {
            order
                .get("amount")
                .and_then(Value::as_f64)
                .is_some_and(|a| a >= 1000.0)
        })
        .uid("large")
        .to_with_partitions("large_orders", Some(3), OutRecord::from);

    p.build()
}

/// A whole number as an integer (sums of integer amounts stay integers), else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
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

/// The key bytes of field `f` (a string as its text, anything else as its JSON); None when it is missing or
/// null.
fn field_key(r: &Rec, f: &str) -> Option<Bytes> {
    r.get(f).filter(|v| !v.is_null()).map(key_of)
}
