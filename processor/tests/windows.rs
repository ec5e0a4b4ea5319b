//! Cumulative, sliding and global windows and the new aggregations, through the public pipeline API and the
//! test driver only: examples for each, property tests against brute-force references computed from the same
//! records (in random order within the allowed disorder), and checkpoint/restore round trips.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use millrace_processor::{
    ApproxCountDistinct, CollectList, Collected, Count, CountDistinct, CustomTrigger, Fold, Job,
    Message, OutRecord, Pane, Pipeline, TestDriver, TopN, Trigger, Window, WindowResult,
};
use proptest::prelude::*;

fn msg(key: &str, value: &str, ts: i64) -> Message {
    Message::new(Some(key.as_bytes()), Some(value.as_bytes()), ts)
}

fn key_of(m: &Message) -> Bytes {
    m.key.clone().unwrap_or_default()
}

fn text(b: &Option<Bytes>) -> String {
    String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v as u64)
}

/// (key, "start-end:value") of the results written by [`result_record`].
fn results(out: &[OutRecord]) -> Vec<(String, String)> {
    out.iter().map(|r| (text(&r.key), text(&r.value))).collect()
}

fn result_record<V: std::fmt::Display>(r: WindowResult<Bytes, V>) -> OutRecord {
    let v = format!("{}-{}:{}", r.window_start, r.window_end, r.value);
    OutRecord::new(Some(r.key), Some(v.into()), r.window_end - 1)
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn counting(window: Window, lateness_ms: i64) -> Job {
    // One key group: results of one watermark step come in key order (with many, in key-group order).
    Pipeline::new("t")
        .max_parallelism(1)
        .source("in")
        .key_by(key_of)
        .window(window)
        .allowed_lateness(ms(lateness_ms))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", result_record)
        .expect("valid pipeline")
}

const MIN: i64 = i64::MIN;

// ---------------------------------------------------------------------------------------------------------
// Examples.

#[test]
fn cumulative_windows_grow_by_a_step_and_each_fires_at_its_end() {
    let job = counting(Window::cumulative(ms(10_000), ms(30_000)), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("a", "", 12_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "0-10000:1")]));
    d.send(0, msg("b", "", 25_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "0-20000:2")]));
    d.send(0, msg("a", "", 31_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "0-30000:2"), ("b", "0-30000:1")])
    );
    // A straggler for [0, 30000) is late; one for [30000, 40000) is not.
    d.send(0, msg("a", "", 29_000));
    assert_eq!(d.late().len(), 1);
    d.send(0, msg("z", "", 100_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[
            ("a", "30000-40000:1"),
            ("a", "30000-50000:1"),
            ("a", "30000-60000:1")
        ])
    );
}

#[test]
fn cumulative_windows_keep_allowed_lateness_and_count_partially_late_records() {
    let job = counting(Window::cumulative(ms(10_000), ms(30_000)), 5_000);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("a", "", 17_000)); // [0,10000) closes at 15000
    assert_eq!(results(&d.outputs()), pairs(&[("a", "0-10000:1")]));
    d.send(0, msg("a", "", 2_000)); // late for [0,10000), counted in [0,20000) and [0,30000)
    assert!(d.late().is_empty());
    d.send(0, msg("a", "", 40_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "0-20000:3"), ("a", "0-30000:3")])
    );
    let m = d.metrics();
    assert_eq!(m.operator("3.window").expect("window").partially_late, 1);
}

#[test]
fn cumulative_max_size_must_be_a_multiple_of_the_step() {
    let r = Pipeline::new("t")
        .source("in")
        .key_by(key_of)
        .window(Window::cumulative(ms(10_000), ms(25_000)))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", result_record);
    assert!(r.is_err());
}

#[test]
fn sliding_windows_are_the_distinct_windows_kafka_streams_emits() {
    // d = 5000: records at 10000, 13000 and 20000 make the left windows [5000,10000], [8000,13000],
    // [15000,20000] and the right window of 10000, [10001,15001] (13000 falls in it); 13000's right window
    // would be empty. Results show the inclusive end + 1.
    let job = counting(Window::sliding(ms(5_000)), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 10_000));
    d.send(0, msg("a", "", 13_000)); // watermark 13000: [5000,10000] has closed
    assert_eq!(results(&d.outputs()), pairs(&[("a", "5000-10001:1")]));
    d.send(0, msg("a", "", 20_000));
    d.send(0, msg("z", "", 100_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[
            ("a", "8000-13001:2"),
            ("a", "10001-15002:1"),
            ("a", "15000-20001:1"),
        ])
    );
    assert!(d.late().is_empty());
}

#[test]
fn sliding_windows_late_and_partially_late_records() {
    let job = counting(Window::sliding(ms(5_000)), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 10_000));
    d.send(0, msg("a", "", 30_000)); // windows starting at or before 24999 have closed
    assert_eq!(results(&d.outputs()), pairs(&[("a", "5000-10001:1")]));
    d.send(0, msg("a", "straggler", 20_000)); // even its right window [20001, 25001] has closed
    let late = d.late();
    assert_eq!(late.len(), 1);
    assert_eq!(text(&late[0].value), "straggler");
    // Its left window [21000, 26000] has closed, but [25000, 30000] is open, and it makes [26001, 31001].
    d.send(0, msg("a", "", 26_000));
    assert!(d.late().is_empty());
    d.send(0, msg("z", "", 100_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "25000-30001:2"), ("a", "26001-31002:1")])
    );
    let m = d.metrics();
    let w = m.operator("3.window").expect("window");
    assert_eq!((w.late_records, w.partially_late), (1, 1));
}

#[test]
fn sliding_windows_keep_allowed_lateness() {
    let job = counting(Window::sliding(ms(5_000)), 2_000);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 10_000));
    d.send(0, msg("a", "", 12_000)); // [5000, 10000] closes at 10001 + 2000
    assert!(d.outputs().is_empty());
    // Counted in [5000, 10000] thanks to the lateness. Its own left window [4500, 9500] has closed: it is
    // partially late, and that window is never emitted. It makes [9501, 14501].
    d.send(0, msg("a", "", 9_500));
    d.send(0, msg("b", "", 12_500));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "5000-10001:2")]));
    d.send(0, msg("z", "", 100_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[
            ("a", "7000-12001:3"),
            ("b", "7500-12501:1"),
            ("a", "9501-14502:2"),
            ("a", "10001-15002:1"),
        ])
    );
    let m = d.metrics();
    let w = m.operator("3.window").expect("window");
    assert_eq!((w.late_records, w.partially_late), (0, 1));
}

#[test]
fn global_count_trigger_purges_or_accumulates() {
    let window = |t: Trigger| counting(Window::global(t), 0);
    let mut d = TestDriver::new(&window(Trigger::count(2)), 1);
    for ts in [5, 3, 9, 4, 7] {
        d.send(0, msg("a", "", ts));
    }
    let min = format!("{MIN}");
    assert_eq!(
        results(&d.outputs()),
        vec![
            ("a".into(), format!("{min}-5:2")),
            ("a".into(), format!("{min}-9:2"))
        ],
        "window_end is the largest timestamp in the result"
    );
    let mut d = TestDriver::new(&window(Trigger::count(2).accumulating()), 1);
    for ts in [5, 3, 9, 4, 7] {
        d.send(0, msg("a", "", ts));
    }
    assert_eq!(
        results(&d.outputs()),
        vec![
            ("a".into(), format!("{min}-5:2")),
            ("a".into(), format!("{min}-9:4"))
        ]
    );
    assert!(d.late().is_empty());
}

#[test]
fn global_event_time_trigger_fires_keys_due_when_the_watermark_crosses_a_multiple() {
    let job = counting(Window::global(Trigger::event_time(ms(10_000))), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("b", "", 2_000));
    d.send(0, msg("a", "", 5_000));
    assert!(d.outputs().is_empty());
    d.send(0, msg("a", "", 10_000)); // crosses 10000: the pane includes the element at 10000
    let min = format!("{MIN}");
    assert_eq!(
        results(&d.outputs()),
        vec![
            ("a".into(), format!("{min}-10000:3")),
            ("b".into(), format!("{min}-10000:1"))
        ]
    );
    d.send(0, msg("b", "", 15_000));
    d.send(0, msg("a", "", 25_000)); // crosses 20000: a's pending element is at 25000, not due yet
    assert_eq!(
        results(&d.outputs()),
        vec![("b".into(), format!("{min}-20000:1"))]
    );
    // An element behind the watermark is not late: it is due at the next multiple crossed.
    d.send(0, msg("c", "", 3_000));
    d.send(0, msg("z", "", 47_000));
    assert_eq!(
        results(&d.outputs()),
        vec![
            ("a".into(), format!("{min}-40000:1")),
            ("c".into(), format!("{min}-40000:1"))
        ]
    );
    assert!(d.late().is_empty());
}

#[test]
fn global_processing_time_trigger_fires_when_time_crosses_a_multiple() {
    let job = counting(Window::global(Trigger::processing_time(ms(1_000))), 0);
    let mut d = TestDriver::new(&job, 1);
    d.advance_time(0); // the operator learns where processing time is
    d.send(0, msg("a", "", 1));
    d.send(0, msg("b", "", 2));
    d.send(0, msg("a", "", 3));
    d.advance_time(999);
    assert!(d.outputs().is_empty());
    d.advance_time(1);
    let min = format!("{MIN}");
    assert_eq!(
        results(&d.outputs()),
        vec![
            ("a".into(), format!("{min}-1000:2")),
            ("b".into(), format!("{min}-1000:1"))
        ]
    );
    d.advance_time(5_000);
    assert!(d.outputs().is_empty(), "no new elements, no result");
    d.send(0, msg("b", "", 4));
    d.advance_time(1_000);
    assert_eq!(
        results(&d.outputs()),
        vec![("b".into(), format!("{min}-7000:1"))]
    );
}

/// Fires a key at 3 elements, or once its elements span 1000 ms of event time, or (on the watermark) once the
/// watermark is 5000 ms past its first element.
struct Batch(#[allow(dead_code)] u8);

impl CustomTrigger for Batch {
    fn on_element(&self, pane: &Pane, _ts: i64) -> bool {
        pane.count >= 3 || pane.max_ts - pane.min_ts >= 1_000
    }
    fn on_watermark(&self, pane: &Pane, watermark: i64) -> bool {
        watermark - pane.min_ts >= 5_000
    }
    fn uses_time(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "batch"
    }
}

static BATCH: Batch = Batch(0);

#[test]
fn global_custom_trigger_decides_on_elements_and_time() {
    let job = counting(Window::global(Trigger::custom(&BATCH)), 0);
    assert!(job.plan().contains("Custom(batch)"), "{}", job.plan());
    let mut d = TestDriver::new(&job, 1);
    let min = format!("{MIN}");
    d.send(0, msg("a", "", 100));
    d.send(0, msg("a", "", 200));
    d.send(0, msg("a", "", 300));
    assert_eq!(
        results(&d.outputs()),
        vec![("a".into(), format!("{min}-300:3"))]
    );
    d.send(0, msg("b", "", 400));
    d.send(0, msg("b", "", 1_400)); // spans 1000 ms
    assert_eq!(
        results(&d.outputs()),
        vec![("b".into(), format!("{min}-1400:2"))]
    );
    d.send(0, msg("c", "", 1_500));
    d.send(0, msg("d", "", 6_500)); // watermark 6500: c's first element is 5000 ms behind
    assert_eq!(
        results(&d.outputs()),
        vec![("c".into(), format!("{min}-6500:1"))]
    );
}

// ---------------------------------------------------------------------------------------------------------
// Aggregations through a pipeline.

fn tumbling<A>(agg: A, f: impl Fn(A::Out) -> String + Send + Sync + Clone + 'static) -> Job
where
    A: millrace_processor::Aggregator<Message>,
    A::Out: Clone + 'static,
{
    // One key group: results of one watermark step come in key order (with many, in key-group order).
    Pipeline::new("t")
        .max_parallelism(1)
        .source("in")
        .key_by(key_of)
        .window(Window::tumbling(ms(10_000)))
        .late_topic("late")
        .aggregate(agg)
        .sink("out", move |r| {
            OutRecord::new(Some(r.key), Some(f(r.value).into()), r.window_end - 1)
        })
        .expect("valid pipeline")
}

fn value_of(m: &Message) -> Bytes {
    m.value.clone().unwrap_or_default()
}

#[test]
fn count_distinct_exact_and_approximate() {
    let feed = |d: &mut TestDriver, n: u64| {
        for i in 0..n {
            d.send(0, msg("a", &format!("v{}", i % 700), 1_000));
        }
        d.send(0, msg("z", "", 20_000));
    };
    let job = tumbling(CountDistinct(value_of), |n| n.to_string());
    let mut d = TestDriver::new(&job, 1);
    feed(&mut d, 2_000);
    assert_eq!(text(&d.outputs()[0].value), "700");

    let job = tumbling(ApproxCountDistinct::new(value_of), |n| n.to_string());
    let mut d = TestDriver::new(&job, 1);
    feed(&mut d, 2_000);
    let est: f64 = text(&d.outputs()[0].value).parse().expect("a number");
    assert!((est - 700.0).abs() <= 14.0, "estimate {est}");

    // 100 000 distinct values, with a checkpoint and restore in the middle (the sketch goes dense first).
    let job = tumbling(ApproxCountDistinct::new(value_of), |n| n.to_string());
    let mut d = TestDriver::new(&job, 1);
    for i in 0..60_000u32 {
        d.send(0, msg("a", &i.to_string(), 1_000));
    }
    let snap = d.checkpoint();
    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    for i in 60_000..100_000u32 {
        d.send(0, msg("a", &i.to_string(), 1_000));
    }
    d.send(0, msg("z", "", 20_000));
    let est: f64 = text(&d.outputs()[0].value).parse().expect("a number");
    assert!((est - 100_000.0).abs() <= 2_000.0, "estimate {est}");
}

#[test]
fn top_n_and_collect_list() {
    let score = |m: &Message| text(&m.value).parse::<f64>().unwrap_or(0.0);
    let job = tumbling(TopN::new(3, value_of, score), |v: Vec<(f64, Bytes)>| {
        v.iter()
            .map(|(s, v)| format!("{s}={}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .join(",")
    });
    let mut d = TestDriver::new(&job, 1);
    for v in ["4", "1", "7", "3", "9", "7"] {
        d.send(0, msg("a", v, 1_000));
    }
    d.send(0, msg("z", "", 20_000));
    assert_eq!(text(&d.outputs()[0].value), "9=9,7=7,7=7");

    let job = tumbling(
        CollectList::new(3, |m: &Message| text(&m.value)),
        |c: Collected<String>| format!("{}+{}", c.items.join(","), c.dropped),
    );
    let mut d = TestDriver::new(&job, 1);
    for v in ["4", "1", "7", "3", "9"] {
        d.send(0, msg("a", v, 1_000));
    }
    let snap = d.checkpoint();
    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    d.send(0, msg("a", "8", 1_000));
    d.send(0, msg("z", "", 20_000));
    assert_eq!(
        text(&d.outputs()[0].value),
        "4,1,7+3",
        "beyond the cap, counted"
    );
}

#[test]
fn new_aggregations_merge_in_session_and_sliding_windows() {
    let job = Pipeline::new("t")
        .out_of_orderness(ms(30_000))
        .source("in")
        .key_by(key_of)
        .window(Window::session(ms(5_000)))
        .late_topic("late")
        .aggregate(CountDistinct(value_of))
        .sink("out", result_record)
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("c", "x", 21_000));
    d.send(0, msg("c", "y", 29_000));
    d.send(0, msg("c", "x", 25_000)); // bridges the two sessions
    d.send(0, msg("z", "", 100_000));
    assert_eq!(results(&d.outputs()), pairs(&[("c", "21000-34000:2")]));

    let job = Pipeline::new("t")
        .source("in")
        .key_by(key_of)
        .window(Window::sliding(ms(5_000)))
        .late_topic("late")
        .aggregate(CollectList::new(10, |m: &Message| text(&m.value)))
        .sink("out", |r| {
            let v = format!("{}:{}", r.window_start, r.value.items.join(","));
            OutRecord::new(Some(r.key), Some(v.into()), r.window_end - 1)
        })
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "p", 10_000));
    d.send(0, msg("a", "q", 13_000));
    d.send(0, msg("z", "", 100_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "5000:p"), ("a", "8000:p,q"), ("a", "10001:q")])
    );
}

// ---------------------------------------------------------------------------------------------------------
// Property tests: each window kind against a brute-force reference.

/// One result: key, window start, window end, count, and a sum of mixed element ids (which identifies the
/// set of elements with near certainty).
type Row = (String, i64, i64, u64, u64);

fn mix(id: u64) -> u64 {
    let mut x = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn id_of(m: &Message) -> u64 {
    text(&m.value).parse().unwrap_or(0)
}

/// A pipeline that counts and fingerprints the elements of each window.
fn fingerprint_job(window: Window, out_of_orderness_ms: i64) -> Job {
    // One key group: results of one watermark step come in key order (with many, in key-group order).
    Pipeline::new("t")
        .max_parallelism(1)
        .out_of_orderness(ms(out_of_orderness_ms))
        .source("in")
        .key_by(key_of)
        .window(window)
        .late_topic("late")
        .aggregate(Fold {
            init: (0u64, 0u64),
            add: |acc: &mut (u64, u64), m: &Message| {
                acc.0 += 1;
                acc.1 = acc.1.wrapping_add(mix(id_of(m)));
            },
            merge: |acc: &mut (u64, u64), o: (u64, u64)| {
                acc.0 += o.0;
                acc.1 = acc.1.wrapping_add(o.1);
            },
        })
        .sink("out", |r| {
            let v = format!(
                "{} {} {} {}",
                r.window_start, r.window_end, r.value.0, r.value.1
            );
            OutRecord::new(Some(r.key), Some(v.into()), 0)
        })
        .expect("valid pipeline")
}

fn rows(out: &[OutRecord]) -> Vec<Row> {
    out.iter()
        .filter(|r| text(&r.key) != "zz")
        .map(|r| {
            let v = text(&r.value);
            let f: Vec<&str> = v.split(' ').collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
            (
                text(&r.key),
                n(0),
                n(1),
                n(2) as u64,
                f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
            )
        })
        .collect()
}

/// An input record: (key, event time, id).
type In = (String, i64, u64);

/// Records in arrival order, each at most `disorder` behind the largest event time before it (so none is
/// late): a non-decreasing base time, less a jitter.
fn records(disorder: i64) -> impl Strategy<Value = Vec<In>> {
    proptest::collection::vec((0usize..3, 0i64..400, 0i64..=disorder), 0..60).prop_map(|v| {
        let mut base = 0i64;
        v.into_iter()
            .enumerate()
            .map(|(i, (k, step, jitter))| {
                base += step;
                (["a", "b", "c"][k].to_string(), base - jitter, i as u64)
            })
            .collect()
    })
}

/// Feeds `input` into a driver (checkpointing and restoring before record `restart_at`, if given), then a
/// record of key "zz" far in the future that closes every window; returns the results.
fn run(job: &Job, input: &[In], restart_at: Option<usize>) -> Vec<Row> {
    let mut d = TestDriver::new(job, 1);
    let mut out = Vec::new();
    for (i, (k, ts, id)) in input.iter().enumerate() {
        if restart_at == Some(i) {
            out.extend(d.outputs());
            let snap = d.checkpoint();
            d = TestDriver::restore(job, 1, &snap).expect("restore");
        }
        d.send(0, msg(k, &id.to_string(), *ts));
    }
    d.send(0, msg("zz", "0", 10_000_000));
    assert!(d.late().is_empty(), "nothing is late");
    out.extend(d.outputs());
    rows(&out)
}

fn row(key: &str, start: i64, end: i64, elements: &[&In]) -> Row {
    let sum = elements.iter().fold(0u64, |s, e| s.wrapping_add(mix(e.2)));
    (key.to_string(), start, end, elements.len() as u64, sum)
}

fn by_key(input: &[In]) -> BTreeMap<&str, Vec<&In>> {
    let mut m: BTreeMap<&str, Vec<&In>> = BTreeMap::new();
    for r in input {
        m.entry(r.0.as_str()).or_default().push(r);
    }
    m
}

/// Every cumulative window of every element, from the definition.
fn cumulative_reference(input: &[In], step: i64, max: i64) -> Vec<Row> {
    let mut out = Vec::new();
    for (k, recs) in by_key(input) {
        let mut windows = BTreeSet::new();
        for r in &recs {
            let start = r.1.div_euclid(max) * max;
            for j in 1..=max / step {
                if start + j * step > r.1 {
                    windows.insert((start, start + j * step));
                }
            }
        }
        for (s, e) in windows {
            let inside: Vec<&In> = recs
                .iter()
                .copied()
                .filter(|r| s <= r.1 && r.1 < e)
                .collect();
            out.push(row(k, s, e, &inside));
        }
    }
    out
}

/// Kafka Streams' sliding windows, from the definition: the left window of every record, and the right
/// window of every record that another record falls in.
fn sliding_reference(input: &[In], d: i64) -> Vec<Row> {
    let mut out = Vec::new();
    for (k, recs) in by_key(input) {
        let mut starts = BTreeSet::new();
        for r in &recs {
            starts.insert(r.1 - d);
            if recs.iter().any(|u| r.1 < u.1 && u.1 <= r.1 + 1 + d) {
                starts.insert(r.1 + 1);
            }
        }
        for s in starts {
            let inside: Vec<&In> = recs
                .iter()
                .copied()
                .filter(|r| s <= r.1 && r.1 <= s + d)
                .collect();
            out.push(row(k, s, s + d + 1, &inside));
        }
    }
    out
}

/// Count-triggered global windows, element by element.
fn count_reference(input: &[In], n: u64, purge: bool) -> Vec<Row> {
    let mut panes: BTreeMap<&str, (Vec<&In>, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for r in input {
        let (acc, since) = panes.entry(r.0.as_str()).or_default();
        acc.push(r);
        *since += 1;
        if *since == n {
            let end = acc.iter().map(|r| r.1).max().unwrap_or(MIN);
            out.push(row(&r.0, MIN, end, acc));
            *since = 0;
            if purge {
                acc.clear();
            }
        }
    }
    out
}

/// Event-time-triggered global windows: the watermark as the driver computes it (one partition: the largest
/// event time less the disorder), every key scanned at each multiple crossed.
fn event_time_reference(input: &[In], interval: i64, disorder: i64) -> Vec<Row> {
    let mut panes: BTreeMap<String, Vec<&In>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut wm = MIN;
    let mut max_ts = MIN;
    let closer = ("zz".to_string(), 10_000_000, 0);
    for r in input.iter().chain(std::iter::once(&closer)) {
        panes.entry(r.0.clone()).or_default().push(r);
        max_ts = max_ts.max(r.1);
        let new = max_ts - disorder;
        if new > wm {
            let m = new.div_euclid(interval) * interval;
            if wm == MIN || m > wm.div_euclid(interval) * interval {
                for (k, pane) in panes.iter_mut() {
                    if pane.iter().any(|e| e.1 < m) {
                        out.push(row(k, MIN, m, pane));
                        pane.clear();
                    }
                }
            }
            wm = new;
        }
    }
    out.retain(|r| r.0 != "zz");
    out
}

fn sorted(mut v: Vec<Row>) -> Vec<Row> {
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn cumulative_matches_the_definition(input in records(500), step in 1i64..400, steps in 1i64..6,
                                         restart in proptest::option::of(0usize..60)) {
        let job = fingerprint_job(Window::cumulative(ms(step), ms(step * steps)), 500);
        let got = run(&job, &input, restart);
        // Emitted by end, then key.
        prop_assert!(got.windows(2).all(|w| (w[0].2, &w[0].0) <= (w[1].2, &w[1].0)), "{:?}", got);
        prop_assert_eq!(sorted(got), cumulative_reference(&input, step, step * steps));
    }

    #[test]
    fn sliding_matches_kafka_streams_windows(input in records(500), d in 1i64..800,
                                             restart in proptest::option::of(0usize..60)) {
        let job = fingerprint_job(Window::sliding(ms(d)), 500);
        let got = run(&job, &input, restart);
        // Emitted by start (they all have one size), then key; each window once.
        prop_assert!(got.windows(2).all(|w| (w[0].1, &w[0].0) < (w[1].1, &w[1].0)), "{:?}", got);
        prop_assert_eq!(sorted(got), sliding_reference(&input, d));
    }

    #[test]
    fn global_count_matches_the_definition(input in records(500), n in 1u64..5, purge in any::<bool>(),
                                           restart in proptest::option::of(0usize..60)) {
        let t = if purge { Trigger::count(n) } else { Trigger::count(n).accumulating() };
        let job = fingerprint_job(Window::global(t), 500);
        let got = run(&job, &input, restart);
        prop_assert_eq!(got, count_reference(&input, n, purge));
    }

    #[test]
    fn global_event_time_matches_the_definition(input in records(300), interval in 1i64..1_000,
                                                restart in proptest::option::of(0usize..60)) {
        let job = fingerprint_job(Window::global(Trigger::event_time(ms(interval))), 300);
        let got = run(&job, &input, restart);
        prop_assert_eq!(got, event_time_reference(&input, interval, 300));
    }

    #[test]
    fn global_processing_time_matches_the_definition(
        script in proptest::collection::vec(prop_oneof![
            (0usize..3).prop_map(Some),
            Just(None),
        ], 0..80),
        advance in 1i64..700, interval in 1i64..1_000,
    ) {
        // Some(k): an element of key k; None: processing time moves by `advance`.
        let job = fingerprint_job(Window::global(Trigger::processing_time(ms(interval))), 0);
        let mut d = TestDriver::new(&job, 1);
        let mut panes: BTreeMap<String, Vec<In>> = BTreeMap::new();
        let mut want = Vec::new();
        // The driver tells operators processing time 0 when it starts: the trigger knows where time is.
        let (mut now, mut fired): (i64, Option<i64>) = (0, Some(0));
        for (i, step) in script.iter().enumerate() {
            match step {
                Some(k) => {
                    let r: In = (["a", "b", "c"][*k].to_string(), i as i64, i as u64);
                    d.send(0, msg(&r.0, &r.2.to_string(), r.1));
                    panes.entry(r.0.clone()).or_default().push(r);
                }
                None => {
                    d.advance_time(advance);
                    now += advance;
                    let m = now.div_euclid(interval) * interval;
                    match fired {
                        Some(f) if m > f => {
                            for (k, pane) in panes.iter_mut() {
                                if !pane.is_empty() {
                                    let refs: Vec<&In> = pane.iter().collect();
                                    want.push(row(k, MIN, m, &refs));
                                    pane.clear();
                                }
                            }
                            fired = Some(m);
                        }
                        Some(_) => {}
                        None => fired = Some(m),
                    }
                }
            }
        }
        prop_assert_eq!(rows(&d.outputs()), want);
    }
}

#[test]
fn processing_time_panes_survive_a_restore_and_fire_at_the_next_multiple() {
    let job = counting(Window::global(Trigger::processing_time(ms(1_000))), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1));
    d.send(0, msg("a", "", 2));
    let snap = d.checkpoint();
    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    d.advance_time(500); // learns where time is
    assert!(d.outputs().is_empty());
    d.advance_time(500);
    assert_eq!(
        results(&d.outputs()),
        vec![("a".into(), format!("{MIN}-1000:2"))]
    );
}

#[test]
fn custom_trigger_panes_survive_a_restore() {
    let job = counting(Window::global(Trigger::custom(&BATCH)), 0);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 100));
    d.send(0, msg("a", "", 200));
    d.send(0, msg("c", "", 300));
    let snap = d.checkpoint();
    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    d.send(0, msg("a", "", 250));
    assert_eq!(
        results(&d.outputs()),
        vec![("a".into(), format!("{MIN}-250:3"))]
    );
    d.send(0, msg("d", "", 5_300)); // c's pane is still pending, and due on the watermark
    assert_eq!(
        results(&d.outputs()),
        vec![("c".into(), format!("{MIN}-5300:1"))]
    );
}
