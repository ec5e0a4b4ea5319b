//! `bench e2e`: a producer at a fixed `--rate` and consumers on the same topic at once. Every record carries its
//! send time (in its value, see [`super::payload`]); the consumer decodes each batch and records arrival time
//! minus send time in an HDR histogram.
//!
//! The consumers start at the partitions' latest offsets before the producer starts, and stop once they have
//! seen every record the producer had acknowledged (or 10 s after the producer stopped).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use millrace_protocol::records::{compression, BatchHeader, RecordIter, BATCH_HEADER_LEN};
use serde_json::json;

use super::cluster::{self, LATEST};
use super::consume::{Consumer, Limit};
use super::payload::STAMP_LEN;
use super::produce::{config_json, Producer};
use super::report::{Counters, Latency, Progress, Side, Summary};
use super::E2eArgs;
use super::CLIENT_ID;

/// How long consumers may lag behind the end of production before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: E2eArgs) -> Result<()> {
    let rate = args.producer.rate.unwrap_or(10_000.0);
    let mut producer_args = args.producer.clone();
    producer_args.rate = Some(rate);
    let mut boot = cluster::bootstrap(&args.common.brokers, CLIENT_ID).await?;
    let (topic, _) = cluster::topic(
        &mut boot,
        &args.common.topic,
        Some(producer_args.partitions),
    )
    .await?;

    let consumer = Consumer::connect(&topic, &args.fetch, LATEST).await?;
    let producer = Producer::connect(&topic, &producer_args).await?;
    let produced = Arc::new(Counters::default());
    let consumed = Arc::new(Counters::default());
    let limit = Arc::new(Limit::new(None));
    let latency = Arc::new(Mutex::new(Latency::new()?));
    let progress = Progress::start(
        args.common.quiet,
        vec![
            ("produced", produced.clone()),
            ("consumed", consumed.clone()),
        ],
    );

    let time_limit = args.common.time_limit();
    let consumer_task = {
        let (consumed, limit, latency) = (consumed.clone(), limit.clone(), latency.clone());
        // The consumers run until the target is set and met, or the producer's time plus the drain timeout.
        let consumer_limit = time_limit.map(|d| d + DRAIN_TIMEOUT);
        tokio::spawn(
            consumer.run(consumer_limit, consumed, limit, move |h, batch| {
                let mut all = latency
                    .lock()
                    .map_err(|_| anyhow!("latency lock poisoned"))?;
                record_latencies(h, batch, &mut all)
            }),
        )
    };
    let (produce_elapsed, produce_latency) = producer
        .run(args.common.count, time_limit, produced.clone(), true)
        .await?;
    let total = produced.records.load(Ordering::SeqCst);
    limit.set_target(total);
    let drain = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), consumer_task).await;
    drop(progress);
    let consume_elapsed = match drain {
        Ok(joined) => joined.map_err(|e| anyhow!("consumer task failed: {e}"))??,
        Err(_) => bail!(
            "consumers did not finish within {} s of the producer",
            DRAIN_TIMEOUT.as_secs()
        ),
    };
    let seen = limit.counted();
    let latency = latency
        .lock()
        .map_err(|_| anyhow!("latency lock poisoned"))?
        .clone();
    let summary = Summary {
        mode: "e2e",
        sides: vec![
            ("produce", Side::from_counters(&produced, produce_elapsed)),
            ("consume", Side::from_counters(&consumed, consume_elapsed)),
        ],
        latency: Some(("end_to_end", latency)),
        extra: [
            ("config".to_string(), config_json(&topic, &producer_args)),
            (
                "produce_request_latency".to_string(),
                produce_latency.json(),
            ),
            (
                "missing_records".to_string(),
                json!(total.saturating_sub(seen)),
            ),
        ]
        .into_iter()
        .collect(),
    };
    summary.print(args.common.json);
    if seen < total {
        bail!("the consumers saw {seen} of the {total} records produced");
    }
    Ok(())
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Decodes one batch and records, for every record, now minus its send time.
fn record_latencies(h: &BatchHeader, batch: Bytes, into: &mut Latency) -> Result<()> {
    let now = now_micros();
    let body = batch.slice(BATCH_HEADER_LEN..);
    let body = compression::decompress(h.compression()?, &body)?;
    for rec in RecordIter::new(body, h.base_offset, h.base_timestamp, h.records_count) {
        let rec = rec?;
        let sent_us = match rec.value.as_deref() {
            Some(v) if v.len() >= STAMP_LEN => {
                let mut b = [0u8; STAMP_LEN];
                b.copy_from_slice(&v[..STAMP_LEN]);
                i64::from_be_bytes(b)
            }
            _ => rec.timestamp.saturating_mul(1000),
        };
        into.record_us(now.saturating_sub(sent_us).max(0) as u64);
    }
    Ok(())
}
