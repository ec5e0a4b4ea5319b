//! Consumer groups with librdkafka against the real binary: three consumers share a topic exactly once, and
//! committed offsets survive a restart and a kill -9.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use millrace_tests::Broker;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message};

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap()
}

fn env() -> [(&'static str, &'static str); 1] {
    [("MILLRACE_GROUP_INITIAL_REBALANCE_DELAY_MS", "300")]
}

#[test]
fn three_consumers_share_a_topic_exactly_once() {
    let b = Broker::start_with_env(&env()).unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "shared", 6, &[]);
    let total = 60_000usize;
    let recs: Vec<Rec> = (0..total)
        .map(|i| Rec {
            partition: (i % 6) as i32,
            offset: 0,
            key: None,
            value: Some(i.to_string().into_bytes()),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&producer(&bs, &[("linger.ms", "20")]), "shared", &recs);

    let seen: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
    let assignments: Arc<Mutex<HashMap<usize, HashSet<i32>>>> = Arc::default();
    let threads: Vec<_> = (0..3)
        .map(|n| {
            let (bs, seen, assignments) = (bs.clone(), seen.clone(), assignments.clone());
            std::thread::spawn(move || {
                let c = group_consumer(&bs, "three");
                c.subscribe(&["shared"]).unwrap();
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut idle_since = Instant::now();
                while Instant::now() < deadline {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            let v = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                            seen.lock().unwrap().push((m.partition(), m.offset(), v));
                            idle_since = Instant::now();
                        }
                        Some(Err(e)) => panic!("consumer {n}: {e}"),
                        None => {
                            if seen.lock().unwrap().len() >= total
                                && idle_since.elapsed() > Duration::from_secs(2)
                            {
                                break;
                            }
                        }
                    }
                }
                let parts: HashSet<i32> = c
                    .assignment()
                    .unwrap()
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                assignments.lock().unwrap().insert(n, parts);
                c.commit_consumer_state(CommitMode::Sync).ok();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<&(i32, i64, String)> = seen.iter().collect();
    assert_eq!(
        seen.len(),
        total,
        "every record consumed exactly once (no duplicates when nobody fails)"
    );
    assert_eq!(unique.len(), total);
    let assignments = assignments.lock().unwrap();
    let mut all: Vec<i32> = assignments.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..6).collect::<Vec<_>>(),
        "assignments disjoint and complete: {assignments:?}"
    );
    assert!(
        assignments.values().all(|p| p.len() == 2),
        "{assignments:?}"
    );
}

#[test]
fn committed_offsets_survive_restart_and_kill_9() {
    let mut b = Broker::start_with_env(&env()).unwrap();
    create_topic(&b.bootstrap(), "resume", 1, &[]);
    let recs: Vec<Rec> = (0..100)
        .map(|i| Rec {
            partition: 0,
            offset: i,
            key: None,
            value: Some(i.to_string().into_bytes()),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&producer(&b.bootstrap(), &[]), "resume", &recs);

    let consume_some = |bs: &str, n: usize| -> Vec<i64> {
        let c = group_consumer(bs, "resumers");
        c.subscribe(&["resume"]).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                got.push(m.offset());
            }
        }
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        got
    };
    let first = consume_some(&b.bootstrap(), 30);
    assert_eq!(first, (0..30).collect::<Vec<_>>());
    b.stop().unwrap();
    b.restart().unwrap();
    let second = consume_some(&b.bootstrap(), 30);
    assert_eq!(
        second,
        (30..60).collect::<Vec<_>>(),
        "resumes exactly at the committed offset after a restart"
    );
    b.kill9().unwrap();
    b.restart().unwrap();
    let third = consume_some(&b.bootstrap(), 40);
    assert_eq!(
        third,
        (60..100).collect::<Vec<_>>(),
        "resumes exactly at the committed offset after kill -9"
    );
}
