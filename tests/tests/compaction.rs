//! A compacted topic through librdkafka: after the background cleaner runs, only the latest value of each key
//! remains (at its original offset), and a tombstoned key disappears after delete.retention.ms.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use millrace_tests::Broker;

#[test]
fn compacted_topic_keeps_latest_per_key_and_drops_tombstones() {
    let b = Broker::start_with_env(&[("MILLRACE_LOG_CLEANER_BACKOFF_MS", "200")]).unwrap();
    let bs = b.bootstrap();
    create_topic(
        &bs,
        "table",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "1024"),
            ("delete.retention.ms", "300"),
        ],
    );
    let mut produced: Vec<Rec> = Vec::new();
    for i in 0..300i64 {
        let key = format!("k{}", i % 10).into_bytes();
        let value = Some(format!("v{i}").into_bytes());
        produced.push(Rec {
            partition: 0,
            offset: i,
            key: Some(key),
            value,
            headers: vec![],
            timestamp: None,
        });
    }
    // Then a tombstone for k3, and filler under other keys to push it all out of the active segment.
    produced.push(Rec {
        partition: 0,
        offset: 300,
        key: Some(b"k3".to_vec()),
        value: None,
        headers: vec![],
        timestamp: None,
    });
    for i in 301..401i64 {
        produced.push(Rec {
            partition: 0,
            offset: i,
            key: Some(format!("f{i}").into_bytes()),
            value: Some(b"x".to_vec()),
            headers: vec![],
            timestamp: None,
        });
    }
    let p = producer(&bs, &[("enable.idempotence", "true"), ("linger.ms", "0")]);
    for chunk in produced.chunks(20) {
        produce_all(&p, "table", chunk);
    }
    let by_offset: HashMap<i64, &Rec> = produced.iter().map(|r| (r.offset, r)).collect();
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
    for r in &produced {
        latest.insert(r.key.clone().unwrap(), r.offset);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lo, hi) = watermarks(&bs, "table", 0);
        assert_eq!((lo, hi), (0, 401), "compaction never moves the watermarks");
        // Every surviving record is the one produced at that offset.
        let c = consumer(&bs);
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("table", 0, rdkafka::Offset::Beginning)
            .unwrap();
        rdkafka::consumer::Consumer::assign(&c, &tpl).unwrap();
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match rdkafka::consumer::BaseConsumer::poll(&c, Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    got.push((
                        m.offset(),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                    ));
                    if m.offset() == 400 {
                        break;
                    }
                }
                Some(Err(e)) => panic!("{e}"),
                None => {}
            }
        }
        for (offset, key, value) in &got {
            let want = by_offset[offset];
            assert_eq!((key, value), (&want.key, &want.value), "offset {offset}");
        }
        let k_latest_present = latest
            .iter()
            .filter(|(k, _)| k.as_slice() != b"k3")
            .all(|(_, o)| got.iter().any(|g| g.0 == *o));
        let k3_gone = got.iter().all(|g| g.1.as_deref() != Some(b"k3".as_slice()));
        let superseded_gone = got
            .iter()
            .all(|g| latest[g.1.as_ref().unwrap()] == g.0 || g.0 >= 381);
        if k_latest_present && k3_gone && superseded_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted yet ({k_latest_present} {k3_gone} {superseded_gone}): {:?}; broker stderr:\n{}",
            got.iter().map(|g| (g.0, String::from_utf8_lossy(g.1.as_deref().unwrap_or_default()).to_string())).collect::<Vec<_>>(),
            b.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
