//! The three reference pipeline files (`examples/pipelines/{orders_enriched,revenue_by_country,
//! ad_attribution}.toml`) inside the real binary, fed by librdkafka with the deterministic workloads of
//! `millrace_processor::reference` in an arrival order disordered within the files' 5 s bound: every output
//! topic holds exactly the nested-loop reference (each expected record once, nothing else, values equal as
//! JSON), both in a quiet run and when the broker is killed with kill -9 (once or twice, at random moments)
//! while the input is still being produced.
//!
//! The reference module is compiled into this test from the processor's source (`#[path]`), so the test
//! crate needs no dependency on the processor.
//!
//! A crash test's seed is printed; `MILLRACE_KILL_SEED=<seed>` replays the same kill moments.
#![allow(clippy::unwrap_used)]

mod common;

#[path = "../../processor/src/reference.rs"]
#[allow(dead_code)]
mod reference;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use millrace_tests::{workspace_root, Broker};
use rdkafka::admin::ResourceSpecifier;
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use reference::{arrival_order, Click, Impression, Order, Rng, UserRow, T0};
use serde_json::Value;

/// The files' `out_of_orderness_ms`: the arrival order's disorder stays within it, so nothing is late.
const BOUND: i64 = 5_000;
/// The event time of the flush records: far past every workload record.
const FAR: i64 = T0 + 100_000_000;
/// Every topic of the reference files has 3 partitions.
const PARTITIONS: i32 = 3;

fn pipeline_file(name: &str) -> PathBuf {
    workspace_root().join(format!("examples/pipelines/{name}.toml"))
}

/// A copy of a reference file for the crash tests: checkpoints every 100 ms, so that a kill lands among them,
/// and no idleness (a restart pauses the input for longer than the 2 s idle timeout, and records reaching a
/// partition after it went idle would be late).
fn crash_copy(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(pipeline_file(name)).unwrap();
    assert!(text.contains("idle_timeout_ms = 2000"), "{name}: {text}");
    let text = text
        .replacen("idle_timeout_ms = 2000", "idle_timeout_ms = 600000", 1)
        .replacen("[settings]", "[settings]\ncheckpoint_interval_ms = 100", 1);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// An input record: the record timestamp is the value's `ts`; `partition` -1 lets the producer choose.
#[derive(Debug, Clone)]
struct In {
    topic: &'static str,
    partition: i32,
    key: String,
    value: Option<String>,
    ts: i64,
}

fn order_in(o: &Order) -> In {
    In {
        topic: "orders",
        partition: -1,
        key: o.order_id.clone(),
        value: Some(o.json()),
        ts: o.ts,
    }
}

fn user_in(u: &UserRow) -> In {
    In {
        topic: "users",
        partition: -1,
        key: u.user_id.clone(),
        value: u.json(),
        ts: u.ts,
    }
}

fn impression_in(i: &Impression) -> In {
    In {
        topic: "impressions",
        partition: -1,
        key: i.ad_id.clone(),
        value: Some(i.json()),
        ts: i.ts,
    }
}

fn click_in(c: &Click) -> In {
    In {
        topic: "clicks",
        partition: -1,
        key: c.ad_id.clone(),
        value: Some(c.json()),
        ts: c.ts,
    }
}

fn order_inputs(orders: &[Order], users: &[UserRow], seed: u64) -> Vec<In> {
    let mut items: Vec<(i64, In)> = orders.iter().map(|o| (o.ts, order_in(o))).collect();
    items.extend(users.iter().map(|u| (u.ts, user_in(u))));
    arrival_order(items, BOUND, seed)
}

fn ads_inputs(imps: &[Impression], clicks: &[Click], seed: u64) -> Vec<In> {
    let mut items: Vec<(i64, In)> = imps.iter().map(|i| (i.ts, impression_in(i))).collect();
    items.extend(clicks.iter().map(|c| (c.ts, click_in(c))));
    arrival_order(items, BOUND, seed)
}

/// A far-future order of amount 0 by a user without a row: it produces no output of its own (its window
/// never closes, it is below 1000, and its own enrichment waits for a watermark past it).
fn flush_order(partition: i32) -> In {
    order_in(&Order {
        order_id: format!("flush-{partition}"),
        user_id: "nobody".into(),
        amount: 0,
        ts: FAR,
    })
    .with_partition(partition)
}

/// A far-future impression of an ad without clicks.
fn flush_impression(partition: i32) -> In {
    impression_in(&Impression {
        impression_id: format!("flush-{partition}"),
        ad_id: "none".into(),
        ts: FAR,
    })
    .with_partition(partition)
}

impl In {
    fn with_partition(self, partition: i32) -> In {
        In { partition, ..self }
    }
}

/// The flush records of a crash test, where nothing goes idle: one far-future record in every partition of
/// every input topic, so every partition's watermark passes everything.
fn crash_flush(topics: &[&'static str]) -> Vec<In> {
    let mut out = Vec::new();
    for &topic in topics {
        for p in 0..PARTITIONS {
            out.push(match topic {
                "orders" => flush_order(p),
                "users" => user_in(&UserRow {
                    user_id: format!("nobody-{p}"),
                    row: Some(("flush".into(), "ZZ".into())),
                    ts: FAR,
                })
                .with_partition(p),
                "impressions" => flush_impression(p),
                "clicks" => click_in(&Click {
                    click_id: format!("flush-{p}"),
                    ad_id: "none-click".into(),
                    ts: FAR,
                })
                .with_partition(p),
                other => panic!("no flush record for {other}"),
            });
        }
    }
    out
}

// ---- producing, with every delivery checked ----

#[derive(Default)]
struct Deliveries {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

struct Ctx(Arc<Deliveries>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.0
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{}/{}: {e}", m.topic(), m.partition()))
            }
        }
    }
}

/// An idempotent acks=all producer that counts deliveries: each input record is sent once, and librdkafka's
/// retries (same producer id and sequence) cannot double it across a crash.
struct Sender {
    p: BaseProducer<Ctx>,
    d: Arc<Deliveries>,
    sent: usize,
}

impl Sender {
    fn new(bootstrap: &str) -> Sender {
        let d = Arc::new(Deliveries::default());
        let p = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "120000")
            .create_with_context(Ctx(d.clone()))
            .expect("producer");
        Sender { p, d, sent: 0 }
    }

    fn send(&mut self, recs: &[In]) {
        for r in recs {
            let mut rec: BaseRecord<'_, str, str> =
                BaseRecord::to(r.topic).key(r.key.as_str()).timestamp(r.ts);
            if r.partition >= 0 {
                rec = rec.partition(r.partition);
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_str());
            }
            loop {
                match self.p.send(rec) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        self.p.poll(Duration::from_millis(10));
                        rec = back;
                    }
                    Err((e, _)) => panic!("send failed: {e}"),
                }
            }
            self.sent += 1;
        }
    }

    /// Waits until every record sent so far is acknowledged; panics on any failed delivery.
    fn flush(&self) {
        self.p
            .flush(Duration::from_secs(120))
            .expect("flush: every record delivered");
        let failed = self.d.failed.lock().unwrap();
        assert!(failed.is_empty(), "failed deliveries: {failed:?}");
        assert_eq!(self.d.ok.load(Ordering::Relaxed), self.sent, "deliveries");
    }
}

// ---- reading and comparing outputs ----

#[derive(Debug)]
struct Out {
    topic: String,
    key: Option<String>,
    value: Value,
}

/// Reads every partition of `topics` from the start until at least `want` records arrived and nothing more
/// has come for 3 s (outputs appear at checkpoints), or `within` passed.
fn read_outputs(bootstrap: &str, topics: &[&str], want: usize, within: Duration) -> Vec<Out> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = m
                    .payload()
                    .map(|p| serde_json::from_slice(p).expect("output is JSON"))
                    .unwrap_or(Value::Null);
                out.push(Out {
                    topic: m.topic().to_string(),
                    key: m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    value,
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {
                if out.len() >= want && quiet_since.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
        }
    }
    out
}

/// Compares (key, value) outputs with the reference: each expected key exactly once with its value, no other
/// key. Panics with a summary (counts and the first few of each kind of difference).
fn compare<K: Ord + Clone + Debug, V: PartialEq + Debug>(
    what: &str,
    got: Vec<(K, V)>,
    want: &BTreeMap<K, V>,
) {
    assert!(!want.is_empty(), "{what}: the reference is empty");
    let mut seen: BTreeMap<K, V> = BTreeMap::new();
    let mut dups = Vec::new();
    for (k, v) in got {
        match seen.entry(k) {
            std::collections::btree_map::Entry::Occupied(e) => dups.push(e.key().clone()),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
    let missing: Vec<&K> = want.keys().filter(|k| !seen.contains_key(*k)).collect();
    let extra: Vec<(&K, &V)> = seen
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .collect();
    let wrong: Vec<(&K, &V, &V)> = seen
        .iter()
        .filter_map(|(k, v)| want.get(k).filter(|w| *w != v).map(|w| (k, v, w)))
        .collect();
    if dups.is_empty() && missing.is_empty() && extra.is_empty() && wrong.is_empty() {
        return;
    }
    panic!(
        "{what}: {} expected, {} distinct received; {} duplicated (first {:?}), {} missing (first {:?}), \
         {} unexpected (first {:?}), {} with a wrong value (first, got vs want: {:?})",
        want.len(),
        seen.len(),
        dups.len(),
        &dups[..dups.len().min(5)],
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        wrong.len(),
        &wrong[..wrong.len().min(3)],
    );
}

fn of<'a>(outs: &'a [Out], topic: &'a str) -> impl Iterator<Item = &'a Out> + 'a {
    outs.iter().filter(move |o| o.topic == topic)
}

fn check_orders_enriched(outs: &[Out], orders: &[Order], users: &[UserRow]) {
    let want = reference::expected_orders_enriched(orders, users);
    assert!(
        want.values().any(|v| v["name"].is_null()) && want.values().any(|v| !v["name"].is_null()),
        "the workload has orders with and without a user row"
    );
    let got: Vec<(String, Value)> = of(outs, "orders_enriched")
        .map(|o| {
            let key = o.key.clone().expect("keyed by order id");
            assert_eq!(o.value["order_id"].as_str(), Some(key.as_str()), "{o:?}");
            (key, o.value.clone())
        })
        .collect();
    compare("orders_enriched", got, &want);
}

fn check_revenue(outs: &[Out], orders: &[Order], users: &[UserRow]) {
    let got: Vec<((String, i64), (i64, u64))> = of(outs, "revenue_by_country")
        .map(|o| {
            let v = &o.value;
            let key = o.key.clone().expect("keyed by country");
            assert_eq!(v["country"].as_str(), Some(key.as_str()), "{o:?}");
            let start = v["window_start"].as_i64().unwrap();
            assert_eq!(v["window_end"].as_i64(), Some(start + 60_000), "{o:?}");
            assert_eq!(v.as_object().unwrap().len(), 5, "{o:?}");
            (
                (key, start),
                (
                    v["revenue"].as_i64().unwrap(),
                    v["orders"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    compare(
        "revenue_by_country",
        got,
        &reference::expected_revenue(orders, users),
    );
    // large_orders: the orders of 1000 or more, unchanged, under their own key.
    let by_id: BTreeMap<&str, &Order> = orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    let want: BTreeMap<String, Value> = reference::expected_large(orders)
        .into_iter()
        .map(|id| {
            let v: Value = serde_json::from_str(&by_id[id.as_str()].json()).unwrap();
            (id, v)
        })
        .collect();
    let got: Vec<(String, Value)> = of(outs, "large_orders")
        .map(|o| {
            let key = o.key.clone().expect("keyed by order id");
            assert_eq!(o.value["order_id"].as_str(), Some(key.as_str()), "{o:?}");
            (key, o.value.clone())
        })
        .collect();
    compare("large_orders", got, &want);
    let late: Vec<&Out> = of(outs, "revenue_by_country.late").collect();
    assert!(late.is_empty(), "late orders: {late:?}");
}

fn check_attribution(outs: &[Out], imps: &[Impression], clicks: &[Click]) {
    let want = reference::expected_attribution(imps, clicks);
    assert!(want.len() > 1_000, "the workload has pairs");
    let ad_of: BTreeMap<&str, &str> = imps
        .iter()
        .map(|i| (i.impression_id.as_str(), i.ad_id.as_str()))
        .collect();
    let got: Vec<((String, String), i64)> = of(outs, "attributed_clicks")
        .map(|o| {
            let v = &o.value;
            let click = v["click_id"].as_str().unwrap().to_string();
            let imp = v["impression_id"].as_str().unwrap().to_string();
            assert_eq!(
                o.key.as_deref(),
                Some(click.as_str()),
                "keyed by click: {o:?}"
            );
            assert_eq!(
                v["ad_id"].as_str(),
                ad_of.get(imp.as_str()).copied(),
                "{o:?}"
            );
            assert_eq!(v.as_object().unwrap().len(), 4, "{o:?}");
            ((click, imp), v["delay_ms"].as_i64().unwrap())
        })
        .collect();
    compare("attributed_clicks", got, &want);
}

// ---- the broker ----

/// A broker running the pipeline `file`; with `compacted_users`, the `users` topic is created compacted
/// (cleanup.policy=compact) before the pipeline starts (which would otherwise create it with defaults).
fn start(file: &Path, compacted_users: bool) -> Broker {
    let file = file.display().to_string();
    if !compacted_users {
        return Broker::start_with(&[], &["--pipeline", &file]).unwrap();
    }
    let mut b = Broker::start().unwrap();
    create_topic(
        &b.bootstrap(),
        "users",
        PARTITIONS,
        &[("cleanup.policy", "compact")],
    );
    b.set_args(&["--pipeline", &file]);
    b.restart().unwrap();
    // The pipeline took the topic as it was.
    let d = block(
        admin(&b.bootstrap()).describe_configs(&[ResourceSpecifier::Topic("users")], &opts()),
    )
    .unwrap();
    let res = d[0].as_ref().unwrap();
    assert_eq!(
        res.get("cleanup.policy").unwrap().value.as_deref(),
        Some("compact")
    );
    b
}

/// Sum of the high watermarks of `topic`: how many records were ever appended to it.
fn appended(bootstrap: &str, topic: &str) -> i64 {
    all_watermarks(bootstrap, topic, PARTITIONS)
        .iter()
        .map(|(_, hi)| hi)
        .sum()
}

/// Each input topic holds exactly what was produced: no input record was lost or doubled.
fn check_inputs(bootstrap: &str, inputs: &[In], flush: &[In]) {
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for r in inputs.iter().chain(flush) {
        *want.entry(r.topic).or_default() += 1;
    }
    for (topic, n) in want {
        assert_eq!(
            appended(bootstrap, topic),
            n,
            "records in input topic {topic}"
        );
    }
}

/// A quiet run of a reference file: produce everything (with `idle_first`, only once the pipeline has been
/// idle for longer than its idle timeout), let every partition go idle (> the 2 s idle timeout), then one
/// far-future record so the watermark passes everything; returns the outputs. Without `idle_first` the input
/// starts well within the idle timeout of the pipeline's start (see the ignored test at the end for why
/// that matters).
fn quiet_run(
    name: &str,
    compacted_users: bool,
    inputs: &[In],
    flush: In,
    topics: &[&str],
    want: usize,
    idle_first: bool,
) -> Vec<Out> {
    let b = start(&pipeline_file(name), compacted_users);
    let bootstrap = b.bootstrap();
    let mut s = Sender::new(&bootstrap);
    if idle_first {
        // The pipeline waits for its input longer than the idle timeout: every partition is idle when the
        // input arrives.
        std::thread::sleep(Duration::from_millis(3_000));
    }
    s.send(inputs);
    s.flush();
    std::thread::sleep(Duration::from_millis(3_000));
    s.send(std::slice::from_ref(&flush));
    s.flush();
    let outs = read_outputs(&bootstrap, topics, want, Duration::from_secs(60));
    check_inputs(&bootstrap, inputs, std::slice::from_ref(&flush));
    assert!(!b.stderr().contains("pipeline restarted"), "{}", b.stderr());
    outs
}

/// A crash run: the input is produced in the background, in chunks, while the broker is killed with kill -9
/// `kills` times at random moments (after the first outputs appeared) and restarted; then every partition
/// gets a far-future record (and with `kill_after_flush`, the broker is killed once more within 60 ms of
/// it); returns the outputs.
#[allow(clippy::too_many_arguments)]
fn crash_run(
    name: &str,
    compacted_users: bool,
    inputs: Vec<In>,
    input_topics: &[&'static str],
    topics: &[&str],
    first_output: &str,
    want: usize,
    kills: usize,
    kill_after_flush: bool,
) -> Vec<Out> {
    let seed = std::env::var("MILLRACE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{name}: kill seed {seed} (MILLRACE_KILL_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(&crash_copy(dir.path(), name), compacted_users);
    let bootstrap = b.bootstrap();

    let inputs = Arc::new(inputs);
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (bootstrap, done, inputs) = (bootstrap.clone(), done.clone(), inputs.clone());
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut s = Sender::new(&bootstrap);
            for chunk in inputs.chunks(200) {
                s.send(chunk);
                s.flush();
                acked.store(s.sent, Ordering::Release);
                std::thread::sleep(Duration::from_millis(200));
            }
            done.store(true, Ordering::Release);
        })
    };

    // The first kill once outputs flow and input is still arriving.
    let deadline = Instant::now() + Duration::from_secs(30);
    while appended(&bootstrap, first_output) == 0 {
        assert!(Instant::now() < deadline, "no output before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = Instant::now();
    for k in 0..kills {
        let wait = if k == 0 {
            rng.below(1_200)
        } else {
            300 + rng.below(1_200)
        };
        std::thread::sleep(Duration::from_millis(wait));
        assert!(
            !done.load(Ordering::Acquire),
            "the producer finished before kill {}",
            k + 1
        );
        eprintln!(
            "{name}: kill -9 number {} after {wait} ms, with {} of {} inputs acknowledged and {} outputs",
            k + 1,
            acked.load(Ordering::Acquire),
            inputs.len(),
            appended(&bootstrap, first_output)
        );
        b.kill9().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        b.restart().unwrap();
        assert_eq!(b.bootstrap(), bootstrap, "restarted on the same port");
    }
    producer.join().unwrap();
    eprintln!(
        "{name}: all input acknowledged {:.1} s after the first output",
        first.elapsed().as_secs_f64()
    );

    let flush = crash_flush(input_topics);
    let mut s = Sender::new(&bootstrap);
    s.send(&flush);
    s.flush();
    if kill_after_flush {
        // The flush releases every result still held (the last windows, the last orders): kill while they
        // are being committed.
        let wait = rng.below(60);
        std::thread::sleep(Duration::from_millis(wait));
        b.kill9().unwrap();
        eprintln!("{name}: kill -9 {wait} ms after the flush");
        std::thread::sleep(Duration::from_millis(300));
        b.restart().unwrap();
        assert_eq!(b.bootstrap(), bootstrap, "restarted on the same port");
    }
    let outs = read_outputs(&bootstrap, topics, want, Duration::from_secs(60));
    check_inputs(&bootstrap, &inputs, &flush);
    outs
}

// ---- the tests ----

#[test]
fn orders_enriched_equals_the_reference() {
    let (orders, users) = reference::orders_workload(11, 3_000, 100, 600_000);
    let inputs = order_inputs(&orders, &users, 12);
    let outs = quiet_run(
        "orders_enriched",
        true,
        &inputs,
        flush_order(-1),
        &["orders_enriched"],
        orders.len(),
        false,
    );
    check_orders_enriched(&outs, &orders, &users);
}

#[test]
fn revenue_by_country_equals_the_reference() {
    let (orders, users) = reference::orders_workload(21, 3_000, 100, 600_000);
    let inputs = order_inputs(&orders, &users, 22);
    let want = reference::expected_revenue(&orders, &users).len()
        + reference::expected_large(&orders).len();
    let outs = quiet_run(
        "revenue_by_country",
        true,
        &inputs,
        flush_order(-1),
        &[
            "revenue_by_country",
            "large_orders",
            "revenue_by_country.late",
        ],
        want,
        false,
    );
    check_revenue(&outs, &orders, &users);
}

#[test]
fn ad_attribution_equals_the_reference() {
    let (imps, clicks) = reference::ads_workload(31, 2_000, 2_000, 40, 3_600_000);
    let inputs = ads_inputs(&imps, &clicks, 32);
    let want = reference::expected_attribution(&imps, &clicks).len();
    let outs = quiet_run(
        "ad_attribution",
        false,
        &inputs,
        flush_impression(-1),
        &["attributed_clicks"],
        want,
        false,
    );
    check_attribution(&outs, &imps, &clicks);
}

#[test]
fn orders_enriched_kill_9_under_load_gives_exactly_the_reference() {
    let (orders, users) = reference::orders_workload(41, 5_000, 100, 600_000);
    let inputs = order_inputs(&orders, &users, 42);
    let outs = crash_run(
        "orders_enriched",
        true,
        inputs,
        &["orders", "users"],
        &["orders_enriched"],
        "orders_enriched",
        orders.len(),
        2,
        true,
    );
    check_orders_enriched(&outs, &orders, &users);
}

#[test]
fn revenue_by_country_kill_9_under_load_gives_exactly_the_reference() {
    let (orders, users) = reference::orders_workload(51, 5_000, 100, 600_000);
    let inputs = order_inputs(&orders, &users, 52);
    let want = reference::expected_revenue(&orders, &users).len()
        + reference::expected_large(&orders).len();
    let outs = crash_run(
        "revenue_by_country",
        true,
        inputs,
        &["orders", "users"],
        &[
            "revenue_by_country",
            "large_orders",
            "revenue_by_country.late",
        ],
        "revenue_by_country",
        want,
        1,
        true,
    );
    check_revenue(&outs, &orders, &users);
}

#[test]
fn ad_attribution_kill_9_under_load_gives_exactly_the_reference() {
    let (imps, clicks) = reference::ads_workload(61, 2_500, 2_500, 40, 3_600_000);
    let inputs = ads_inputs(&imps, &clicks, 62);
    let want = reference::expected_attribution(&imps, &clicks).len();
    let outs = crash_run(
        "ad_attribution",
        false,
        inputs,
        &["impressions", "clicks"],
        &["attributed_clicks"],
        "attributed_clicks",
        want,
        2,
        true,
    );
    check_attribution(&outs, &imps, &clicks);
}

/// `orders_enriched_equals_the_reference` with one change: the input arrives only after the pipeline has
/// waited for it longer than `idle_timeout_ms` (as a newly deployed pipeline does, or one whose producers
/// paused for 2 s). Every partition is idle when the burst arrives; each must hold the join back from the
/// moment records are appended to it, not from when its task gets round to reading them (a regression test:
/// before, many orders were enriched with no row or an older one).
#[test]
fn orders_enriched_input_arriving_after_idleness_equals_the_reference() {
    // A race: alone on two cores it shows in about one run of three (every run when the three quiet tests
    // run at once), so up to four runs.
    for attempt in 0..4 {
        let (orders, users) = reference::orders_workload(11 + attempt, 3_000, 100, 600_000);
        let inputs = order_inputs(&orders, &users, 12 + attempt);
        let outs = quiet_run(
            "orders_enriched",
            true,
            &inputs,
            flush_order(-1),
            &["orders_enriched"],
            orders.len(),
            true,
        );
        check_orders_enriched(&outs, &orders, &users);
    }
}
