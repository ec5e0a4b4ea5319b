//! Orders enriched with the user each one was placed by, as that user was at the order's time: a stream-table
//! left join with event-time versioned semantics (Flink's `FOR SYSTEM_TIME AS OF`). The pipeline of
//! `examples/pipelines/orders_enriched.toml`, written with the typed Rust API and embedded in the broker:
//!
//! ```text
//! cargo run --release --example orders_enriched -- serve --listen 127.0.0.1:9092 --data-dir ./millrace-data
//! ```
//!
//! takes the arguments of `millrace serve` (more pipelines with `--pipeline FILE` included). It has the file's
//! name, so its checkpoints are in the same topic: run one or the other on a data directory, not both.
//!
//! - `orders`: key order id, value `{"order_id", "user_id", "amount", "ts"}`
//! - `users`: compacted, key user id, value `{"user_id", "name", "country", "ts"}` or a tombstone
//! - `orders_enriched`: key order id, value `{"order_id", "user_id", "amount", "ts", "name", "country"}`;
//!   `name` and `country` come from the users row current at the order's `ts`, null when there is none or it
//!   was deleted.
//!
//! Event time is the value's `ts` field (the record timestamp when it has none); records may arrive up to 5 s
//! out of order, and a partition quiet for 2 s (a users topic nobody writes) stops holding results back.

use std::time::Duration;

use bytes::Bytes;
use millrace_processor::json_rec::{key_of, Rec};
use millrace_processor::{Job, JoinKind, Message, Pipeline, Result};
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    millrace::main_with(vec![job()?])
}

/// The pipeline as the file defines it.
pub fn job() -> Result<Job> {
    pipeline(Pipeline::new("orders_enriched"))
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
    // Keyed by the record key (the user id); a tombstone deletes the user from then on.
    let users = p
        .table_with_partitions("users", Some(3))
        .event_time(ts_field)
        .map_values(parse);
    orders
        .key_by(|order: &Rec| field_key(order, "user_id"))
        .uid("enriched.key")
        .join_table(
            &users,
            JoinKind::Left,
            |_, order: Rec, user: Option<&Rec>| {
                let mut value = match order.value {
                    Value::Object(o) => o,
                    _ => serde_json::Map::new(),
                };
                for f in ["name", "country"] {
                    let v = user.and_then(|u| u.get(f)).cloned().unwrap_or(Value::Null);
                    value.insert(f.to_string(), v);
                }
                Rec::derived(order.key, order.timestamp, Value::Object(value))
            },
        )
        .uid("enriched")
        .sink_with_partitions("orders_enriched", Some(3), |r: Rec| {
            let key = r.get("order_id").filter(|v| !v.is_null()).map(key_of);
            r.into_record(key)
        })
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
