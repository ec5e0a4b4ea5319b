//! Graphs in the test driver: several sources, unions, branches and several sinks, chains of exchanges,
//! tables (from topics and from streams) and their joins, watermarks combined over inputs, rescaling, and
//! the end of bounded input.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use millrace_processor::{
    Count, JoinKind, Message, OutRecord, Pipeline, Sum, TestDriver, Window, WindowResult,
};
use proptest::prelude::*;

fn msg(key: &str, value: &str, ts: i64) -> Message {
    Message::new(Some(key.as_bytes()), Some(value.as_bytes()), ts)
}

fn text(b: &Option<Bytes>) -> String {
    String::from_utf8_lossy(b.as_deref().unwrap_or_default()).to_string()
}

fn key_of(m: &Message) -> Bytes {
    m.key.clone().unwrap_or_default()
}

fn counts(r: WindowResult<Bytes, u64>) -> OutRecord {
    let v = format!("{}:{}", r.window_start, r.value);
    OutRecord::new(Some(r.key), Some(v.into()), r.window_end - 1)
}

fn sorted(out: &[OutRecord]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out.iter().map(|r| (text(&r.key), text(&r.value))).collect();
    v.sort();
    v
}

#[test]
fn a_union_of_two_sources_counts_both() {
    let p = Pipeline::new("t");
    let a = p.source("a");
    let b = p.source("b");
    let job = a
        .union(b)
        .key_by(key_of)
        .window(Window::tumbling(Duration::from_secs(10)))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", counts)
        .unwrap();
    assert_eq!(job.sources().len(), 2);
    let mut d = TestDriver::new(&job, 2);
    d.send_to(0, 0, msg("k", "", 1_000));
    d.send_to(1, 1, msg("k", "", 2_000));
    d.send_to(0, 1, msg("j", "", 3_000));
    // Every partition of both sources must pass 10 000 before the window closes.
    for (s, part) in [(0, 0), (0, 1), (1, 0)] {
        assert!(d.outputs().is_empty());
        d.send_to(s, part, msg("z", "", 20_000));
    }
    assert!(
        d.outputs().is_empty(),
        "source b partition 1 still holds the watermark back"
    );
    d.send_to(1, 1, msg("z", "", 20_000));
    assert_eq!(
        sorted(&d.outputs()),
        [("j".into(), "0:1".into()), ("k".into(), "0:2".into())]
    );
}

#[test]
fn one_stream_feeds_two_sinks_and_split_sends_each_element_one_way() {
    let p = Pipeline::new("t");
    let s = p.source("in");
    s.clone().to("copy", |m: Message| m.into());
    let (big, small) = s.split(|m: &Message| m.value.as_deref().is_some_and(|v| v.len() > 3));
    big.to("big", |m: Message| m.into());
    small.to("small", |m: Message| m.into());
    let job = p.build().unwrap();
    assert_eq!(job.sinks().len(), 3);
    let mut d = TestDriver::new(&job, 1);
    d.send(0, msg("a", "xxxxx", 1));
    d.send(0, msg("b", "x", 2));
    assert_eq!(d.outputs_of("copy").len(), 2);
    assert_eq!(sorted(&d.outputs_of("big")), [("a".into(), "xxxxx".into())]);
    assert_eq!(sorted(&d.outputs_of("small")), [("b".into(), "x".into())]);
}

/// Clicks per (user, 10 s window), then the total clicks per window summed over users: two exchanges in a
/// row (by user, then by window), so the second window depends on the watermark reaching it after the first
/// stage's results.
fn two_stage_job(parallelism: usize) -> millrace_processor::Job {
    Pipeline::new("t")
        .parallelism(parallelism)
        .out_of_orderness(Duration::from_secs(2))
        .source("clicks")
        .key_by(key_of)
        .window(Window::tumbling(Duration::from_secs(10)))
        .late_topic("late")
        .aggregate(Count)
        .uid("per-user")
        .key_by(|r: &WindowResult<Bytes, u64>| r.window_start)
        .window(Window::tumbling(Duration::from_secs(10)))
        .late_to("late2", None, |_, r: &WindowResult<Bytes, u64>, ts| {
            OutRecord::new(Some(r.key.clone()), None, ts)
        })
        .aggregate(Sum(|r: &WindowResult<Bytes, u64>| r.value as f64))
        .uid("total")
        .sink("out", |r: WindowResult<i64, f64>| {
            OutRecord::new(
                None,
                Some(format!("{}:{}", r.key, r.value).into()),
                r.window_end - 1,
            )
        })
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn two_exchanges_in_a_row_give_exact_totals_at_any_parallelism(
        clicks in proptest::collection::vec((0u8..6, 0i64..60_000), 1..120),
        jitter in proptest::collection::vec(0i64..2_000, 120),
        parallelism in 1usize..5,
        partitions in 1usize..4,
    ) {
        let job = two_stage_job(parallelism);
        let mut d = TestDriver::new(&job, partitions);
        // Arrival order: by time plus a delay below the out-of-orderness bound (never late).
        let mut order: Vec<(i64, usize)> = clicks.iter().enumerate().map(|(i, (_, ts))| (ts + jitter[i], i)).collect();
        order.sort();
        for (_, i) in order {
            let (user, ts) = clicks[i];
            d.send(usize::from(user) % partitions, msg(&format!("u{user}"), "", ts));
        }
        d.finish();
        prop_assert!(d.late().is_empty());
        let mut want: BTreeMap<i64, u64> = BTreeMap::new();
        for (_, ts) in &clicks {
            *want.entry(ts / 10_000 * 10_000).or_default() += 1;
        }
        let mut got = BTreeMap::new();
        for r in d.outputs() {
            let v = text(&r.value);
            let (w, n) = v.split_once(':').unwrap();
            prop_assert!(got.insert(w.parse::<i64>().unwrap(), n.parse::<f64>().unwrap() as u64).is_none());
        }
        prop_assert_eq!(got, want);
    }
}

#[test]
fn state_moves_with_its_key_groups_when_the_parallelism_changes() {
    let job = |p| {
        Pipeline::new("t")
            .parallelism(p)
            .source("in")
            .key_by(key_of)
            .window(Window::tumbling(Duration::from_secs(10)))
            .late_topic("late")
            .aggregate(Count)
            .sink("out", counts)
            .unwrap()
    };
    let mut d = TestDriver::new(&job(2), 2);
    assert_eq!(d.parallelism(), 2);
    for k in 0..50 {
        d.send(k % 2, msg(&format!("k{k}"), "", 1_000));
    }
    let snap = d.checkpoint();
    for p in [1, 5, 2] {
        let mut d = TestDriver::restore(&job(p), 2, &snap).unwrap();
        assert_eq!(d.parallelism(), p);
        for k in 0..50 {
            d.send(k % 2, msg(&format!("k{k}"), "", 2_000));
        }
        d.finish();
        let out = sorted(&d.outputs());
        assert_eq!(out.len(), 50);
        assert!(
            out.iter().all(|(_, v)| v == "0:2"),
            "at parallelism {p}: {out:?}"
        );
    }
    // Another max parallelism cannot read the key groups.
    let other = Pipeline::new("t")
        .max_parallelism(64)
        .source("in")
        .key_by(key_of)
        .window(Window::tumbling(Duration::from_secs(10)))
        .late_topic("late")
        .aggregate(Count)
        .sink("out", counts)
        .unwrap();
    assert!(TestDriver::restore(&other, 2, &snap).is_err());
}

#[test]
fn a_stream_aggregated_into_a_table_emits_every_change() {
    let job = Pipeline::new("t")
        .source("in")
        .key_by(key_of)
        .aggregate(Count)
        .to_stream()
        .sink("out", |(k, v): (Bytes, Option<u64>)| {
            OutRecord::new(Some(k), v.map(|v| v.to_string().into()), 0)
        })
        .unwrap();
    let mut d = TestDriver::new(&job, 1);
    for k in ["a", "b", "a"] {
        d.send(0, msg(k, "", 1));
    }
    let out: Vec<(String, String)> = d
        .outputs()
        .iter()
        .map(|r| (text(&r.key), text(&r.value)))
        .collect();
    assert_eq!(
        out,
        [
            ("a".into(), "1".into()),
            ("b".into(), "1".into()),
            ("a".into(), "2".into())
        ]
    );
}

#[test]
fn a_table_table_join_emits_the_joined_changes_and_deletions() {
    let p = Pipeline::new("t");
    let a = p.table("a");
    let b = p.table("b");
    let job = a
        .join(
            &b,
            JoinKind::Inner,
            |_, x: Option<&Message>, y: Option<&Message>| {
                format!(
                    "{}+{}",
                    text(&x.and_then(|m| m.value.clone())),
                    text(&y.and_then(|m| m.value.clone()))
                )
            },
        )
        .to_stream()
        .sink("out", |(k, v): (Bytes, Option<String>)| {
            OutRecord::new(Some(k), v.map(Bytes::from), 0)
        })
        .unwrap();
    let mut d = TestDriver::new(&job, 1);
    d.send_to(0, 0, msg("k", "1", 1));
    assert!(d.outputs().is_empty(), "inner: b has no row yet");
    d.send_to(1, 0, msg("k", "x", 2));
    d.send_to(0, 0, msg("k", "2", 3));
    d.send_to(1, 0, Message::new(Some(b"k"), None, 4));
    let out: Vec<(String, Option<String>)> = d
        .outputs()
        .iter()
        .map(|r| {
            (
                text(&r.key),
                r.value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).to_string()),
            )
        })
        .collect();
    assert_eq!(
        out,
        [
            ("k".into(), Some("1+x".into())),
            ("k".into(), Some("2+x".into())),
            ("k".into(), None)
        ]
    );
}

#[test]
fn a_quiet_table_stops_holding_back_a_join_when_idle() {
    let p = Pipeline::new("t").idle_timeout(Duration::from_secs(5));
    let users = p.table("users");
    let job = p
        .source("orders")
        .key_by(key_of)
        .join_table(
            &users,
            JoinKind::Left,
            |_, o: Message, u: Option<&Message>| {
                format!(
                    "{}/{}",
                    text(&o.value),
                    text(&u.and_then(|u| u.value.clone()))
                )
            },
        )
        .sink("out", |s: String| OutRecord::new(None, Some(s.into()), 0))
        .unwrap();
    // Sources in the order they were made: the users table is 0, orders 1.
    let mut d = TestDriver::new(&job, 1);
    d.send_to(0, 0, msg("u1", "alice", 100));
    d.send_to(1, 0, msg("u1", "o1", 1_000));
    d.advance_time(3_000);
    d.send_to(1, 0, msg("u1", "o2", 5_000));
    assert!(
        d.outputs().is_empty(),
        "the users partition's watermark is still at 100"
    );
    // Users quiet for 6 s, orders for 3: the table is idle, the orders alone hold the join's watermark.
    d.advance_time(3_000);
    d.send_to(1, 0, msg("u1", "o3", 9_000));
    let got: Vec<String> = d.outputs().iter().map(|r| text(&r.value)).collect();
    assert_eq!(got, ["o1/alice", "o2/alice"]);
}

#[test]
fn a_table_ahead_of_its_probes_joins_them_without_waiting_for_their_watermark() {
    let p = Pipeline::new("t").out_of_orderness(Duration::from_millis(500));
    let users = p.table("users");
    let job = p
        .source("orders")
        .key_by(key_of)
        .join_table(
            &users,
            JoinKind::Left,
            |_, o: Message, u: Option<&Message>| {
                format!(
                    "{}/{}",
                    text(&o.value),
                    text(&u.and_then(|u| u.value.clone()))
                )
            },
        )
        .sink("out", |s: String| OutRecord::new(None, Some(s.into()), 0))
        .unwrap();
    let mut d = TestDriver::new(&job, 1);
    d.send_to(0, 0, msg("u1", "alice", 100));
    d.send_to(0, 0, msg("u1", "alicia", 5_000));
    // The users table is final up to 4 500: an order at 1 000 is joined on arrival, though the orders'
    // own watermark (500 behind the order) has not passed it.
    d.send_to(1, 0, msg("u1", "o1", 1_000));
    let got: Vec<String> = d.outputs().iter().map(|r| text(&r.value)).collect();
    assert_eq!(got, ["o1/alice"]);
    // An order the table has not passed yet waits, as before, and gets the version as of its time.
    d.send_to(1, 0, msg("u1", "o2", 6_000));
    assert!(d.outputs().is_empty());
    d.send_to(0, 0, msg("u1", "al", 6_200));
    d.send_to(0, 0, msg("u1", "zed", 9_000));
    let got: Vec<String> = d.outputs().iter().map(|r| text(&r.value)).collect();
    assert_eq!(got, ["o2/alicia"]);
}

#[test]
fn builder_errors_are_reported() {
    let p = Pipeline::new("t");
    let s = p.source("in").map(|m: Message| m);
    let e = s
        .clone()
        .event_time(|_| None)
        .sink("out", |m| m.into())
        .unwrap_err();
    assert!(e.to_string().contains("event_time"), "{e}");

    let p = Pipeline::new("t");
    let s = p.source("in");
    s.clone()
        .map(|m: Message| m)
        .uid("x")
        .to("a", |m: Message| m.into());
    let e = s
        .map(|m: Message| m)
        .uid("x")
        .sink("b", |m| m.into())
        .unwrap_err();
    assert!(e.to_string().contains("unique"), "{e}");

    let p = Pipeline::new("t");
    let q = Pipeline::new("u");
    let t = q.table("users");
    let e = p
        .source("in")
        .key_by(key_of)
        .join_table(&t, JoinKind::Inner, |_, m: Message, _| m)
        .sink("out", |m| m.into())
        .unwrap_err();
    assert!(e.to_string().contains("same Pipeline"), "{e}");

    let e = Pipeline::new("t")
        .source("in")
        .sink("in", |m| m.into())
        .unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
}
