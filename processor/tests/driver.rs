//! Operator and window semantics, run in virtual time with the test driver.

use std::time::Duration;

use bytes::Bytes;
use millrace_processor::{
    Avg, Collector, Count, Fold, Max, Message, Min, Operator, OutRecord, Pipeline, Reduce, Sum,
    TestDriver, Window, WindowResult,
};

fn msg(key: &str, value: &str, ts: i64) -> Message {
    Message::new(Some(key.as_bytes()), Some(value.as_bytes()), ts)
}

fn key_of(m: &Message) -> Bytes {
    m.key.clone().unwrap_or_default()
}

fn text(b: &Option<Bytes>) -> String {
    String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
}

/// (key, "start-end:value") of window results written by [`result_record`].
/// Results by key: a watermark step emits its windows in key-group order, which is not key order.
fn results(out: &[OutRecord]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out.iter().map(|r| (text(&r.key), text(&r.value))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn result_record<V: std::fmt::Display>(r: WindowResult<Bytes, V>) -> OutRecord {
    let v = format!("{}-{}:{}", r.window_start, r.window_end, r.value);
    OutRecord::new(Some(r.key), Some(v.into()), r.window_end - 1)
}

fn counting(window: Window) -> millrace_processor::Job {
    Pipeline::new("t")
        .idle_timeout(Duration::from_secs(5))
        .source("in")
        .key_by(key_of)
        .window(window)
        .late_topic("late")
        .aggregate(Count)
        .sink("out", result_record)
        .expect("valid pipeline")
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn tumbling_counts_emit_once_when_the_watermark_passes_the_end() {
    let job = counting(Window::tumbling(Duration::from_secs(10)));
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("b", "", 2_000));
    d.send(0, msg("a", "", 9_999));
    assert!(d.outputs().is_empty(), "window [0, 10000) is open");
    d.send(0, msg("a", "", 10_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "0-10000:2"), ("b", "0-10000:1")])
    );
    d.send(0, msg("b", "", 25_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "10000-20000:1")]));
    assert!(d.late().is_empty());
}

#[test]
fn late_records_go_unchanged_to_the_late_topic() {
    let job = counting(Window::tumbling(Duration::from_secs(10)));
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "first", 1_000));
    d.send(0, msg("a", "closer", 12_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "0-10000:1")]));
    d.send(0, msg("a", "straggler", 5_000));
    let late = d.late();
    assert_eq!(late.len(), 1);
    assert_eq!(text(&late[0].value), "straggler");
    assert_eq!(late[0].timestamp, 5_000);
    assert_eq!(text(&late[0].key), "a");
    // It was not counted anywhere.
    d.send(0, msg("a", "", 30_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "10000-20000:1")]));
    let m = d.metrics();
    let w = m.operator("3.window").expect("window metrics");
    assert_eq!(w.late_records, 1);
}

#[test]
fn allowed_lateness_keeps_windows_open_and_emits_once() {
    let job = Pipeline::new("t")
        .source("in")
        .key_by(key_of)
        .window(Window::tumbling(Duration::from_secs(10)))
        .allowed_lateness(Duration::from_secs(5))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", result_record)
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("a", "", 12_000));
    assert!(d.outputs().is_empty(), "open until 15000");
    d.send(0, msg("a", "", 3_000)); // within the lateness: counted
    d.send(0, msg("a", "", 15_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "0-10000:2")]));
    d.send(0, msg("a", "", 4_000));
    assert_eq!(d.late().len(), 1);
}

#[test]
fn hopping_windows_count_each_record_in_every_window_it_falls_in() {
    let job = counting(Window::hopping(
        Duration::from_secs(10),
        Duration::from_secs(5),
    ));
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 6_000)); // [0,10) and [5,15)
    d.send(0, msg("a", "", 11_000)); // [5,15) and [10,20)
    d.send(0, msg("a", "", 30_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[
            ("a", "0-10000:1"),
            ("a", "5000-15000:2"),
            ("a", "10000-20000:1"),
        ])
    );
}

#[test]
fn session_windows_merge_and_close_after_the_gap() {
    let job = counting(Window::session(Duration::from_secs(5)));
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("a", "", 4_000)); // joins [1000, 6000) -> [1000, 9000)
    d.send(0, msg("b", "", 4_500));
    d.send(0, msg("a", "", 20_000)); // closes a's first session and b's
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "1000-9000:2"), ("b", "4500-9500:1")])
    );
    d.send(0, msg("z", "", 60_000));
    assert_eq!(results(&d.outputs()), pairs(&[("a", "20000-25000:1")]));

    // Two open sessions of one key, bridged by a record in between, merge into one.
    let job = Pipeline::new("t")
        .out_of_orderness(Duration::from_secs(30))
        .source("in")
        .key_by(key_of)
        .window(Window::session(Duration::from_secs(5)))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", result_record)
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("c", "", 21_000));
    d.send(0, msg("c", "", 29_000));
    d.send(0, msg("c", "", 25_000));
    d.send(0, msg("z", "", 100_000));
    assert_eq!(results(&d.outputs()), pairs(&[("c", "21000-34000:3")]));
}

#[test]
fn watermark_is_the_minimum_over_partitions_until_one_goes_idle() {
    let job = counting(Window::tumbling(Duration::from_secs(10)));
    let mut d = TestDriver::new(&job, 2);
    d.send(0, msg("a", "", 1_000));
    d.send(0, msg("a", "", 50_000));
    assert!(d.outputs().is_empty(), "partition 1 has not spoken");
    d.send(1, msg("b", "", 2_000));
    assert!(d.outputs().is_empty(), "partition 1 is at 2000");
    d.send(1, msg("b", "", 12_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "0-10000:1"), ("b", "0-10000:1")])
    );
    // Partition 1 goes quiet: after the idle timeout it no longer holds the watermark back.
    d.advance_time(4_000);
    assert!(d.outputs().is_empty());
    d.advance_time(1_000);
    assert_eq!(d.watermark(), 50_000);
    assert_eq!(results(&d.outputs()), pairs(&[("b", "10000-20000:1")]));
    // Partition 0 has been quiet as long: both are idle, and the watermark is the larger of theirs. When input
    // resumes after every partition went quiet, every partition counts again (the others may have records on
    // their way) until it has been quiet for the idle timeout once more.
    d.send(1, msg("b", "", 51_000));
    assert_eq!(d.watermark(), 50_000, "partition 0 holds it back again");
    d.advance_time(5_000);
    assert_eq!(
        d.watermark(),
        51_000,
        "partition 0 idle again: partition 1 alone"
    );
    d.send(0, msg("a", "", 60_000));
    assert_eq!(
        d.watermark(),
        51_000,
        "minimum over the two active partitions"
    );
}

#[test]
fn key_by_routes_each_key_to_one_task() {
    let job = counting(Window::tumbling(Duration::from_secs(10)));
    let mut d = TestDriver::new(&job, 3);
    for p in 0..3 {
        for i in 0..10 {
            d.send(p, msg(&format!("k{i}"), "", 1_000 + i as i64));
        }
    }
    for p in 0..3 {
        d.send(p, msg("end", "", 100_000));
    }
    let out = results(&d.outputs());
    // One result per key for the first window, each counting the key's records from all three partitions.
    let first: Vec<_> = out
        .iter()
        .filter(|(_, v)| v.starts_with("0-10000"))
        .collect();
    assert_eq!(first.len(), 10, "{out:?}");
    assert!(first.iter().all(|(_, v)| v.ends_with(":3")), "{out:?}");
}

#[test]
fn stateless_steps_and_event_time_from_the_value() {
    let job = Pipeline::new("t")
        .source("in")
        .event_time(|m: &Message| {
            std::str::from_utf8(m.value.as_deref()?)
                .ok()?
                .split(',')
                .nth(1)?
                .parse()
                .ok()
        })
        .filter(|m: &Message| m.value.as_deref().is_some_and(|v| !v.starts_with(b"skip")))
        .flat_map(|m: Message| vec![m.clone(), m])
        .map(|m: Message| OutRecord::new(m.key, m.value, m.timestamp))
        .sink("out", |r| r)
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "keep,123", 1));
    d.send(0, msg("a", "skip,456", 2));
    let out = d.outputs();
    assert_eq!(out.len(), 2);
    assert_eq!(text(&out[0].value), "keep,123");
    assert_eq!(d.watermark(), 456, "event time came from the value");
}

#[test]
fn aggregations() {
    let number = |m: &Message| text(&m.value).parse::<f64>().unwrap_or(0.0);
    let feed = |d: &mut TestDriver| {
        for (i, v) in ["4", "1", "7"].iter().enumerate() {
            d.send(0, msg("a", v, 1_000 + i as i64));
        }
        d.send(0, msg("z", "0", 20_000));
    };
    macro_rules! check {
        ($agg:expr, $want:expr) => {{
            let job = Pipeline::new("t")
                .source("in")
                .key_by(key_of)
                .window(Window::tumbling(Duration::from_secs(10)))
                .late_topic("late")
                .aggregate($agg)
                .sink("out", result_record)
                .expect("valid pipeline");
            let mut d = TestDriver::new(&job, 1);
            feed(&mut d);
            assert_eq!(results(&d.outputs()), pairs(&[("a", $want)]));
        }};
    }
    check!(Sum(number), "0-10000:12");
    check!(Min(number), "0-10000:1");
    check!(Max(number), "0-10000:7");
    check!(Avg(number), "0-10000:4");
    check!(
        Fold {
            init: String::new(),
            add: move |acc: &mut String, m: &Message| acc.push_str(&text(&m.value)),
            merge: |acc: &mut String, o: String| acc.push_str(&o),
        },
        "0-10000:417"
    );
    let job = Pipeline::new("t")
        .source("in")
        .map(|m: Message| text(&m.value).parse::<i64>().unwrap_or(0))
        .key_by(|_: &i64| String::from("all"))
        .window(Window::tumbling(Duration::from_secs(10)))
        .late_to("late", None, |k: &String, v: &i64, ts| {
            OutRecord::new(Some(k.clone().into()), Some(v.to_string().into()), ts)
        })
        .aggregate(Reduce(|a: &i64, b: &i64| *a.max(b)))
        .sink("out", |r| {
            OutRecord::new(
                None,
                Some(format!("{:?}", r.value).into()),
                r.window_end - 1,
            )
        })
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    feed(&mut d);
    assert_eq!(text(&d.outputs()[0].value), "Some(7)");
}

#[test]
fn state_survives_a_checkpoint_and_restore() {
    let job = counting(Window::tumbling(Duration::from_secs(10)));
    let mut d = TestDriver::new(&job, 2);
    d.send(0, msg("a", "", 1_000));
    d.send(1, msg("a", "", 2_000));
    d.send(1, msg("b", "", 3_000));
    let snap = d.checkpoint();
    drop(d);
    let mut d = TestDriver::restore(&job, 2, &snap).expect("restore");
    d.send(0, msg("a", "", 4_000));
    d.send(0, msg("x", "", 40_000));
    d.send(1, msg("x", "", 40_000));
    assert_eq!(
        results(&d.outputs()),
        pairs(&[("a", "0-10000:3"), ("b", "0-10000:1")])
    );
}

/// A custom operator with state: numbers each record per task, and keeps the counter across restarts.
struct Numbering {
    next: u64,
}

impl Operator<Message> for Numbering {
    type Out = OutRecord;
    fn process(&mut self, timestamp: i64, m: Message, out: &mut dyn Collector<OutRecord>) {
        self.next += 1;
        out.emit(
            timestamp,
            OutRecord::new(m.key, Some(self.next.to_string().into()), timestamp),
        );
    }
    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        state.extend_from_slice(&self.next.to_be_bytes());
    }
    fn on_restore(&mut self, state: &[u8]) -> millrace_processor::Result<()> {
        let b: [u8; 8] = state
            .try_into()
            .map_err(|_| millrace_processor::Error::CorruptState("numbering".into()))?;
        self.next = u64::from_be_bytes(b);
        Ok(())
    }
}

#[test]
fn custom_operator_state_is_found_by_its_id() {
    let job = Pipeline::new("t")
        .source("in")
        .process(|| Numbering { next: 0 })
        .uid("numbering")
        .sink("out", |r| r)
        .expect("valid pipeline");
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "", 1));
    d.send(0, msg("a", "", 2));
    let snap = d.checkpoint();
    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    d.send(0, msg("a", "", 3));
    assert_eq!(text(&d.outputs()[0].value), "3");
    assert!(d.metrics().operator("numbering").is_some());
}

#[test]
fn windows_without_a_late_topic_are_refused() {
    let r = Pipeline::new("t")
        .source("in")
        .key_by(key_of)
        .window(Window::tumbling(Duration::from_secs(1)))
        .aggregate(Count)
        .sink("out", result_record);
    assert!(r.is_err());
    let r = Pipeline::new("t")
        .source("in")
        .map(OutRecord::from)
        .sink("in", |r| r);
    assert!(r.is_err(), "reading and writing one topic is a loop");
}
