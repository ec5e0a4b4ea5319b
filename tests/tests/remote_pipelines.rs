//! Pipelines whose sources and sinks live on another cluster (`bootstrap.servers`): broker A runs the
//! pipeline, broker B, a second millrace process reached only over TCP, holds its input and output topics.
//! librdkafka produces to and reads from B. A kill -9 of A under load neither loses nor repeats an output.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use millrace_tests::Broker;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

const BASE: i64 = 1_767_225_600_000;

fn pipeline_file(dir: &std::path::Path, remote: &str) -> String {
    let file = dir.join("remote_spend.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "remote_spend"
[settings]
checkpoint_interval_ms = 100
[[sources]]
topic = "orders"
"bootstrap.servers" = "{remote}"
[[tables]]
topic = "users"
"bootstrap.servers" = "{remote}"
[[steps]]
name = "named"
type = "join"
input = "orders"
table = "users"
join = "left"
on = {{ field = "user" }}
fields = ["name"]
[[steps]]
name = "totals"
type = "aggregate"
input = "named"
key = {{ field = "user" }}
aggregates = [{{ op = "sum", field = "amount", as = "spent" }}, {{ op = "count" }}]
[[sinks]]
input = "totals"
topic = "spend"
partitions = 3
"bootstrap.servers" = "{remote}"
[[sinks]]
input = "named"
topic = "named_orders"
partitions = 3
"#
        ),
    )
    .unwrap();
    file.display().to_string()
}

fn order(i: i64, users: i64) -> (String, i64, Rec) {
    let user = format!("u{:04}", (i * 7919) % users);
    let amount = i % 97;
    let rec = Rec {
        partition: -1,
        offset: 0,
        key: Some(user.clone().into_bytes()),
        value: Some(
            format!(r#"{{"user":"{user}","amount":{amount},"ts":{}}}"#, BASE + i).into_bytes(),
        ),
        headers: vec![],
        timestamp: Some(BASE + i),
    };
    (user, amount, rec)
}

/// Reads `topic` on `bootstrap` (3 partitions) until `want` records came and then nothing for 3 s.
fn read_all(bootstrap: &str, topic: &str, want: usize, within: Duration) -> Vec<serde_json::Value> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap()).unwrap();
                v["_key"] =
                    serde_json::Value::from(String::from_utf8_lossy(m.key().unwrap()).to_string());
                out.push(v);
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None if out.len() >= want && quiet_since.elapsed() > Duration::from_secs(3) => break,
            None => {}
        }
    }
    out
}

#[test]
fn remote_source_table_and_sink_are_exact_across_a_kill_9_of_the_pipelines_broker() {
    let remote = Broker::start().unwrap();
    let rb = remote.bootstrap();
    create_topic(&rb, "orders", 3, &[]);
    create_topic(&rb, "users", 1, &[("cleanup.policy", "compact")]);
    let users = 500i64;
    let p = producer(&rb, &[("enable.idempotence", "true"), ("acks", "all")]);
    let rows: Vec<Rec> = (0..users)
        .map(|u| Rec {
            partition: 0,
            offset: 0,
            key: Some(format!("u{u:04}").into_bytes()),
            value: Some(format!(r#"{{"user":"u{u:04}","name":"N{u}"}}"#).into_bytes()),
            headers: vec![],
            // Before every order: each order joins its user's row (the join is versioned by event time).
            timestamp: Some(BASE - 60_000),
        })
        .collect();
    produce_all(&p, "users", &rows);

    let dir = tempfile::tempdir().unwrap();
    let file = pipeline_file(dir.path(), &rb);
    let mut local = Broker::start_with(&[], &["--pipeline", &file]).unwrap();

    let total = 30_000i64;
    let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let recs: Vec<Rec> = (0..total)
        .map(|i| {
            let (user, amount, rec) = order(i, users);
            let e = expected.entry(user).or_default();
            e.0 += 1;
            e.1 += amount;
            rec
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let rb = rb.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let p = producer(&rb, &[("enable.idempotence", "true"), ("acks", "all")]);
            for chunk in recs.chunks(300) {
                produce_all(&p, "orders", chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, Ordering::Release);
        })
    };
    // Kill the pipeline's broker once outputs reach the remote, while input still flows.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..3).map(|p| watermarks(&rb, "spend", p).1).sum::<i64>() < 1_000 {
        assert!(
            Instant::now() < deadline,
            "no remote results before the kill; stderr:\n{}",
            local.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !done.load(Ordering::Acquire),
        "the producer finished before the kill"
    );
    local.kill9().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    local.restart().unwrap();
    producer_thread.join().unwrap();
    // The join holds each order until the watermark passes it: one order far later releases the rest.
    let closer = Rec {
        partition: -1,
        offset: 0,
        key: Some(b"closer".to_vec()),
        value: Some(
            format!(
                r#"{{"user":"closer","amount":0,"ts":{}}}"#,
                BASE + 3_600_000
            )
            .into_bytes(),
        ),
        headers: vec![],
        timestamp: Some(BASE + 3_600_000),
    };
    produce_all(&p, "orders", &[closer]);

    let outs = read_all(&rb, "spend", total as usize, Duration::from_secs(120));
    let outs: Vec<_> = outs.into_iter().filter(|v| v["user"] != "closer").collect();
    let mut seen: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for v in &outs {
        let user = v["user"].as_str().unwrap().to_string();
        assert_eq!(v["_key"].as_str(), Some(user.as_str()));
        seen.entry(user)
            .or_default()
            .push((v["count"].as_u64().unwrap(), v["spent"].as_i64().unwrap()));
    }
    assert_eq!(
        outs.len() as i64,
        total,
        "one remote output per order, exactly; stderr:\n{}",
        local.stderr()
    );
    for (user, (count, spent)) in &expected {
        let o = &seen[user];
        let counts: Vec<u64> = o.iter().map(|x| x.0).collect();
        assert_eq!(counts, (1..=*count).collect::<Vec<_>>(), "{user}");
        assert_eq!(o.last().map(|x| x.1), Some(*spent), "{user}");
    }

    // The local sink got the joined orders (the remote table's names), each once.
    let lb = local.bootstrap();
    let named = read_all(&lb, "named_orders", total as usize, Duration::from_secs(60));
    let named: Vec<_> = named
        .into_iter()
        .filter(|v| v["user"] != "closer")
        .collect();
    assert_eq!(named.len() as i64, total);
    let mut ts: Vec<i64> = named.iter().map(|v| v["ts"].as_i64().unwrap()).collect();
    ts.sort_unstable();
    ts.dedup();
    assert_eq!(
        ts.len() as i64,
        total,
        "no duplicate among the joined orders"
    );
    for v in &named {
        let user = v["user"].as_str().unwrap();
        assert_eq!(
            v["name"].as_str(),
            Some(
                format!(
                    "N{}",
                    &user[1..]
                        .trim_start_matches('0')
                        .parse::<i64>()
                        .unwrap_or(0)
                )
                .as_str()
            ),
            "{v}"
        );
    }
}

#[test]
fn a_batch_run_reads_a_remote_topic_to_its_end_and_writes_the_remote_sink_once() {
    let remote = Broker::start().unwrap();
    let rb = remote.bootstrap();
    create_topic(&rb, "events", 2, &[]);
    let p = producer(&rb, &[("enable.idempotence", "true"), ("acks", "all")]);
    let n = 2_000i64;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let recs: Vec<Rec> = (0..n)
        .map(|i| {
            let user = format!("u{}", i % 37);
            *expected.entry(user.clone()).or_default() += 1;
            Rec {
                partition: (i % 2) as i32,
                offset: 0,
                key: Some(user.clone().into_bytes()),
                value: Some(format!(r#"{{"user":"{user}"}}"#).into_bytes()),
                headers: vec![],
                timestamp: Some(BASE + i),
            }
        })
        .collect();
    produce_all(&p, "events", &recs);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "remote_count"
[[sources]]
topic = "events"
end = "end"
"bootstrap.servers" = "{rb}"
[[steps]]
name = "counts"
type = "aggregate"
input = "events"
key = {{ field = "user" }}
aggregates = [{{ op = "count" }}]
[[sinks]]
input = "counts"
topic = "counts"
partitions = 3
"bootstrap.servers" = "{rb}"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let run = || {
        let out = std::process::Command::new(millrace_tests::binary().unwrap())
            .args(["pipeline", "run"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pipeline run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    let outs = read_all(&rb, "counts", n as usize, Duration::from_secs(30));
    assert_eq!(outs.len() as i64, n, "one output per event");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for v in &outs {
        last.insert(
            v["user"].as_str().unwrap().to_string(),
            v["count"].as_u64().unwrap(),
        );
    }
    assert_eq!(last, expected);
    // A second run resumes at the checkpointed end: nothing new to read, nothing written again.
    run();
    let ends: i64 = (0..3).map(|p| watermarks(&rb, "counts", p).1).sum();
    assert_eq!(ends, n, "the second run wrote nothing");
}
