//! The three reference pipeline files, run in the test driver over random workloads in random arrival
//! orders (within their 5 s out-of-orderness bound), at several parallelisms: their outputs equal the
//! nested-loop references of `millrace_processor::reference`, and a checkpoint and restore in the middle
//! (at another parallelism) changes nothing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use millrace_processor::file;
use millrace_processor::partitioner::partition_for;
use millrace_processor::reference::{self, arrival_order, Click, Impression, Order, UserRow};
use millrace_processor::{Job, Message, OutRecord, TestDriver};
use proptest::prelude::*;
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

/// Runs `records` through `job`, checkpointing after `cut` of them and restoring as `after` (another
/// parallelism); then ends the input.
fn run(job: &Job, records: &[In], cut: usize, after: &Job) -> Vec<(String, OutRecord)> {
    let mut d = TestDriver::with_partitions(job, &[3, 3]);
    let mut out = Vec::new();
    let topics: Vec<String> = job.sinks().iter().map(|t| t.name.clone()).collect();
    let take = |d: &mut TestDriver, out: &mut Vec<(String, OutRecord)>| {
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
    // The end of input (as a bounded run ends): every held result comes out.
    d.finish();
    take(&mut d, &mut out);
    assert!(d.late().is_empty(), "nothing is late within the bound");
    out
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
            (
                o.ts,
                In {
                    source: 0,
                    key: o.order_id.clone(),
                    value: Some(o.json()),
                    ts: o.ts,
                },
            )
        })
        .collect();
    items.extend(users.iter().map(|u| {
        (
            u.ts,
            In {
                source: 1,
                key: u.user_id.clone(),
                value: u.json(),
                ts: u.ts,
            },
        )
    }));
    arrival_order(items, 5_000, seed)
}

/// A job with a parallelism set (the files leave it to the partition count).
fn with_parallelism(name: &str, p: usize) -> Job {
    with_settings(name, p, false)
}

/// A job with a parallelism set, its keyed state on the disk backend when `disk`.
fn with_settings(name: &str, p: usize, disk: bool) -> Job {
    let path = format!(
        "{}/../examples/pipelines/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let src = std::fs::read_to_string(path).unwrap();
    let backend = if disk { "disk" } else { "memory" };
    let src = src.replacen(
        "[settings]",
        &format!("[settings]\nparallelism = {p}\nstate_backend = \"{backend}\""),
        1,
    );
    file::parse(&src, name).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn orders_enriched_equals_the_reference(seed in any::<u64>(), p in 1usize..5, q in 1usize..5, cut_frac in 0.0f64..1.0,
                                            disk in any::<bool>()) {
        let (orders, users) = reference::orders_workload(seed, 300, 25, 600_000);
        let records = order_records(&orders, &users, seed ^ 1);
        let cut = (records.len() as f64 * cut_frac) as usize;
        let out = run(&with_settings("orders_enriched", p, disk), &records, cut, &with_settings("orders_enriched", q, disk));
        let want = reference::expected_orders_enriched(&orders, &users);
        prop_assert!(want.values().any(|v| v["name"].is_null()) && want.values().any(|v| !v["name"].is_null()));
        let mut got = BTreeMap::new();
        for (_, r) in &out {
            prop_assert!(got.insert(key(r), json(r)).is_none(), "an order was written twice");
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn revenue_by_country_equals_the_reference(seed in any::<u64>(), p in 1usize..5, q in 1usize..5, cut_frac in 0.0f64..1.0,
                                               disk in any::<bool>()) {
        let (orders, users) = reference::orders_workload(seed, 300, 25, 600_000);
        let records = order_records(&orders, &users, seed ^ 2);
        let cut = (records.len() as f64 * cut_frac) as usize;
        let out = run(&with_settings("revenue_by_country", p, disk), &records, cut, &with_settings("revenue_by_country", q, disk));
        let mut revenue = BTreeMap::new();
        let mut large = Vec::new();
        for (topic, r) in &out {
            let v = json(r);
            if topic == "large_orders" {
                large.push(v["order_id"].as_str().unwrap().to_string());
                continue;
            }
            prop_assert_eq!(v["window_end"].as_i64().unwrap() - v["window_start"].as_i64().unwrap(), 60_000);
            prop_assert_eq!(v["country"].as_str().unwrap(), key(r));
            let k = (key(r), v["window_start"].as_i64().unwrap());
            let sum = v["revenue"].as_i64().unwrap();
            prop_assert!(revenue.insert(k, (sum, v["orders"].as_u64().unwrap())).is_none());
        }
        large.sort();
        prop_assert_eq!(revenue, reference::expected_revenue(&orders, &users));
        prop_assert_eq!(large, reference::expected_large(&orders));
    }

    #[test]
    fn ad_attribution_equals_the_reference(seed in any::<u64>(), p in 1usize..5, q in 1usize..5, cut_frac in 0.0f64..1.0) {
        let (imps, clicks) = reference::ads_workload(seed, 200, 200, 15, 3_600_000);
        let mut items: Vec<(i64, In)> = imps
            .iter()
            .map(|i: &Impression| (i.ts, In { source: 0, key: i.ad_id.clone(), value: Some(i.json()), ts: i.ts }))
            .collect();
        items.extend(clicks.iter().map(|c: &Click| {
            (c.ts, In { source: 1, key: c.ad_id.clone(), value: Some(c.json()), ts: c.ts })
        }));
        let records = arrival_order(items, 5_000, seed ^ 3);
        let cut = (records.len() as f64 * cut_frac) as usize;
        let out = run(&with_parallelism("ad_attribution", p), &records, cut, &with_parallelism("ad_attribution", q));
        let mut got = BTreeMap::new();
        for (_, r) in &out {
            let v = json(r);
            prop_assert_eq!(v["click_id"].as_str().unwrap(), key(r));
            let k = (v["click_id"].as_str().unwrap().to_string(), v["impression_id"].as_str().unwrap().to_string());
            prop_assert_eq!(v["ad_id"].as_str().unwrap().to_string(), imps.iter().find(|i| i.impression_id == k.1).unwrap().ad_id.clone());
            prop_assert!(got.insert(k, v["delay_ms"].as_i64().unwrap()).is_none(), "a pair was written twice");
        }
        let want = reference::expected_attribution(&imps, &clicks);
        prop_assert!(want.len() > 50, "the workload has pairs");
        prop_assert_eq!(got, want);
    }
}
