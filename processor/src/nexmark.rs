//! Nexmark-like bids for benchmarks: key = bidder (one of `bidders`), value = `auction-<n>,price=<p>` (about
//! 60 bytes a record in all), event time advancing 100 µs per bid; and the pipelines the benchmarks run over
//! them (a stateless filter + map, and a keyed tumbling count per bidder).
//!
//! For the joins, two more inputs:
//! - an auctions table ([`append_auction_table`]): one row per auction id the bids name (key `auction-<n>`,
//!   value `seller=person-<s>,category=<c>`), all timestamped a second before the first bid, so it is loaded
//!   before the bids it enriches; read with [`Pipeline::table`] (a compacted topic's shape: one row per key);
//! - ad impressions ([`append_impressions`]): impression `i` is shown to the bidder of bid `i` 1 ms before that
//!   bid (key `bidder-<n>`, value `ad-<i>,slot=<s>`, the same size as a bid, so the two partitions are read
//!   at the same pace of event time).
//!
//! And three join pipelines: bids enriched from the auctions table as of their time ([`table_join_job`]),
//! bids joined to the impressions their bidder saw in the `interval_ms` before the bid
//! ([`interval_join_job`]), and the table join followed by a tumbling sum of prices per category
//! ([`join_sum_job`]).

use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;
use millrace_storage::Log;

use crate::aggregate::{Count, Sum};
use crate::error::Result;
use crate::join::JoinKind;
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

/// How many auctions the bids name (bid `i` is on auction `i % AUCTIONS`).
pub const AUCTIONS: u64 = 100_000;
/// Sellers of the auctions table.
pub const SELLERS: u64 = 10_000;
/// Categories of the auctions table (the keys of [`join_sum_job`]'s sum).
pub const CATEGORIES: u64 = 20;
/// The timestamp of the closers ([`append_closer`], [`append_auction_table`]'s last row).
pub const CLOSER_TS: i64 = BASE_TS + 3_600_000_000;

/// The auction of bid `i`.
pub fn auction(i: u64) -> u64 {
    i % AUCTIONS
}

/// The category of auction `a` in the auctions table.
pub fn category(a: u64) -> u64 {
    a.wrapping_mul(7_919) % CATEGORIES
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
            let value = format!("auction-{:06},price={}", auction(i), i % 977);
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
    let mut b = BatchBuilder::new(CLOSER_TS);
    b.push(CLOSER_TS, Some(b"closer"), Some(b"auction-0,price=0"), &[]);
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

/// Settings of the join pipelines.
#[derive(Debug, Clone, Copy)]
pub struct JoinSettings {
    pub checkpoint: Duration,
    pub fsync: bool,
    /// Key groups (None: the pipeline default, 128): one operator instance per key group a task owns.
    pub max_parallelism: Option<usize>,
}

impl JoinSettings {
    fn pipeline(&self, name: &str) -> Pipeline {
        let p = Pipeline::new(name)
            .checkpoint_interval(self.checkpoint)
            .checkpoint_fsync(self.fsync);
        match self.max_parallelism {
            Some(n) => p.max_parallelism(n),
            None => p,
        }
    }
}

/// The auction id of a bid (its value up to the first comma), zero-copy.
pub fn bid_auction(m: &Message) -> Bytes {
    m.value.as_ref().map(up_to_comma).unwrap_or_default()
}

/// `v` up to its first comma, zero-copy.
fn up_to_comma(v: &Bytes) -> Bytes {
    let end = v.iter().position(|b| *b == b',').unwrap_or(v.len());
    v.slice(..end)
}

/// The number after the last `=` of `v` (a bid's price), 0 if there is none.
pub fn last_number(v: &[u8]) -> u64 {
    let start = v.iter().rposition(|b| *b == b'=').map_or(0, |p| p + 1);
    v[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| {
            n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
        })
}

/// The slice of `v` after its last `=` (a table row's category), zero-copy.
fn after_last_eq(v: &Bytes) -> Bytes {
    let start = v.iter().rposition(|b| *b == b'=').map_or(0, |p| p + 1);
    v.slice(start..)
}

/// `a`, a comma, `b`: one allocation.
fn concat(a: &[u8], b: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(a.len() + 1 + b.len());
    v.extend_from_slice(a);
    v.push(b',');
    v.extend_from_slice(b);
    Bytes::from(v)
}

/// Appends the auctions table: one row per auction `0..AUCTIONS` (key `auction-<n>`, value
/// `seller=person-<s>,category=<c>`) at a second before the first bid, then one row far in the future under
/// the key `closer` (it moves the table's watermark past every bid, as [`append_closer`] does for the bids).
/// Returns how many auction rows it wrote (the closer not counted).
pub fn append_auction_table(log: &Log) -> Result<u64> {
    let ts = BASE_TS - 1_000;
    let mut a = 0;
    while a < AUCTIONS {
        let mut b = BatchBuilder::with_capacity(ts, 80 * 1000);
        let stop = (a + 1000).min(AUCTIONS);
        while a < stop {
            let key = format!("auction-{a:06}");
            let value = format!(
                "seller=person-{:05},category={:02}",
                a.wrapping_mul(2_654_435_761) % SELLERS,
                category(a)
            );
            b.push(ts, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
            a += 1;
        }
        log.append_slice(&b.finish(), 0)?;
    }
    let mut b = BatchBuilder::new(CLOSER_TS);
    b.push(
        CLOSER_TS,
        Some(b"closer"),
        Some(b"seller=person-00000,category=00"),
        &[],
    );
    log.append_slice(&b.finish(), 0)?;
    Ok(AUCTIONS)
}

/// The event time of impression `i`: 1 ms before bid `i`.
pub fn impression_time(i: u64) -> i64 {
    bid_time(i) - 1
}

/// Appends `count` impressions (numbered from `first`) in batches of 1,000: impression `i` goes to the bidder
/// of bid `i`, 1 ms before it, with a value as long as the bid's (so a chunk of either partition spans the
/// same event time).
pub fn append_impressions(log: &Log, first: u64, count: u64, bidders: u64) -> Result<()> {
    let mut i = first;
    let end = first + count;
    while i < end {
        let mut b = BatchBuilder::with_capacity(impression_time(i), 80 * 1000);
        let stop = (i + 1000).min(end);
        while i < stop {
            let key = format!("bidder-{:05}", bidder(i, bidders));
            // "ad-" + 12 digits + ",slot=" is as long as "auction-" + 6 digits + ",price=".
            let value = format!("ad-{i:012},slot={}", i % 977);
            b.push(
                impression_time(i),
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

/// Bids (stream `bids`) enriched with their auction's row of the table `auctions` as of the bid's time (a
/// temporal join, inner): key = auction, value = the bid's value, a comma, the auction row. The table keeps
/// only its rows' values and the bids only their value and time (what the output needs), as a user would
/// project them: the join buffers and checkpoints what it is given.
pub fn table_join_job(
    name: &str,
    bids: &str,
    auctions: &str,
    sink: &str,
    settings: JoinSettings,
) -> Result<Job> {
    let p = settings.pipeline(name);
    let table = p
        .table(auctions)
        .map_values(|m: Message| m.value.unwrap_or_default());
    p.source(bids)
        .map(|m: Message| (m.value.unwrap_or_default(), m.timestamp))
        .key_by(|(v, _): &(Bytes, i64)| up_to_comma(v))
        .join_table(
            &table,
            JoinKind::Inner,
            |k: &Bytes, (bid, ts): (Bytes, i64), row: Option<&Bytes>| {
                let value = match row {
                    Some(row) => concat(&bid, row),
                    None => bid,
                };
                OutRecord::new(Some(k.clone()), Some(value), ts)
            },
        )
        .sink_with_partitions(sink, Some(1), |r| r)
}

/// How many records [`table_join_job`] writes for bids `0..count` before it stops (every bid's auction is in
/// the table; the closer's probe waits for the end of input).
pub fn table_join_outputs(count: u64) -> u64 {
    count
}

/// Bids joined (inner) to the impressions of the same bidder shown in the `interval_ms` up to the bid
/// (`bid.ts - interval_ms <= impression.ts <= bid.ts`): key = bidder, value = the bid's value, a comma, the
/// impression's.
pub fn interval_join_job(
    name: &str,
    bids: &str,
    impressions: &str,
    sink: &str,
    interval_ms: i64,
    settings: JoinSettings,
) -> Result<Job> {
    let p = settings.pipeline(name);
    let by_bidder = |m: &Message| m.key.clone().unwrap_or_default();
    let imps = p.source(impressions).key_by(by_bidder);
    p.source(bids)
        .key_by(by_bidder)
        .interval_join_ms(
            &imps,
            JoinKind::Inner,
            -interval_ms,
            0,
            |k: &Bytes, bid: Option<&Message>, imp: Option<&Message>| {
                let v = |m: Option<&Message>| m.and_then(|m| m.value.clone()).unwrap_or_default();
                let ts = bid.map_or(0, |b| b.timestamp);
                OutRecord::new(Some(k.clone()), Some(concat(&v(bid), &v(imp))), ts)
            },
        )
        .sink_with_partitions(sink, Some(1), |r| r)
}

/// How many pairs [`interval_join_job`] writes for bids and impressions `0..count` (the bids' closer has no
/// impression).
pub fn interval_join_outputs(count: u64, bidders: u64, interval_ms: i64) -> u64 {
    let bidders = bidders.max(1);
    // Impression times per bidder, in order (times grow with the index).
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); bidders as usize];
    for i in 0..count {
        times[bidder(i, bidders) as usize].push(impression_time(i));
    }
    let mut n = 0u64;
    for i in 0..count {
        let t = bid_time(i);
        let v = &times[bidder(i, bidders) as usize];
        let lo = v.partition_point(|&x| x < t - interval_ms);
        let hi = v.partition_point(|&x| x <= t);
        n += (hi - lo) as u64;
    }
    n
}

/// The table join of [`table_join_job`] (each bid with its auction's row as of its time; the table keeps
/// only each row's category, the bids only auction and price), then the bids' prices summed per category in
/// tumbling windows of `window_ms`.
pub fn join_sum_job(
    name: &str,
    bids: &str,
    auctions: &str,
    sink: &str,
    window_ms: u64,
    settings: JoinSettings,
) -> Result<Job> {
    let p = settings.pipeline(name);
    let table = p
        .table(auctions)
        .map_values(|m: Message| m.value.as_ref().map(after_last_eq).unwrap_or_default());
    p.source(bids)
        .map(|m: Message| m.value.unwrap_or_default())
        .key_by(up_to_comma)
        .join_table(
            &table,
            JoinKind::Inner,
            |_: &Bytes, bid: Bytes, category: Option<&Bytes>| {
                (category.cloned().unwrap_or_default(), last_number(&bid))
            },
        )
        .key_by(|(category, _): &(Bytes, u64)| category.clone())
        .window(Window::tumbling(Duration::from_millis(window_ms)))
        .late_to(
            format!("{sink}.late"),
            Some(1),
            |k: &Bytes, (_, price): &(Bytes, u64), ts| {
                OutRecord::new(Some(k.clone()), Some(Bytes::from(price.to_string())), ts)
            },
        )
        .aggregate(Sum(|(_, price): &(Bytes, u64)| *price as f64))
        .sink_with_partitions(sink, Some(1), |r| {
            OutRecord::new(
                Some(r.key),
                Some(Bytes::from(r.value.to_string())),
                r.window_end - 1,
            )
        })
}

/// How many (category, window) sums [`join_sum_job`] writes for bids `0..count` (the closer's window stays
/// open).
pub fn join_sum_outputs(count: u64, window_ms: u64) -> u64 {
    let mut seen = std::collections::HashSet::new();
    for i in 0..count {
        seen.insert((
            category(auction(i)),
            bid_time(i).div_euclid(window_ms.max(1) as i64),
        ));
    }
    seen.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices_and_categories() {
        assert_eq!(last_number(b"auction-000012,price=976"), 976);
        assert_eq!(last_number(b"no number"), 0);
        let row = Bytes::from_static(b"seller=person-00001,category=07");
        assert_eq!(&after_last_eq(&row)[..], b"07");
        let m = Message::new(None, Some(b"auction-000042,price=3"), 0);
        assert_eq!(&bid_auction(&m)[..], b"auction-000042");
    }

    #[test]
    fn impressions_match_their_bid_only() {
        // A bidder bids every `bidders` bids (bidder() is a bijection over each period): with an interval
        // shorter than that period's time each bid finds exactly its own impression.
        assert_eq!(interval_join_outputs(50_000, 1_000, 50), 50_000);
        // Over two periods' time, a bid also finds the previous period's impression.
        assert!(interval_join_outputs(50_000, 1_000, 250) > 50_000);
    }
}
