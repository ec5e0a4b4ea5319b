//! Client helpers shared by the rdkafka end-to-end tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A record as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

pub fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_lite_block_on(f)
}

/// A minimal executor for the admin client's futures (they are driven by librdkafka's own threads).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::{Arc, Condvar, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    struct Signal(Mutex<bool>, Condvar);
    impl Wake for Signal {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
            self.1.notify_one();
        }
    }
    let signal = Arc::new(Signal(Mutex::new(false), Condvar::new()));
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = signal.0.lock().unwrap();
        while !*woken {
            woken = signal.1.wait(woken).unwrap();
        }
        *woken = false;
    }
}

pub fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let a = admin(bootstrap);
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = block(a.create_topics(&[t], &opts())).expect("create_topics");
    for r in res {
        r.expect("topic created");
    }
}

/// Produces and waits for every delivery; panics on any delivery error.
pub fn produce_all(p: &BaseProducer, topic: &str, recs: &[Rec]) {
    for r in recs {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if r.partition >= 0 {
            rec = rec.partition(r.partition);
        }
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(ts) = r.timestamp {
            rec = rec.timestamp(ts);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(rdkafka::message::Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            rec = rec.headers(h);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "send failed: {e}"
                    );
                    p.poll(Duration::from_millis(10));
                    rec = back;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("flush: every record delivered");
}

pub fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "millrace-e2e-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.message.max.bytes", "2000000")
        .set("receive.message.max.bytes", "100000000")
        .create()
        .expect("consumer")
}

fn to_rec(m: &BorrowedMessage<'_>) -> Rec {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Rec {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: m.timestamp().to_millis(),
    }
}

/// Reads `count` records from the given partitions from offset 0 (assign, no group protocol).
pub fn consume(bootstrap: &str, topic: &str, partitions: &[i32], count: usize) -> Vec<Rec> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(count);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out with {} of {count} records",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(to_rec(&m)),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    // Nothing more than expected arrives.
    if let Some(Ok(m)) = c.poll(Duration::from_millis(300)) {
        panic!("unexpected extra record at offset {}", m.offset());
    }
    out
}

/// Low and high watermarks. Transient client errors (a loaded CI machine) are retried with a fresh client.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let mut last = None;
    for _ in 0..3 {
        match consumer(bootstrap).fetch_watermarks(topic, partition, Duration::from_secs(20)) {
            Ok(w) => return w,
            Err(e) => last = Some(e),
        }
    }
    panic!("watermarks of {topic}/{partition}: {last:?}")
}

/// Watermarks of many partitions through one client.
pub fn all_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let c = consumer(bootstrap);
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(20))
                .unwrap_or_else(|_| watermarks(bootstrap, topic, p))
        })
        .collect()
}
