//! Restart and crash safety with the real binary: records survive a graceful restart with the same offsets, and
//! every record acknowledged to an acks=all producer survives kill -9.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use millrace_tests::Broker;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

#[test]
fn graceful_restart_keeps_every_record_and_offset() {
    let mut b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "keep", 2, &[]);
    let recs: Vec<Rec> = (0..2000)
        .map(|i| Rec {
            partition: i % 2,
            offset: 0,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(vec![i as u8; 200]),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&producer(&b.bootstrap(), &[]), "keep", &recs);
    let before = consume(&b.bootstrap(), "keep", &[0, 1], 2000);
    b.stop().unwrap();
    b.restart().unwrap();
    let after = consume(&b.bootstrap(), "keep", &[0, 1], 2000);
    let key = |r: &Rec| (r.partition, r.offset);
    let mut x = before.clone();
    let mut y = after.clone();
    x.sort_by_key(key);
    y.sort_by_key(key);
    assert_eq!(x, y);
    // Appends continue at the right offsets.
    produce_all(
        &producer(&b.bootstrap(), &[]),
        "keep",
        &[Rec {
            partition: 0,
            ..recs[0].clone()
        }],
    );
    assert_eq!(watermarks(&b.bootstrap(), "keep", 0), (0, 1001));
}

/// Records which keys the broker acknowledged, and with which offsets.
struct Acks(Arc<Mutex<HashMap<Vec<u8>, i64>>>);
impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            self.0
                .lock()
                .unwrap()
                .insert(m.key().unwrap().to_vec(), m.offset());
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_acks_all_record() {
    let mut b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "crash", 1, &[]);
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let p: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "3000")
        .create_with_context(Acks(acked.clone()))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key-{i:08}");
                let value = format!("value-{i}-{}", "x".repeat((i % 300) as usize));
                if p.send(
                    BaseRecord::to("crash")
                        .partition(0)
                        .key(&key)
                        .payload(&value),
                )
                .is_ok()
                {
                    i += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let _ = p.flush(Duration::from_secs(5));
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    b.kill9().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} records were acknowledged before the kill",
        acked.len()
    );

    b.restart().unwrap();
    let (_, end) = watermarks(&b.bootstrap(), "crash", 0);
    let all = consume(&b.bootstrap(), "crash", &[0], end as usize);
    let stored: HashMap<Vec<u8>, (i64, Vec<u8>)> = all
        .iter()
        .map(|r| (r.key.clone().unwrap(), (r.offset, r.value.clone().unwrap())))
        .collect();
    for (key, offset) in &acked {
        let (got_offset, value) = stored
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged {key:?} lost"));
        assert_eq!(got_offset, offset, "offset of {key:?} changed");
        let i: u64 = String::from_utf8_lossy(&key[4..]).parse().unwrap();
        assert_eq!(
            value,
            format!("value-{i}-{}", "x".repeat((i % 300) as usize)).as_bytes()
        );
    }
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as i64, "offsets are dense after recovery");
    }
}

/// acks=1 data is fsynced in the background within seconds even when nothing asks for it, and the fsync is
/// recorded as the active segment's recovery point: after kill -9, recovery then reads only what came after it.
#[test]
fn quiet_acks_1_data_is_fsynced_in_the_background_and_survives_kill_9() {
    let mut b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "quiet", 1, &[]);
    let recs = |from: usize, n: usize| -> Vec<Rec> {
        (from..from + n)
            .map(|i| Rec {
                partition: 0,
                offset: 0,
                key: Some(format!("k{i}").into_bytes()),
                value: Some(vec![i as u8; 100]),
                headers: vec![],
                timestamp: None,
            })
            .collect()
    };
    let p = producer(&b.bootstrap(), &[("acks", "1")]);
    produce_all(&p, "quiet", &recs(0, 3000));
    let point_file = b.data.path().join("quiet-0").join("active-recovery-point");
    let point = || -> Option<Vec<i64>> {
        let text = std::fs::read_to_string(&point_file).ok()?;
        text.split_whitespace().map(|s| s.parse().ok()).collect()
    };
    // RECOVERY_FLUSH_MS (5 s) after the first unflushed append, plus the 1 s check period.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while point().is_none_or(|p| p.get(2) != Some(&3000)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery point for the 3000 records: {:?}",
            point()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let position = point().unwrap()[1];
    assert!(position > 3000 * 100, "{position}");
    produce_all(&p, "quiet", &recs(3000, 1000));
    drop(p);
    b.kill9().unwrap();
    b.restart().unwrap();
    let got = consume(&b.bootstrap(), "quiet", &[0], 4000);
    assert_eq!(got.len(), 4000);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
    }
    // Recovery fsynced the rest and moved the point to the end.
    assert_eq!(point().unwrap()[2], 4000);
}
