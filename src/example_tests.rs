//! The Rust examples' pipelines (`examples/{orders_enriched,revenue_by_country,ad_attribution}.rs`), run in
//! the test driver over the reference workloads in random arrival orders (within their 5 s out-of-orderness
//! bound), at several parallelisms with a checkpoint and restore (at another parallelism) in the middle: their
//! outputs equal the nested-loop references of `millrace_processor::reference`, and are record for record
//! (key, value bytes, timestamp) what the pipeline files of `examples/pipelines/` write for the same input.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../examples/ad_attribution.rs"]
mod ad_attribution;
#[allow(dead_code)]
#[path = "../examples/orders_enriched.rs"]
mod orders_enriched;
#[allow(dead_code)]
#[path = "../examples/revenue_by_country.rs"]
mod revenue_by_country;

use std::collections::BTreeMap;

use millrace_processor::partitioner::partition_for;
use millrace_processor::reference::{self, arrival_order, Order, UserRow};
use millrace_processor::{file, Job, Message, OutRecord, Pipeline, TestDriver};
use serde_json::Value;

/// A record for source `source`, keyed `key`, with timestamp `ts`.
struct In {
    source: usize,
    key: String,
    value: Option<String>,
    ts: i64,
}

fn send(d: &mut TestDriver, r: &In) {
    let p = partition_for(r.key.as_bytes(), 3);
    let m = Message::new(
        Some(r.key.as_bytes()),
        r.value.as_deref().map(str::as_bytes),
        r.ts,
    );
    d.send_to(r.source, p, m);
}

/// (topic, record) in the order written.
type Out = Vec<(String, OutRecord)>;

/// Runs `records` through `job`, checkpointing after `cut` of them and restoring into `after` (another
/// parallelism); then lets every partition go idle and sends `flush` (far in the future) so every result is
/// out. Nothing may be late.
fn run(job: &Job, records: &[In], cut: usize, after: &Job, flush: &In) -> Out {
    let mut d = TestDriver::with_partitions(job, &[3, 3]);
    let mut out = Vec::new();
    let topics: Vec<String> = job.sinks().iter().map(|t| t.name.clone()).collect();
    let take = |d: &mut TestDriver, out: &mut Out| {
        for t in &topics {
            out.extend(d.outputs_of(t).into_iter().map(|r| (t.clone(), r)));
        }
    };
    for r in &records[..cut] {
        send(&mut d, r);
    }
    take(&mut d, &mut out);
    let snap = d.checkpoint();
    let mut d = TestDriver::restore_with_partitions(after, &[3, 3], &snap).unwrap();
    for r in &records[cut..] {
        send(&mut d, r);
    }
    d.advance_time(60_000);
    send(&mut d, flush);
    // Input resumed after a pause of every partition: each counts again until it has been quiet for the
    // idle timeout once more; then only the flush holds the watermark.
    d.advance_time(60_000);
    take(&mut d, &mut out);
    assert!(d.late().is_empty(), "nothing is late within the bound");
    out
}

/// The pipeline file `examples/pipelines/<name>.toml`, with `parallelism` tasks.
fn file_job(name: &str, parallelism: usize) -> Job {
    let path = format!(
        "{}/examples/pipelines/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let src = std::fs::read_to_string(path).unwrap();
    let src = src.replacen(
        "[settings]",
        &format!("[settings]\nparallelism = {parallelism}"),
        1,
    );
    file::parse(&src, name).unwrap()
}

/// (topic, key, value, timestamp) of an output record.
type Written = (String, Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Every output as (topic, key, value, timestamp), sorted: what two runs must agree on (the order across
/// partitions and tasks is not part of a pipeline's semantics).
fn sorted(out: &Out) -> Vec<Written> {
    let mut v: Vec<_> = out
        .iter()
        .map(|(t, r)| {
            (
                t.clone(),
                r.key.as_deref().map(<[u8]>::to_vec),
                r.value.as_deref().map(<[u8]>::to_vec),
                r.timestamp,
            )
        })
        .collect();
    v.sort();
    v
}

/// Runs the example's job and the file's over `records`, for a few parallelisms and cut points; checks with
/// `check` the example's output and that the file's is the same; both jobs must have the same topics and
/// settings.
fn compare(
    name: &str,
    example: fn(Pipeline) -> millrace_processor::Result<Job>,
    records: &[In],
    flush: &In,
    check: impl Fn(&Out),
) {
    let with = |p: usize| example(Pipeline::new(name).parallelism(p)).unwrap();
    let (ex, fj) = (with(1), file_job(name, 1));
    assert_eq!(ex.name(), fj.name());
    assert_eq!(ex.sources(), fj.sources());
    assert_eq!(ex.sinks(), fj.sinks());
    assert_eq!(ex.late_topics(), fj.late_topics());
    let (s, f) = (ex.settings(), fj.settings());
    assert_eq!(
        (s.out_of_orderness_ms, s.idle_timeout_ms, s.max_parallelism),
        (f.out_of_orderness_ms, f.idle_timeout_ms, f.max_parallelism)
    );
    for (p, q, cut_frac) in [(1, 1, 0.0), (3, 2, 0.4), (2, 4, 0.75), (4, 3, 1.0)] {
        let cut = (records.len() as f64 * cut_frac) as usize;
        let out = run(&with(p), records, cut, &with(q), flush);
        check(&out);
        let from_file = run(&file_job(name, p), records, cut, &file_job(name, q), flush);
        assert_eq!(
            sorted(&out),
            sorted(&from_file),
            "{name}: the example and the file differ (p {p}, q {q}, cut {cut})"
        );
    }
}

fn json(r: &OutRecord) -> Value {
    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
}

fn key(r: &OutRecord) -> String {
    String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap()
}

fn order_records(orders: &[Order], users: &[UserRow], seed: u64) -> Vec<In> {
    let mut items: Vec<(i64, In)> = orders
        .iter()
        .map(|o| {
            let r = In {
                source: 0,
                key: o.order_id.clone(),
                value: Some(o.json()),
                ts: o.ts,
            };
            (o.ts, r)
        })
        .collect();
    items.extend(users.iter().map(|u| {
        let r = In {
            source: 1,
            key: u.user_id.clone(),
            value: u.json(),
            ts: u.ts,
        };
        (u.ts, r)
    }));
    arrival_order(items, 5_000, seed)
}

fn order_flush() -> In {
    let ts = reference::T0 + 100_000_000;
    let v = format!(r#"{{"order_id":"flush","user_id":"nobody","amount":0,"ts":{ts}}}"#);
    In {
        source: 0,
        key: "flush".into(),
        value: Some(v),
        ts,
    }
}

const SEEDS: [u64; 3] = [1, 0x5eed, 0xdead_beef];

#[test]
fn orders_enriched_equals_the_reference_and_the_file() {
    for seed in SEEDS {
        let (orders, users) = reference::orders_workload(seed, 300, 25, 600_000);
        let records = order_records(&orders, &users, seed ^ 1);
        let want = reference::expected_orders_enriched(&orders, &users);
        assert!(want.values().any(|v| v["name"].is_null()));
        assert!(want.values().any(|v| !v["name"].is_null()));
        let check = |out: &Out| {
            let mut got = BTreeMap::new();
            for (topic, r) in out {
                assert_eq!(topic, "orders_enriched");
                assert!(got.insert(key(r), json(r)).is_none(), "an order twice");
                // The output's timestamp is the order's event time.
                assert_eq!(r.timestamp, json(r)["ts"].as_i64().unwrap());
            }
            // The flush order waits for a watermark past it, which never comes.
            assert_eq!(got, want);
        };
        compare(
            "orders_enriched",
            orders_enriched::pipeline,
            &records,
            &order_flush(),
            check,
        );
    }
}

#[test]
fn revenue_by_country_equals_the_reference_and_the_file() {
    for seed in SEEDS {
        let (mut orders, users) = reference::orders_workload(seed, 300, 25, 600_000);
        // The large-order threshold, on both sides.
        for (id, amount) in [("edge-1000", 1000), ("edge-999", 999)] {
            orders.push(Order {
                order_id: id.into(),
                user_id: "u1".into(),
                amount,
                ts: reference::T0 + 30_000,
            });
        }
        let records = order_records(&orders, &users, seed ^ 2);
        let check = |out: &Out| {
            let mut revenue = BTreeMap::new();
            let mut large = Vec::new();
            for (topic, r) in out {
                let v = json(r);
                if topic == "large_orders" {
                    large.push(v["order_id"].as_str().unwrap().to_string());
                    continue;
                }
                assert_eq!(topic, "revenue_by_country");
                let start = v["window_start"].as_i64().unwrap();
                assert_eq!(v["window_end"].as_i64().unwrap() - start, 60_000);
                assert_eq!(r.timestamp, start + 60_000 - 1);
                assert_eq!(v["country"].as_str().unwrap(), key(r));
                let sum = v["revenue"].as_i64().unwrap();
                let n = v["orders"].as_u64().unwrap();
                assert!(revenue.insert((key(r), start), (sum, n)).is_none());
            }
            // The flush order (amount 0) is in a window of its own, still open.
            large.sort();
            assert_eq!(revenue, reference::expected_revenue(&orders, &users));
            assert_eq!(large, reference::expected_large(&orders));
        };
        compare(
            "revenue_by_country",
            revenue_by_country::pipeline,
            &records,
            &order_flush(),
            check,
        );
    }
}

#[test]
fn ad_attribution_equals_the_reference_and_the_file() {
    for seed in SEEDS {
        let (imps, clicks) = reference::ads_workload(seed, 200, 200, 15, 3_600_000);
        let mut items: Vec<(i64, In)> = imps
            .iter()
            .map(|i| {
                let r = In {
                    source: 0,
                    key: i.ad_id.clone(),
                    value: Some(i.json()),
                    ts: i.ts,
                };
                (i.ts, r)
            })
            .collect();
        items.extend(clicks.iter().map(|c| {
            let r = In {
                source: 1,
                key: c.ad_id.clone(),
                value: Some(c.json()),
                ts: c.ts,
            };
            (c.ts, r)
        }));
        let records = arrival_order(items, 5_000, seed ^ 3);
        let ts = reference::T0 + 100_000_000;
        let flush = In {
            source: 0,
            key: "none".into(),
            value: Some(format!(
                r#"{{"impression_id":"flush","ad_id":"none","ts":{ts}}}"#
            )),
            ts,
        };
        let want = reference::expected_attribution(&imps, &clicks);
        assert!(want.len() > 50, "the workload has pairs");
        let check = |out: &Out| {
            let mut got = BTreeMap::new();
            for (topic, r) in out {
                assert_eq!(topic, "attributed_clicks");
                let v = json(r);
                assert_eq!(v["click_id"].as_str().unwrap(), key(r));
                let click = v["click_id"].as_str().unwrap().to_string();
                let imp = v["impression_id"].as_str().unwrap().to_string();
                let ad = &imps.iter().find(|i| i.impression_id == imp).unwrap().ad_id;
                assert_eq!(v["ad_id"].as_str().unwrap(), ad);
                // The pair's timestamp is the click's event time.
                let c = clicks.iter().find(|c| c.click_id == click).unwrap();
                assert_eq!(r.timestamp, c.ts);
                let delay = v["delay_ms"].as_i64().unwrap();
                assert!(got.insert((click, imp), delay).is_none(), "a pair twice");
            }
            assert_eq!(got, want);
        };
        compare(
            "ad_attribution",
            ad_attribution::pipeline,
            &records,
            &flush,
            check,
        );
    }
}

#[test]
fn the_examples_build_with_the_files_settings() {
    for (job, name) in [
        (orders_enriched::job(), "orders_enriched"),
        (revenue_by_country::job(), "revenue_by_country"),
        (ad_attribution::job(), "ad_attribution"),
    ] {
        let job = job.unwrap();
        let file = file::load(std::path::Path::new(&format!(
            "{}/examples/pipelines/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        )))
        .unwrap();
        assert_eq!(job.name(), name);
        // Both leave the parallelism to the partition count.
        assert_eq!(job.settings().parallelism, file.settings().parallelism);
        assert_eq!(job.sources(), file.sources());
        assert_eq!(job.sinks(), file.sinks());
    }
}
