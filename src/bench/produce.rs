//! `bench produce`: connections to the partition leaders, each writing Produce requests with up to `--in-flight`
//! of them unanswered, and a task per connection reading the responses in order.
//!
//! A connection owns a fixed set of partitions and fills one batch per partition in turn (a sticky partitioner:
//! keys do not choose partitions). Without `--rate` every batch is full; with it, a request carries the records
//! that are due when an in-flight slot is free (and after `--linger-ms`), so batches grow under back-pressure as
//! with a real producer. Batch buffers are recycled once the request is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use millrace_protocol::error_code;
use millrace_protocol::messages::produce_request::{
    self, PartitionProduceData, ProduceRequest, TopicProduceData,
};
use millrace_protocol::messages::produce_response::ProduceResponse;
use millrace_protocol::records::{BatchBuilder, Compression};
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::client::{Connection, Receiver, Sender};
use super::cluster::{self, Topic};
use super::payload::{self, RecordGen};
use super::report::{Counters, Latency, Progress, Side, Summary};
use super::CLIENT_ID;
use super::{kafka_error, ProduceArgs, ProducerArgs};

/// Produce needs record batches (magic 2), which start at v3.
const MIN_PRODUCE_VERSION: i16 = 3;

pub async fn run(args: ProduceArgs) -> Result<()> {
    let mut boot = cluster::bootstrap(&args.common.brokers, CLIENT_ID).await?;
    let (topic, _) = cluster::topic(
        &mut boot,
        &args.common.topic,
        Some(args.producer.partitions),
    )
    .await?;
    let producer = Producer::connect(&topic, &args.producer).await?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(args.common.quiet, vec![("produced", counters.clone())]);
    let (elapsed, latency) = producer
        .run(
            args.common.count,
            args.common.time_limit(),
            counters.clone(),
            false,
        )
        .await?;
    drop(progress);
    let p = &args.producer;
    let summary = Summary {
        mode: "produce",
        sides: vec![("produce", Side::from_counters(&counters, elapsed))],
        latency: (p.acks != 0).then_some(("produce_request", latency)),
        extra: [("config".to_string(), config_json(&topic, p))]
            .into_iter()
            .collect(),
    };
    summary.print(args.common.json);
    Ok(())
}

pub fn config_json(topic: &Topic, p: &ProducerArgs) -> serde_json::Value {
    json!({
        "topic": topic.name,
        "partitions": topic.partitions.len(),
        "record_size": p.record_size,
        "key_distribution": format!("{:?}", p.key_distribution),
        "acks": p.acks,
        "batch_size": p.batch_size,
        "linger_ms": p.linger_ms,
        "compression": format!("{:?}", p.compression).to_lowercase(),
        "connections_per_leader": p.connections,
        "in_flight": p.in_flight,
        "rate": p.rate,
    })
}

/// A connection and the partitions it writes.
struct Lane {
    conn: Connection,
    partitions: Vec<i32>,
}

/// Connected producer lanes, ready to run.
pub struct Producer {
    topic: Arc<str>,
    lanes: Vec<Lane>,
    args: ProducerArgs,
}

impl Producer {
    /// Opens `--connections` connections to every partition leader and deals the leader's partitions out among
    /// them (with more connections than partitions, several connections share a partition).
    pub async fn connect(topic: &Topic, args: &ProducerArgs) -> Result<Producer> {
        let mut lanes = Vec::new();
        for (leader, parts) in topic.by_leader() {
            for c in 0..args.connections {
                let mine: Vec<i32> = if parts.len() >= args.connections {
                    parts
                        .iter()
                        .copied()
                        .skip(c)
                        .step_by(args.connections)
                        .collect()
                } else {
                    vec![parts[c % parts.len()]]
                };
                let conn = Connection::connect(&leader, CLIENT_ID).await?;
                let v = conn.versions().get(produce_request::API_KEY)?;
                if v < MIN_PRODUCE_VERSION {
                    bail!("broker {leader} speaks Produce only up to v{v}; record batches need v3");
                }
                lanes.push(Lane {
                    conn,
                    partitions: mine,
                });
            }
        }
        Ok(Producer {
            topic: topic.name.as_str().into(),
            lanes,
            args: args.clone(),
        })
    }

    /// Produces `count` records in total (split evenly over the lanes) or until `limit` passes; returns the time
    /// from the start to the last acknowledgement, and the produce request latencies.
    pub async fn run(
        self,
        count: Option<u64>,
        limit: Option<Duration>,
        counters: Arc<Counters>,
        stamp: bool,
    ) -> Result<(Duration, Latency)> {
        let n = self.lanes.len() as u64;
        let start = Instant::now();
        let deadline = limit.map(|d| start + d);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, lane) in self.lanes.into_iter().enumerate() {
            let i = i as u64;
            let plan = Plan {
                topic: self.topic.clone(),
                partitions: lane.partitions,
                count: count.map(|c| c / n + u64::from(i < c % n)),
                rate: self.args.rate.map(|r| r / n as f64),
                deadline,
                start,
                gen: RecordGen::new(
                    self.args.key_distribution,
                    self.args.record_size,
                    i + 1,
                    i,
                    n,
                ),
                stamp,
            };
            let args = self.args.clone();
            let counters = counters.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let r = drive(lane.conn, plan, &args, &counters, &stop).await;
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            }));
        }
        let mut latency = Latency::new()?;
        let mut first_error = None;
        for t in tasks {
            match t.await.map_err(|e| anyhow!("producer task failed: {e}"))? {
                Ok(l) => latency.merge(&l)?,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok((start.elapsed(), latency))
    }
}

/// What one lane sends.
struct Plan {
    topic: Arc<str>,
    partitions: Vec<i32>,
    count: Option<u64>,
    rate: Option<f64>,
    deadline: Option<Instant>,
    start: Instant,
    gen: RecordGen,
    stamp: bool,
}

/// A request written and not yet answered.
struct InFlight {
    id: i32,
    sent: Instant,
    records: u64,
    bytes: u64,
    wire_bytes: u64,
    _permit: OwnedSemaphorePermit,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Runs one lane: this task writes, a spawned one reads the responses.
async fn drive(
    conn: Connection,
    mut plan: Plan,
    args: &ProducerArgs,
    counters: &Arc<Counters>,
    stop: &AtomicBool,
) -> Result<Latency> {
    let version = conn.versions().get(produce_request::API_KEY)?;
    let (mut sender, receiver) = conn.split();
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
    let reader = if args.acks == 0 {
        let mut receiver = receiver;
        tokio::spawn(async move {
            drop(rx);
            receiver.expect_silence().await?;
            Latency::new()
        })
    } else {
        let counters = counters.clone();
        let slots = slots.clone();
        let topic = plan.topic.clone();
        tokio::spawn(async move {
            let r = read_acks(receiver, rx, version, &counters, &topic).await;
            // Wakes the writer if it waits for a slot that will never come back.
            slots.close();
            r
        })
    };
    let written = write_requests(
        &mut sender,
        &mut plan,
        args,
        version,
        &slots,
        counters,
        tx,
        stop,
    )
    .await;
    if args.acks == 0 {
        reader.abort();
        written?;
        return Latency::new();
    }
    let read = reader
        .await
        .map_err(|e| anyhow!("response reader failed: {e}"))?;
    // A reader error explains a writer error (a closed semaphore or socket), so it is reported first.
    let latency = read?;
    written?;
    Ok(latency)
}

#[allow(clippy::too_many_arguments)]
async fn write_requests(
    sender: &mut Sender,
    plan: &mut Plan,
    args: &ProducerArgs,
    version: i16,
    slots: &Arc<Semaphore>,
    counters: &Counters,
    tx: mpsc::UnboundedSender<InFlight>,
    stop: &AtomicBool,
) -> Result<()> {
    let codec: Compression = args.compression.codec();
    let per_record = args.record_size + plan.gen.max_key_len() + 24;
    let batch_capacity = args.batch_size.max(per_record + 61);
    let records_per_batch = ((batch_capacity - 61) / per_record).max(1) as u64;
    let mut buffers: Vec<Option<BytesMut>> = plan
        .partitions
        .iter()
        .map(|_| Some(BytesMut::with_capacity(batch_capacity + 64)))
        .collect();
    let mut sent: u64 = 0;
    let mut rotate = 0usize;
    let mut request = ProduceRequest {
        transactional_id: None,
        acks: args.acks,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: plan.topic.to_string(),
            partition_data: Vec::with_capacity(plan.partitions.len()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let linger = Duration::from_millis(args.linger_ms);
    loop {
        if stop.load(Ordering::Relaxed) || plan.count.is_some_and(|c| sent >= c) {
            break;
        }
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break, // the reader stopped: it reports why
        };
        // How many records may go now.
        let mut budget = plan.count.map_or(u64::MAX, |c| c - sent);
        if let Some(rate) = plan.rate {
            let due_at = |n: u64| plan.start + Duration::from_secs_f64(n as f64 / rate);
            let first = due_at(sent);
            if first > Instant::now() {
                if plan.deadline.is_some_and(|d| first >= d) {
                    break;
                }
                tokio::time::sleep_until(first.into()).await;
            }
            if !linger.is_zero() {
                let full = due_at(sent + records_per_batch * plan.partitions.len() as u64);
                let until = (first + linger).min(full);
                let until = plan.deadline.map_or(until, |d| until.min(d));
                tokio::time::sleep_until(until.into()).await;
            }
            let elapsed = plan.start.elapsed().as_secs_f64();
            let due = ((elapsed * rate) as u64 + 1).saturating_sub(sent);
            budget = budget.min(due.max(1));
        }
        let now_ms = now_micros() / 1000;
        if plan.stamp {
            plan.gen.stamp(now_micros());
        }
        let parts = &mut request.topic_data[0].partition_data;
        parts.clear();
        let mut records = 0u64;
        let mut bytes = 0u64;
        let mut wire = 0u64;
        let np = plan.partitions.len();
        let mut included = 0usize;
        for k in 0..np {
            if budget == 0 {
                break;
            }
            // Brokers refuse frames over socket.request.max.bytes: with many partitions, a request carries
            // as many full batches as fit under --max-request-bytes, and the next one goes on from there.
            if k > 0 && wire as usize + batch_capacity > args.max_request_bytes {
                break;
            }
            included += 1;
            let slot = (rotate + k) % np;
            let buf = buffers[slot]
                .take()
                .unwrap_or_else(|| BytesMut::with_capacity(batch_capacity + 64));
            let mut batch = BatchBuilder::with_buffer(buf, now_ms);
            let mut n = 0u64;
            while n < budget.min(records_per_batch) {
                bytes += plan.gen.push(&mut batch, now_ms) as u64;
                n += 1;
            }
            budget -= n;
            records += n;
            let batch = payload::finish(batch, codec)?;
            wire += batch.len() as u64;
            parts.push(PartitionProduceData {
                index: plan.partitions[slot],
                records: Some(batch),
                ..Default::default()
            });
        }
        rotate = (rotate + included.max(1)) % np;
        let sent_at = Instant::now();
        let id = sender
            .send_with(produce_request::API_KEY, version, |w| {
                request.encode(w, version)
            })
            .await?;
        // The frame is written: take the batch buffers back for the next request.
        for p in request.topic_data[0].partition_data.iter_mut() {
            if let Some(b) = p.records.take() {
                let slot = plan.partitions.iter().position(|&x| x == p.index);
                if let (Some(slot), Ok(buf)) = (slot, Bytes::try_into_mut(b)) {
                    buffers[slot] = Some(buf);
                }
            }
        }
        sent += records;
        if args.acks == 0 {
            counters.add(records, bytes, wire);
            drop(permit);
        } else if tx
            .send(InFlight {
                id,
                sent: sent_at,
                records,
                bytes,
                wire_bytes: wire,
                _permit: permit,
            })
            .is_err()
        {
            break; // the reader stopped: it reports why
        }
    }
    Ok(())
}

/// Reads the responses of one lane in order, checking every partition's error code.
async fn read_acks(
    mut receiver: Receiver,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    version: i16,
    counters: &Counters,
    topic: &str,
) -> Result<Latency> {
    let mut latency = Latency::new()?;
    while let Some(f) = rx.recv().await {
        let mut r = receiver
            .recv(f.id, produce_request::API_KEY, version)
            .await?;
        let took = f.sent.elapsed();
        let resp = ProduceResponse::decode(&mut r, version)
            .with_context(|| format!("malformed Produce response from {}", receiver.peer))?;
        for t in &resp.responses {
            for p in &t.partition_responses {
                if p.error_code != error_code::NONE {
                    bail!(
                        "broker {} refused Produce to {topic}/{}: {}{}",
                        receiver.peer,
                        p.index,
                        kafka_error(p.error_code),
                        p.error_message
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        latency.record(took);
        counters.add(f.records, f.bytes, f.wire_bytes);
    }
    Ok(latency)
}
