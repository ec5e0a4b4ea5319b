//! `bench consume`: consumer connections to the partition leaders, each fetching its share of the partitions
//! in a loop. Records are counted from batch headers (`records_count`), never decoded; `bench e2e` reuses the
//! loop with a callback that does decode them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use millrace_protocol::messages::fetch_request::{self, FetchPartition, FetchRequest, FetchTopic};
use millrace_protocol::messages::fetch_response::FetchResponse;
use millrace_protocol::records::{BatchHeader, BatchIter};
use millrace_protocol::{error_code, RequestBody};
use serde_json::json;

use super::client::Connection;
use super::cluster::{self, Topic, EARLIEST, LATEST};
use super::report::{Counters, Progress, Side, Summary};
use super::CLIENT_ID;
use super::{kafka_error, ConsumeArgs, FetchArgs, StartFrom};

/// How long the broker may hold a Fetch that finds nothing new (Fetch long poll).
const LONG_POLL_MS: i32 = 500;

pub async fn run(args: ConsumeArgs) -> Result<()> {
    let mut boot = cluster::bootstrap(&args.common.brokers, CLIENT_ID).await?;
    let (topic, _) = cluster::topic(&mut boot, &args.common.topic, None).await?;
    let from = match args.from {
        StartFrom::Earliest => EARLIEST,
        StartFrom::Latest => LATEST,
    };
    let consumer = Consumer::connect(&topic, &args.fetch, from).await?;
    let counters = Arc::new(Counters::default());
    let limit = Arc::new(Limit::new(args.common.count));
    let progress = Progress::start(args.common.quiet, vec![("consumed", counters.clone())]);
    let elapsed = consumer
        .run(args.common.time_limit(), counters.clone(), limit, |_, _| {
            Ok(())
        })
        .await?;
    drop(progress);
    let summary = Summary {
        mode: "consume",
        sides: vec![("consume", Side::from_counters(&counters, elapsed))],
        latency: None,
        extra: [(
            "config".to_string(),
            json!({
                "topic": topic.name,
                "partitions": topic.partitions.len(),
                "from": format!("{:?}", args.from).to_lowercase(),
                "fetch_max_bytes": args.fetch.fetch_max_bytes,
                "partition_max_bytes": args.fetch.partition_max_bytes,
                "consumers": args.fetch.consumers,
            }),
        )]
        .into_iter()
        .collect(),
    };
    summary.print(args.common.json);
    if let Some(c) = args.common.count {
        let got = counters.records.load(Ordering::Relaxed);
        if got < c {
            bail!("consumed {got} of the {c} records asked for before the time limit");
        }
    }
    Ok(())
}

/// How many records the consumers should count in total; the target can be set later (e2e learns it when the
/// producer finishes).
pub struct Limit {
    counted: AtomicU64,
    target: AtomicU64,
}

impl Limit {
    pub fn new(target: Option<u64>) -> Limit {
        Limit {
            counted: AtomicU64::new(0),
            target: AtomicU64::new(target.unwrap_or(u64::MAX)),
        }
    }

    pub fn set_target(&self, target: u64) {
        self.target.store(target, Ordering::SeqCst);
    }

    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::SeqCst)
    }

    /// Claims up to `n` records; returns how many count (fewer once the target is reached).
    fn claim(&self, n: u64) -> u64 {
        let target = self.target.load(Ordering::SeqCst);
        let mut claimed = 0;
        let _ = self
            .counted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                claimed = n.min(target.saturating_sub(c));
                Some(c + claimed)
            });
        claimed
    }

    fn done(&self) -> bool {
        self.counted.load(Ordering::SeqCst) >= self.target.load(Ordering::SeqCst)
    }
}

/// One consumer connection and where each of its partitions is.
struct Lane {
    conn: Connection,
    positions: Vec<(i32, i64)>,
}

pub struct Consumer {
    topic: Topic,
    lanes: Vec<Lane>,
    args: FetchArgs,
}

impl Consumer {
    /// Deals the partitions of each leader out among `--consumers` connections and finds the start offsets.
    pub async fn connect(topic: &Topic, args: &FetchArgs, from: i64) -> Result<Consumer> {
        if args.consumers == 0 {
            bail!("--consumers must be at least 1");
        }
        let mut lanes = Vec::new();
        let leaders = topic.by_leader();
        let mut dealt = 0usize;
        for (leader, parts) in leaders {
            let mut groups: Vec<Vec<i32>> = vec![Vec::new(); args.consumers];
            for p in parts {
                groups[dealt % args.consumers].push(p);
                dealt += 1;
            }
            for group in groups.into_iter().filter(|g| !g.is_empty()) {
                let mut conn = Connection::connect(&leader, CLIENT_ID).await?;
                conn.versions().get(fetch_request::API_KEY)?;
                let offsets = cluster::offsets(&mut conn, &topic.name, &group, from).await?;
                let positions = group
                    .iter()
                    .map(|p| {
                        offsets
                            .get(p)
                            .map(|o| (*p, *o))
                            .ok_or_else(|| anyhow!("no start offset for {}/{p}", topic.name))
                    })
                    .collect::<Result<_>>()?;
                lanes.push(Lane { conn, positions });
            }
        }
        if lanes.len() < args.consumers {
            eprintln!(
                "note: {} consumer connection(s) for {} partition(s); extra consumers have nothing to fetch",
                lanes.len(),
                topic.partitions.len()
            );
        }
        Ok(Consumer {
            topic: topic.clone(),
            lanes,
            args: args.clone(),
        })
    }

    /// Fetches until `limit` is reached or `time_limit` passes, handing every whole batch (header, bytes) to
    /// `on_batch`; returns the elapsed time.
    pub async fn run<F>(
        self,
        time_limit: Option<Duration>,
        counters: Arc<Counters>,
        limit: Arc<Limit>,
        on_batch: F,
    ) -> Result<Duration>
    where
        F: FnMut(&BatchHeader, Bytes) -> Result<()> + Clone + Send + 'static,
    {
        let start = Instant::now();
        let deadline = time_limit.map(|d| start + d);
        let stop = Arc::new(AtomicBool::new(false));
        let topic = Arc::new(self.topic);
        let mut tasks = Vec::new();
        for lane in self.lanes {
            let (topic, args, counters, limit, stop) = (
                topic.clone(),
                self.args.clone(),
                counters.clone(),
                limit.clone(),
                stop.clone(),
            );
            let on_batch = on_batch.clone();
            tasks.push(tokio::spawn(async move {
                let r = fetch_loop(
                    lane, &topic, &args, &counters, &limit, deadline, &stop, on_batch,
                )
                .await;
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            }));
        }
        let mut first_error = None;
        for t in tasks {
            if let Err(e) = t.await.map_err(|e| anyhow!("consumer task failed: {e}"))? {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(start.elapsed()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fetch_loop<F>(
    mut lane: Lane,
    topic: &Topic,
    args: &FetchArgs,
    counters: &Counters,
    limit: &Limit,
    deadline: Option<Instant>,
    stop: &AtomicBool,
    mut on_batch: F,
) -> Result<()>
where
    F: FnMut(&BatchHeader, Bytes) -> Result<()>,
{
    let version = lane.conn.versions().get(fetch_request::API_KEY)?;
    let peer = lane.conn.sender.peer.clone();
    while !limit.done() && !stop.load(Ordering::Relaxed) {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                (left.as_millis() as i32).clamp(1, LONG_POLL_MS)
            }
            None => LONG_POLL_MS,
        };
        let req = RequestBody::Fetch(FetchRequest {
            replica_id: -1,
            max_wait_ms: wait,
            min_bytes: 1,
            max_bytes: args.fetch_max_bytes,
            isolation_level: 0,
            topics: vec![FetchTopic {
                topic: topic.name.clone(),
                topic_id: topic.id,
                partitions: lane
                    .positions
                    .iter()
                    .map(|&(partition, fetch_offset)| FetchPartition {
                        partition,
                        fetch_offset,
                        partition_max_bytes: args.partition_max_bytes,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut r = lane.conn.call(&req, version).await?;
        let resp = FetchResponse::decode(&mut r, version)
            .with_context(|| format!("malformed Fetch response from {peer}"))?;
        if resp.error_code != error_code::NONE {
            bail!(
                "broker {peer} refused Fetch: {}",
                kafka_error(resp.error_code)
            );
        }
        for t in &resp.responses {
            for p in &t.partitions {
                let Some(pos) = lane
                    .positions
                    .iter_mut()
                    .find(|(i, _)| *i == p.partition_index)
                else {
                    bail!(
                        "broker {peer} answered Fetch for partition {} it was not asked about",
                        p.partition_index
                    );
                };
                if p.error_code != error_code::NONE {
                    bail!(
                        "broker {peer} refused Fetch of {}/{} at offset {}: {}",
                        topic.name,
                        p.partition_index,
                        pos.1,
                        kafka_error(p.error_code)
                    );
                }
                let Some(records) = &p.records else { continue };
                let (mut records_in, mut wire) = (0u64, 0u64);
                let mut iter = BatchIter::new(records);
                let mut at = 0usize;
                let mut whole = 0usize;
                // A partial batch at the end (cut by a size limit) ends the iteration with an error: skip it.
                while let Some(Ok((h, bytes))) = iter.next() {
                    let len = bytes.len();
                    let batch = records.slice(at..at + len);
                    at += len;
                    whole += 1;
                    let last = h.last_offset();
                    if last < pos.1 {
                        continue; // before the fetch offset (a batch that straddles it is sent whole)
                    }
                    // Records before the fetch offset in a straddling batch do not count.
                    let skip = (pos.1 - h.base_offset).max(0) as u64;
                    let n = (h.records_count as u64).saturating_sub(skip);
                    let counted = limit.claim(n);
                    records_in += counted;
                    wire += len as u64;
                    pos.1 = last + 1;
                    on_batch(&h, batch)?;
                    if counted < n {
                        break; // the target is reached
                    }
                }
                if whole == 0 && !records.is_empty() {
                    bail!(
                        "Fetch of {}/{} returned no whole batch in {} bytes: raise --partition-max-bytes",
                        topic.name,
                        p.partition_index,
                        records.len()
                    );
                }
                if records_in > 0 {
                    // Payload bytes are not known without decoding; wire bytes stand in for both.
                    counters.add(records_in, wire, wire);
                }
            }
        }
    }
    Ok(())
}
