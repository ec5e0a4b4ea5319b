//! Nexmark-like bids for benchmarks: key = bidder (one of `bidders`), value = `auction-<n>,price=<p>` (about
//! 60 bytes a record in all), event time advancing 100 µs per bid; and the two pipelines the benchmarks run over
//! them (a stateless filter + map, and a keyed tumbling count per bidder).

use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;
use millrace_storage::Log;

use crate::aggregate::Count;
use crate::error::Result;
use crate::pipeline::{Job, Pipeline};
use crate::record::{Message, OutRecord};
use crate::window::Window;

/// 2026-01-01T00:00:00Z.
pub const BASE_TS: i64 = 1_767_225_600_000;

/// The event time of bid `i`.
pub fn bid_time(i: u64) -> i64 {
    BASE_TS + (i / 10) as i64
}

/// The bidder of bid `i` (a multiplicative hash, so consecutive bids spread over bidders).
pub fn bidder(i: u64, bidders: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % bidders.max(1)
}

/// Appends `count` bids (numbered from `first`) to `log` in batches of 1,000.
pub fn append_bids(log: &Log, first: u64, count: u64, bidders: u64) -> Result<()> {
    let mut i = first;
    let end = first + count;
    while i < end {
        let mut b = BatchBuilder::with_capacity(bid_time(i), 80 * 1000);
        let stop = (i + 1000).min(end);
        while i < stop {
            let key = format!("bidder-{:05}", bidder(i, bidders));
            let value = format!("auction-{:06},price={}", i % 100_000, i % 977);
            b.push(
                bid_time(i),
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &[],
            );
            i += 1;
        }
        log.append_slice(&b.finish(), 0)?;
    }
    Ok(())
}

/// Appends one bid far in the future: it moves the watermark past every earlier window so they close.
pub fn append_closer(log: &Log) -> Result<()> {
    let mut b = BatchBuilder::new(BASE_TS + 3_600_000_000);
    b.push(
        BASE_TS + 3_600_000_000,
        Some(b"closer"),
        Some(b"auction-0,price=0"),
        &[],
    );
    log.append_slice(&b.finish(), 0)?;
    Ok(())
}

/// Drops one bid in four (by offset) and re-keys the rest by auction.
pub fn stateless_job(name: &str, source: &str, sink: &str, fsync: bool) -> Result<Job> {
    Pipeline::new(name)
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_fsync(fsync)
        .source(source)
        .filter(|m: &Message| m.offset % 4 != 3)
        .map(|m: Message| {
            let v = m.value.unwrap_or_default();
            let auction = v.slice(..v.iter().position(|b| *b == b',').unwrap_or(v.len()));
            OutRecord::new(Some(auction), Some(v), m.timestamp)
        })
        .sink_with_partitions(sink, Some(1), |r| r)
}

/// How many records [`stateless_job`] writes for the offsets `0..records` of its source.
pub fn stateless_outputs(records: u64) -> u64 {
    records - records / 4
}

/// Counts bids per bidder in tumbling windows of `window_ms`.
pub fn keyed_count_job(
    name: &str,
    source: &str,
    sink: &str,
    window_ms: u64,
    fsync: bool,
) -> Result<Job> {
    Pipeline::new(name)
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_fsync(fsync)
        .source(source)
        .key_by(|m: &Message| m.key.clone().unwrap_or_default())
        .window(Window::tumbling(Duration::from_millis(window_ms)))
        .late_topic(format!("{sink}.late"))
        .aggregate(Count)
        .sink_with_partitions(sink, Some(1), |r| {
            OutRecord::new(
                Some(r.key),
                Some(Bytes::from(r.value.to_string())),
                r.window_end - 1,
            )
        })
}

/// How many (bidder, window) results [`keyed_count_job`] writes for bids `0..count` (the closer's own window
/// stays open).
pub fn keyed_outputs(count: u64, bidders: u64, window_ms: u64) -> u64 {
    let mut seen = std::collections::HashSet::new();
    for i in 0..count {
        seen.insert((
            bidder(i, bidders),
            bid_time(i).div_euclid(window_ms.max(1) as i64),
        ));
    }
    seen.len() as u64
}
