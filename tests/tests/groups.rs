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

/// Polls until `pred` holds for the consumer's assignment or the deadline passes; returns the partitions.
fn wait_assignment(
    c: &BaseConsumer,
    pred: impl Fn(&HashSet<i32>) -> bool,
    within: Duration,
) -> HashSet<i32> {
    let deadline = Instant::now() + within;
    loop {
        let _ = c.poll(Duration::from_millis(50));
        let parts: HashSet<i32> = c
            .assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        if pred(&parts) || Instant::now() > deadline {
            return parts;
        }
    }
}

fn consumer_with(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().unwrap()
}

#[test]
fn leave_rebalances_at_once_and_a_silent_member_expires() {
    let b = Broker::start_with_env(&env()).unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "takeover", 4, &[]);
    let a = consumer_with(&bs, "takeover-group", &[]);
    let c = consumer_with(&bs, "takeover-group", &[]);
    a.subscribe(&["takeover"]).unwrap();
    c.subscribe(&["takeover"]).unwrap();
    // Both members get two partitions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pa = wait_assignment(&a, |p| p.len() == 2, Duration::from_millis(200));
        let pc = wait_assignment(&c, |p| p.len() == 2, Duration::from_millis(200));
        if pa.len() == 2 && pc.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no balanced assignment: {pa:?} {pc:?}"
        );
    }
    // Graceful close (LeaveGroup): the other member takes everything well before a session timeout.
    let started = Instant::now();
    drop(c);
    let pa = wait_assignment(&a, |p| p.len() == 4, Duration::from_secs(20));
    assert_eq!(pa.len(), 4);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "rebalance after leave took {:?}",
        started.elapsed()
    );

    // A member that goes away without LeaveGroup (a static member's close sends none, as a crashed client
    // would not) keeps its partitions until its session times out (6 s), then the survivor takes them over.
    let d = consumer_with(&bs, "takeover-group", &[("group.instance.id", "d")]);
    d.subscribe(&["takeover"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pa = wait_assignment(&a, |p| p.len() == 2, Duration::from_millis(200));
        let pd = wait_assignment(&d, |p| p.len() == 2, Duration::from_millis(200));
        if pa.len() == 2 && pd.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no balanced assignment: {pa:?} {pd:?}"
        );
    }
    drop(d);
    let gone = Instant::now();
    assert_eq!(
        wait_assignment(&a, |p| p.len() == 4, Duration::from_secs(2)).len(),
        2,
        "no takeover before the timeout"
    );
    assert_eq!(
        wait_assignment(&a, |p| p.len() == 4, Duration::from_secs(20)).len(),
        4,
        "takeover after the timeout"
    );
    assert!(
        gone.elapsed() >= Duration::from_secs(5),
        "took over after {:?}",
        gone.elapsed()
    );
}

#[test]
fn static_member_restart_keeps_its_assignment_without_rebalance() {
    let b = Broker::start_with_env(&env()).unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "static", 2, &[]);
    let a = consumer_with(&bs, "static-group", &[("group.instance.id", "a")]);
    let s = consumer_with(&bs, "static-group", &[("group.instance.id", "s")]);
    a.subscribe(&["static"]).unwrap();
    s.subscribe(&["static"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (pa, ps) = loop {
        let pa = wait_assignment(&a, |p| p.len() == 1, Duration::from_millis(200));
        let ps = wait_assignment(&s, |p| p.len() == 1, Duration::from_millis(200));
        if pa.len() == 1 && ps.len() == 1 {
            break (pa, ps);
        }
        assert!(Instant::now() < deadline, "no balanced assignment");
    };
    // A static member's close does not send LeaveGroup; it restarts within the session timeout with the same
    // instance id and gets the same partition back while the other member is undisturbed.
    drop(s);
    let s2 = consumer_with(&bs, "static-group", &[("group.instance.id", "s")]);
    s2.subscribe(&["static"]).unwrap();
    let ps2 = wait_assignment(&s2, |p| p.len() == 1, Duration::from_secs(20));
    assert_eq!(ps2, ps);
    assert_eq!(
        wait_assignment(&a, |_| false, Duration::from_millis(500)),
        pa
    );
}

#[test]
fn cooperative_sticky_assignor_works() {
    let b = Broker::start_with_env(&env()).unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "coop", 4, &[]);
    let extra = [("partition.assignment.strategy", "cooperative-sticky")];
    let a = consumer_with(&bs, "coop-group", &extra);
    a.subscribe(&["coop"]).unwrap();
    assert_eq!(
        wait_assignment(&a, |p| p.len() == 4, Duration::from_secs(20)).len(),
        4
    );
    let c = consumer_with(&bs, "coop-group", &extra);
    c.subscribe(&["coop"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pa = wait_assignment(&a, |p| p.len() == 2, Duration::from_millis(200));
        let pc = wait_assignment(&c, |p| p.len() == 2, Duration::from_millis(200));
        if pa.len() == 2 && pc.len() == 2 {
            assert!(pa.is_disjoint(&pc));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "incremental rebalance did not settle: {pa:?} {pc:?}"
        );
    }
}

#[test]
fn kcat_balanced_consumer_commits_and_resumes() {
    let b = Broker::start_with_env(&env()).unwrap();
    let bs = b.bootstrap();
    let root = millrace_tests::workspace_root();
    let input = b.data.path().join("in.txt");
    std::fs::write(
        &input,
        (0..100).map(|i| format!("m{i}\n")).collect::<String>(),
    )
    .unwrap();
    let input = input.to_string_lossy().to_string();
    let Some(_) =
        millrace_tests::run_client("kcat", &["-b", &bs, "-P", "-t", "kg", "-l", &input], &root)
            .unwrap()
    else {
        return;
    };
    let consume = || {
        millrace_tests::run_client(
            "kcat",
            &[
                "-b",
                &bs,
                "-G",
                "kcat-group",
                "kg",
                "-X",
                "auto.offset.reset=earliest",
                "-e",
                "-q",
            ],
            &root,
        )
        .unwrap()
        .unwrap()
    };
    assert_eq!(consume().lines().count(), 100);
    // The group committed its position: a second run starts after it and sees only new records.
    std::fs::write(&input, "late\n").unwrap();
    millrace_tests::run_client("kcat", &["-b", &bs, "-P", "-t", "kg", "-l", &input], &root)
        .unwrap();
    assert_eq!(consume().lines().collect::<Vec<_>>(), vec!["late"]);
}
