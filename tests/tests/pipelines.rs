//! Pipelines inside the real binary, driven by a real client (librdkafka): the reference example
//! `clicks_per_user` counts exactly, late records reach the late topic unchanged, and a kill -9 under load
//! neither loses nor duplicates a (key, window) result.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use millrace_tests::{workspace_root, Broker};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

/// 2026-01-01T00:00:00Z, a multiple of 10 s.
const BASE: i64 = 1_767_225_600_000;
const WINDOW: i64 = 10_000;

fn example() -> PathBuf {
    workspace_root().join("examples/pipelines/clicks_per_user.toml")
}

/// A copy of the example with extra `[settings]`.
fn example_with(dir: &std::path::Path, settings: &str) -> PathBuf {
    let text = std::fs::read_to_string(example()).unwrap();
    let path = dir.join("clicks_per_user.toml");
    std::fs::write(&path, format!("{text}\n[settings]\n{settings}\n")).unwrap();
    path
}

type Results = BTreeMap<(String, i64), Vec<u64>>;

/// Reads every record of `topic` (all partitions) until `want` results arrived and nothing more comes for a
/// while; returns (key, window_start) -> every count seen for it (more than one entry means a duplicate).
fn read_results(bootstrap: &str, topic: &str, want: usize, within: Duration) -> Results {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out: Results = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + within;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let start = v["window_start"].as_i64().unwrap();
                assert_eq!(v["window_end"].as_i64().unwrap(), start + WINDOW, "{v}");
                let text = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                assert!(
                    text.starts_with("{\"window_start\":"),
                    "documented field order: {text}"
                );
                out.entry((key, start))
                    .or_default()
                    .push(v["count"].as_u64().unwrap());
                n += 1;
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {
                // Outputs appear at checkpoints (every second): wait two of them for stragglers.
                if n >= want && quiet_since.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
        }
    }
    out
}

fn click(user: &str, ts: i64) -> Rec {
    Rec {
        partition: -1,
        offset: 0,
        key: Some(user.as_bytes().to_vec()),
        value: Some(format!("{{\"page\":\"/p{}\"}}", ts % 7).into_bytes()),
        headers: vec![],
        timestamp: Some(ts),
    }
}

/// Records that push every partition's watermark far past `BASE + span`, so every window before it closes.
fn closers(ts: i64) -> Vec<Rec> {
    (0..3)
        .map(|p| Rec {
            partition: p,
            ..click("zz-closer", ts)
        })
        .collect()
}

#[test]
fn clicks_per_user_counts_exactly_and_routes_late_records() {
    let example = example().display().to_string();
    let b = Broker::start_with(&[], &["--pipeline", &example]).unwrap();
    let bootstrap = b.bootstrap();

    // 12 users, clicks spread over 6 windows, with a deterministic count per (user, window).
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut recs = Vec::new();
    for u in 0..12 {
        let user = format!("user-{u}");
        for w in 0..6 {
            let n = (u * 7 + w * 3) % 5;
            for i in 0..n {
                let ts = BASE + w * WINDOW + (i * 1_999) % WINDOW;
                recs.push(click(&user, ts));
            }
            if n > 0 {
                *expected
                    .entry((user.clone(), BASE + w * WINDOW))
                    .or_default() += n as u64;
            }
        }
    }
    recs.sort_by_key(|r| r.timestamp);
    let p = producer(&bootstrap, &[]);
    produce_all(&p, "clicks", &recs);
    produce_all(&p, "clicks", &closers(BASE + 100 * WINDOW));

    let got = read_results(
        &bootstrap,
        "clicks_per_user",
        expected.len(),
        Duration::from_secs(60),
    );
    let got_counts: BTreeMap<(String, i64), u64> = got
        .iter()
        .map(|(k, v)| {
            assert_eq!(v.len(), 1, "{k:?} emitted {} times", v.len());
            (k.clone(), v[0])
        })
        .collect();
    assert_eq!(got_counts, expected);

    // Now that every early window has closed, a click for one of them is late: it goes, unchanged, to the
    // late topic, and no result changes.
    let late = click("user-3", BASE + 2 * WINDOW + 5);
    produce_all(&p, "clicks", std::slice::from_ref(&late));
    let seen = consume(&bootstrap, "clicks_per_user.late", &[0, 1, 2], 1);
    assert_eq!(seen[0].key, late.key);
    assert_eq!(seen[0].value, late.value);
    assert_eq!(seen[0].timestamp, late.timestamp);
    let again = read_results(
        &bootstrap,
        "clicks_per_user",
        expected.len(),
        Duration::from_secs(10),
    );
    assert_eq!(again.len(), expected.len());
}

#[test]
fn kill_9_under_load_gives_each_window_result_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent checkpoints, so that the kill lands among them; no idleness (the restart pauses input).
    let file = example_with(
        dir.path(),
        "checkpoint_interval_ms = 100\nidle_timeout_ms = 600000",
    );
    let file = file.display().to_string();
    let mut b = Broker::start_with(&[], &["--pipeline", &file]).unwrap();
    let bootstrap = b.bootstrap();

    // 60,000 clicks of 20 users, event time advancing 2 ms per click: 12 windows of 5,000 clicks.
    let total: i64 = 60_000;
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let recs: Vec<Rec> = (0..total)
        .map(|i| {
            let user = format!("user-{}", (i * 7919) % 20);
            let ts = BASE + i * 2;
            *expected
                .entry((user.clone(), ts - ts.rem_euclid(WINDOW)))
                .or_default() += 1;
            click(&user, ts)
        })
        .collect();

    // An idempotent acks=all producer in the background, so that inputs are neither lost nor doubled across
    // the crash.
    let done = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let bootstrap = bootstrap.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let p = producer(
                &bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("message.timeout.ms", "120000"),
                ],
            );
            for chunk in recs.chunks(2_000) {
                produce_all(&p, "clicks", chunk);
                std::thread::sleep(Duration::from_millis(50));
            }
            done.store(true, Ordering::Release);
        })
    };

    // Kill once results have started to flow and input is still arriving.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, high) = watermarks(&bootstrap, "clicks_per_user", 0);
        let (_, high1) = watermarks(&bootstrap, "clicks_per_user", 1);
        let (_, high2) = watermarks(&bootstrap, "clicks_per_user", 2);
        if high + high1 + high2 > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no results before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !done.load(Ordering::Acquire),
        "the producer finished before the kill"
    );
    b.kill9().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.restart().unwrap();
    let bootstrap = b.bootstrap();
    producer_thread.join().unwrap();
    produce_all(
        &producer(&bootstrap, &[]),
        "clicks",
        &closers(BASE + total * 2 + 100 * WINDOW),
    );

    let got = read_results(
        &bootstrap,
        "clicks_per_user",
        expected.len(),
        Duration::from_secs(90),
    );
    let dups: Vec<_> = got.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(dups.is_empty(), "duplicated results: {dups:?}");
    let got_counts: BTreeMap<(String, i64), u64> =
        got.iter().map(|(k, v)| (k.clone(), v[0])).collect();
    assert_eq!(got_counts.len(), expected.len(), "missing results");
    assert_eq!(got_counts, expected);
    assert_eq!(
        (0..3)
            .map(|p| watermarks(&bootstrap, "clicks_per_user.late", p).1)
            .sum::<i64>(),
        0,
        "no click was late"
    );
}

#[test]
fn a_failed_pipeline_is_restarted_from_its_checkpoint() {
    let example = example().display().to_string();
    let b = Broker::start_with(&[], &["--pipeline", &example]).unwrap();
    let bootstrap = b.bootstrap();
    let p = producer(&bootstrap, &[]);
    produce_all(&p, "clicks", &[click("early", BASE + 1)]);
    produce_all(&p, "clicks", &closers(BASE + 5 * WINDOW));
    let first = read_results(&bootstrap, "clicks_per_user", 1, Duration::from_secs(30));
    assert!(
        first.contains_key(&("early".to_string(), BASE)),
        "{first:?}"
    );

    // Deleting the sink under the running pipeline makes its next commit fail; the supervisor starts it again
    // from the checkpoint, which creates the topic again and writes the results it had committed there.
    block(admin(&bootstrap).delete_topics(&["clicks_per_user"], &opts()))
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    let later: Vec<Rec> = (0..4)
        .map(|i| {
            click(
                if i % 2 == 0 { "alice" } else { "bob" },
                BASE + 10 * WINDOW + i,
            )
        })
        .chain([click("alice", BASE + 11 * WINDOW)])
        .collect();
    produce_all(&p, "clicks", &later);
    produce_all(&p, "clicks", &closers(BASE + 20 * WINDOW));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = read_results(&bootstrap, "clicks_per_user", 3, Duration::from_secs(10));
        let alice = got.get(&("alice".to_string(), BASE + 10 * WINDOW)).cloned();
        let bob = got.get(&("bob".to_string(), BASE + 10 * WINDOW)).cloned();
        let alice11 = got.get(&("alice".to_string(), BASE + 11 * WINDOW)).cloned();
        if alice.is_some() && bob.is_some() && alice11.is_some() {
            assert_eq!(alice, Some(vec![2]), "{got:?}");
            assert_eq!(bob, Some(vec![2]), "{got:?}");
            assert_eq!(alice11, Some(vec![1]), "{got:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no results after the restart: {got:?}\n{}",
            b.stderr()
        );
    }
    assert!(b.stderr().contains("pipeline restarted"), "{}", b.stderr());
}

/// A running total per user on the disk state backend, with a memory budget smaller than the state and
/// checkpoints every 100 ms, killed with -9 while orders flow: every user's outputs are then exactly the
/// counts 1, 2, ..., n (none lost, none repeated) with exact sums.
#[test]
fn kill_9_with_disk_state_keeps_every_running_total_exact() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spend.toml");
    std::fs::write(
        &file,
        r#"
name = "spend"
[settings]
checkpoint_interval_ms = 100
state_backend = "disk"
state_memory_budget_mb = 1
[[sources]]
topic = "orders"
partitions = 3
[[steps]]
name = "totals"
type = "aggregate"
input = "orders"
key = { field = "user" }
aggregates = [{ op = "sum", field = "amount", as = "spent" }, { op = "count" }]
[[sinks]]
input = "totals"
topic = "spend"
partitions = 3
"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let mut b = Broker::start_with(&[], &["--pipeline", &file]).unwrap();
    let bootstrap = b.bootstrap();

    // 60,000 orders of 15,000 users: more state than the 1 MiB budget holds.
    let users = 15_000;
    let total = 60_000i64;
    let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let recs: Vec<Rec> = (0..total)
        .map(|i| {
            let user = format!("u{:05}", (i * 7919) % users);
            let amount = i % 97;
            let e = expected.entry(user.clone()).or_default();
            e.0 += 1;
            e.1 += amount;
            Rec {
                partition: -1,
                offset: 0,
                key: Some(user.clone().into_bytes()),
                value: Some(format!(r#"{{"user":"{user}","amount":{amount}}}"#).into_bytes()),
                headers: vec![],
                timestamp: Some(BASE + i),
            }
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let bootstrap = bootstrap.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let p = producer(
                &bootstrap,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("message.timeout.ms", "120000"),
                ],
            );
            for chunk in recs.chunks(2_000) {
                produce_all(&p, "orders", chunk);
                std::thread::sleep(Duration::from_millis(50));
            }
            done.store(true, Ordering::Release);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..3)
        .map(|p| watermarks(&bootstrap, "spend", p).1)
        .sum::<i64>()
        < 5_000
    {
        assert!(Instant::now() < deadline, "no results before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !done.load(Ordering::Acquire),
        "the producer finished before the kill"
    );
    b.kill9().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.restart().unwrap();
    let bootstrap = b.bootstrap();
    producer_thread.join().unwrap();

    // Every order makes one output; read until all have come.
    let c = consumer(&bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("spend", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut seen: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    let mut n = 0i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let user = v["user"].as_str().unwrap().to_string();
                assert_eq!(m.key(), Some(user.as_bytes()));
                seen.entry(user)
                    .or_default()
                    .push((v["count"].as_u64().unwrap(), v["spent"].as_i64().unwrap()));
                n += 1;
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None if n >= total && quiet_since.elapsed() > Duration::from_secs(3) => break,
            None => {}
        }
    }
    assert_eq!(n, total, "one output per order, exactly");
    assert_eq!(seen.len(), expected.len());
    for (user, (count, spent)) in &expected {
        let outs = &seen[user];
        let counts: Vec<u64> = outs.iter().map(|o| o.0).collect();
        assert_eq!(counts, (1..=*count).collect::<Vec<_>>(), "{user}");
        assert_eq!(outs.last().map(|o| o.1), Some(*spent), "{user}");
    }
    assert!(
        b.data.path().join(".pipelines/spend/MANIFEST").exists(),
        "the state is in its store"
    );
}
