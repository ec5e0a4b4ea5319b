//! A remote source partition: a fetcher on the broker's runtime keeps a bounded buffer of record batches
//! ahead of the task that reads them.
//!
//! Invariants of [`RemotePartition`]:
//! - the buffered chunks are contiguous and in offset order: each chunk's records lie before its `next`, and
//!   the next chunk's records start at or after it;
//! - the fetcher only fetches while the buffer holds less than [`BUFFER_BYTES`], so memory is bounded per
//!   partition whatever the consumer's pace;
//! - chunks hold committed data only: batches of aborted transactions are dropped here, control batches are
//!   kept (the reader skips them, and they move the offset on).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use millrace_client::cluster::{Topic, EARLIEST};
use millrace_client::Connection;
use millrace_protocol::error_code;
use millrace_protocol::messages::fetch_request::{self, FetchPartition, FetchRequest, FetchTopic};
use millrace_protocol::messages::fetch_response::FetchResponse;
use millrace_protocol::records::{attributes, BatchIter};
use millrace_protocol::RequestBody;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{connect, offsets, remote_error, retriable, RETRY_FOR, RETRY_PAUSE};
use crate::error::{Error, Result};

/// The most a partition's buffer holds before its fetcher waits for the task.
pub const BUFFER_BYTES: usize = 8 << 20;
/// How much one Fetch asks for from one partition.
const FETCH_PARTITION_BYTES: i32 = 1 << 20;
/// How long the remote broker may hold a Fetch when it has nothing new.
const LONG_POLL_MS: i32 = 200;

/// Record batches read from a remote partition, ending before `next`.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub records: Bytes,
    pub next: i64,
}

#[derive(Default)]
struct Buffer {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// The offset after the last record fetched (the fetch position).
    fetched: i64,
    /// The partition's last stable offset as the remote last reported it.
    stable: i64,
    error: Option<Error>,
}

/// One partition of a remote topic, read ahead by a fetcher task.
pub struct RemotePartition {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    buffer: Mutex<Buffer>,
    /// Signalled when the fetcher adds a chunk (the task waits on it when caught up).
    pub fetched: Notify,
    /// Signalled when the task takes a chunk (the fetcher waits on it when the buffer is full).
    taken: Notify,
    stop: AtomicBool,
}

impl RemotePartition {
    /// Starts fetching `partition` of `topic` at `offset` on `rt`.
    pub fn start(
        cluster: &str,
        topic: Topic,
        partition: i32,
        offset: i64,
        rt: &tokio::runtime::Handle,
    ) -> Arc<RemotePartition> {
        let p = Arc::new(RemotePartition {
            cluster: cluster.to_string(),
            topic: topic.name.clone(),
            partition,
            buffer: Mutex::new(Buffer {
                fetched: offset,
                stable: offset,
                ..Default::default()
            }),
            fetched: Notify::new(),
            taken: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let me = p.clone();
        rt.spawn(async move {
            if let Err(e) = me.fetch_loop(topic, offset).await {
                tracing::error!(cluster = %me.cluster, topic = %me.topic, partition = me.partition,
                    error = %e, "remote source failed");
                me.buffer.lock().error = Some(e);
                me.fetched.notify_waiters();
            }
        });
        p
    }

    /// The next chunk holding records at or after `offset`, taken from the buffer; None when nothing is
    /// buffered yet. The fetcher's failure is returned here, to fail the pipeline.
    pub fn read(&self, offset: i64) -> Result<Option<Chunk>> {
        let mut b = self.buffer.lock();
        while let Some(c) = b.chunks.front() {
            if c.next > offset {
                let c = c.clone();
                b.bytes -= c.records.len();
                b.chunks.pop_front();
                drop(b);
                self.taken.notify_one();
                return Ok(Some(c));
            }
            let len = c.records.len();
            b.bytes -= len;
            b.chunks.pop_front();
        }
        match &b.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// The offset up to which committed records are known to exist (for "is there unread input").
    pub fn end_offset(&self) -> i64 {
        let b = self.buffer.lock();
        b.stable.max(b.fetched)
    }

    /// Stops the fetcher (at its next wake-up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.taken.notify_one();
    }

    async fn fetch_loop(&self, topic: Topic, mut offset: i64) -> Result<()> {
        let leader = topic
            .partitions
            .iter()
            .find(|p| p.index == self.partition)
            .map(|p| p.leader.clone())
            .ok_or_else(|| {
                self.error(format!(
                    "{} has no partition {}",
                    self.topic, self.partition
                ))
            })?;
        let mut leader = Some(leader);
        let mut conn: Option<Connection> = None;
        let mut aborted = Aborted::default();
        let mut failing_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            if self.buffer.lock().bytes >= BUFFER_BYTES {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), self.taken.notified()).await;
                continue;
            }
            let r = self
                .fetch_once(&topic, &mut leader, &mut conn, &mut offset, &mut aborted)
                .await;
            match r {
                Ok(()) => failing_since = None,
                Err(Fail::Retry(e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RETRY_FOR {
                        return Err(e);
                    }
                    tracing::warn!(cluster = %self.cluster, topic = %self.topic, partition = self.partition,
                        error = %e, "remote fetch failed; retrying");
                    conn = None;
                    leader = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(Fail::Fatal(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn error(&self, message: String) -> Error {
        Error::Remote {
            cluster: self.cluster.clone(),
            message,
        }
    }

    async fn fetch_once(
        &self,
        topic: &Topic,
        leader: &mut Option<String>,
        conn: &mut Option<Connection>,
        offset: &mut i64,
        aborted: &mut Aborted,
    ) -> std::result::Result<(), Fail> {
        let c = match conn {
            Some(c) => c,
            None => {
                let addr = match leader.clone() {
                    Some(a) => a,
                    None => {
                        let t = super::describe(&self.cluster, &self.topic, None)
                            .await
                            .map_err(Fail::Retry)?;
                        let a = t
                            .partitions
                            .iter()
                            .find(|p| p.index == self.partition)
                            .map(|p| p.leader.clone())
                            .ok_or_else(|| {
                                Fail::Fatal(self.error(format!(
                                    "{} has no partition {} any more",
                                    self.topic, self.partition
                                )))
                            })?;
                        *leader = Some(a.clone());
                        a
                    }
                };
                conn.insert(connect(&self.cluster, &addr).await.map_err(Fail::Retry)?)
            }
        };
        let version = c
            .versions()
            .get(fetch_request::API_KEY)
            .map_err(|e| Fail::Fatal(remote_error(&self.cluster, e)))?;
        let req = RequestBody::Fetch(FetchRequest {
            replica_id: -1,
            max_wait_ms: LONG_POLL_MS,
            min_bytes: 1,
            max_bytes: FETCH_PARTITION_BYTES,
            isolation_level: 1,
            topics: vec![FetchTopic {
                topic: topic.name.clone(),
                topic_id: topic.id,
                partitions: vec![FetchPartition {
                    partition: self.partition,
                    fetch_offset: *offset,
                    partition_max_bytes: FETCH_PARTITION_BYTES,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let client_fail = |e: millrace_client::Error| {
            if retriable(&e) {
                Fail::Retry(remote_error(&self.cluster, e))
            } else {
                Fail::Fatal(remote_error(&self.cluster, e))
            }
        };
        let mut r = c.call(&req, version).await.map_err(client_fail)?;
        let resp = FetchResponse::decode(&mut r, version)
            .map_err(|e| Fail::Fatal(self.error(format!("malformed Fetch response: {e}"))))?;
        if resp.error_code != error_code::NONE {
            return Err(kafka_fail(&self.cluster, "Fetch", resp.error_code));
        }
        let Some(p) = resp
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == self.partition)
        else {
            return Err(Fail::Retry(self.error(format!(
                "Fetch response lacks {}/{}",
                self.topic, self.partition
            ))));
        };
        match p.error_code {
            error_code::NONE => {}
            error_code::OFFSET_OUT_OF_RANGE => {
                // Retention removed what the pipeline had not read yet, or the topic is shorter than the
                // checkpoint (recreated): read from its start, as a local source does.
                let start = offsets(&self.cluster, topic, &[self.partition], EARLIEST)
                    .await
                    .map_err(Fail::Retry)?;
                let start = start.first().copied().unwrap_or(0);
                tracing::warn!(cluster = %self.cluster, topic = %self.topic, partition = self.partition,
                    from = *offset, to = start, "remote offset out of range; reading from the partition's start");
                *offset = start;
                aborted.clear();
                return Ok(());
            }
            code => return Err(kafka_fail(&self.cluster, "Fetch", code)),
        }
        if let Some(list) = &p.aborted_transactions {
            for t in list {
                aborted.add(t.producer_id, t.first_offset);
            }
        }
        let stable = if p.last_stable_offset >= 0 {
            p.last_stable_offset
        } else {
            p.high_watermark
        };
        let Some(records) = &p.records else {
            self.buffer.lock().stable = stable;
            return Ok(());
        };
        let (kept, next) = aborted.committed(records, *offset);
        let mut b = self.buffer.lock();
        b.stable = stable;
        if let Some(next) = next {
            *offset = next;
            b.fetched = next;
            let n = kept.len();
            for (i, records) in kept.into_iter().enumerate() {
                // Every chunk but the last ends where the next one's first batch starts; the last ends at the
                // fetch position, past any dropped or control batches behind it.
                let chunk_next = if i + 1 == n {
                    next
                } else {
                    first_offset(&records).map_or(next, |o| o + 1)
                };
                b.bytes += records.len();
                b.chunks.push_back(Chunk {
                    records,
                    next: chunk_next,
                });
            }
            if n == 0 {
                // Only aborted batches: an empty chunk still moves the reader on.
                b.chunks.push_back(Chunk {
                    records: Bytes::new(),
                    next,
                });
            }
            drop(b);
            self.fetched.notify_waiters();
        }
        Ok(())
    }
}

/// The base offset of the first batch of `records`.
fn first_offset(records: &Bytes) -> Option<i64> {
    BatchIter::new(records)
        .next()
        .and_then(|r| r.ok())
        .map(|(h, _)| h.last_offset())
}

enum Fail {
    Retry(Error),
    Fatal(Error),
}

fn kafka_fail(cluster: &str, what: &str, code: i16) -> Fail {
    let e = Error::Remote {
        cluster: cluster.to_string(),
        message: format!(
            "{what} refused: error code {code} {}",
            error_code::name(code)
        ),
    };
    if error_code::is_retriable(code) {
        Fail::Retry(e)
    } else {
        Fail::Fatal(e)
    }
}

/// Aborted transactions of one partition, as a read_committed consumer tracks them: the ones a Fetch
/// reported (by first offset) and the producers whose aborted transaction is under way in what is read.
#[derive(Debug, Default)]
pub struct Aborted {
    /// First offset -> producer ids whose aborted transaction starts there.
    pending: BTreeMap<i64, Vec<i64>>,
    open: HashSet<i64>,
}

impl Aborted {
    pub fn add(&mut self, producer_id: i64, first_offset: i64) {
        let v = self.pending.entry(first_offset).or_default();
        if !v.contains(&producer_id) {
            v.push(producer_id);
        }
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.open.clear();
    }

    /// Splits whole batches of `records` (at or after `from`) into runs of committed ones. Returns the runs
    /// (slices of `records`, no copy) and the offset after the last whole batch (None: no whole batch).
    pub fn committed(&mut self, records: &Bytes, from: i64) -> (Vec<Bytes>, Option<i64>) {
        let mut runs = Vec::new();
        let mut run: Option<(usize, usize)> = None;
        let mut pos = 0usize;
        let mut next = None;
        // A partial batch at the end (cut by the size limit) ends the iteration with an error: it is fetched
        // again next time.
        for (h, raw) in BatchIter::new(records).map_while(|r| r.ok()) {
            let (start, end) = (pos, pos + raw.len());
            pos = end;
            let last = h.last_offset();
            next = Some(last + 1);
            if last < from {
                continue;
            }
            let transactional = h.attributes & attributes::TRANSACTIONAL != 0;
            let control = h.attributes & attributes::CONTROL != 0;
            let mut keep = true;
            if transactional {
                // Every aborted transaction that began at or before this batch is now under way.
                while let Some((&first, _)) = self.pending.first_key_value() {
                    if first > last {
                        break;
                    }
                    if let Some((_, pids)) = self.pending.pop_first() {
                        self.open.extend(pids);
                    }
                }
                if control {
                    // Its marker ends the producer's transaction (the reader skips the marker itself).
                    self.open.remove(&h.producer_id);
                } else if self.open.contains(&h.producer_id) {
                    keep = false;
                }
            }
            match (keep, run) {
                (true, Some((s, _))) => run = Some((s, end)),
                (true, None) => run = Some((start, end)),
                (false, Some((s, e))) => {
                    runs.push(records.slice(s..e));
                    run = None;
                }
                (false, None) => {}
            }
        }
        if let Some((s, e)) = run {
            runs.push(records.slice(s..e));
        }
        (runs, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::for_each_record;
    use millrace_protocol::records::{set_base_offset, BatchBuilder};

    fn batch(base: i64, pid: i64, n: usize, txn: bool, control: bool) -> Vec<u8> {
        let mut attrs = 0;
        if txn {
            attrs |= attributes::TRANSACTIONAL;
        }
        if control {
            attrs |= attributes::CONTROL;
        }
        let mut b = BatchBuilder::new(0).producer(pid, 0, 0).attributes(attrs);
        for i in 0..n {
            b.push(
                0,
                Some(b"k"),
                Some(format!("{}", base + i as i64).as_bytes()),
                &[],
            );
        }
        let mut v = b.finish().to_vec();
        set_base_offset(&mut v, base);
        v
    }

    fn offsets_read(runs: &[Bytes]) -> Vec<i64> {
        let mut seen = Vec::new();
        for r in runs {
            for_each_record(r, 0, 0, |m| seen.push(m.offset)).expect("valid");
        }
        seen
    }

    #[test]
    fn aborted_batches_are_dropped_and_committed_kept() {
        // Producer 1 aborts (offsets 0-1, marker 2); producer 2 commits (3-4, marker 5) while producer 1's
        // next transaction (6) is committed; a plain batch follows.
        let mut all = batch(0, 1, 2, true, false);
        all.extend(batch(2, 1, 1, true, true));
        all.extend(batch(3, 2, 2, true, false));
        all.extend(batch(5, 2, 1, true, true));
        all.extend(batch(6, 1, 1, true, false));
        all.extend(batch(7, -1, 2, false, false));
        let bytes = Bytes::from(all);
        let mut a = Aborted::default();
        a.add(1, 0);
        let (runs, next) = a.committed(&bytes, 0);
        assert_eq!(next, Some(9));
        assert_eq!(offsets_read(&runs), vec![3, 4, 6, 7, 8]);
    }

    #[test]
    fn an_abort_spanning_fetches_stays_open() {
        let first = Bytes::from(batch(0, 1, 2, true, false));
        let mut second = batch(2, 1, 1, true, false);
        second.extend(batch(3, 1, 1, true, true));
        second.extend(batch(4, -1, 1, false, false));
        let mut a = Aborted::default();
        a.add(1, 0);
        let (runs, next) = a.committed(&first, 0);
        assert!(offsets_read(&runs).is_empty());
        assert_eq!(next, Some(2));
        let (runs, next) = a.committed(&Bytes::from(second), 2);
        assert_eq!(offsets_read(&runs), vec![4]);
        assert_eq!(next, Some(5));
    }

    #[test]
    fn a_cut_batch_at_the_end_is_left_for_the_next_fetch() {
        let mut all = batch(0, -1, 2, false, false);
        let tail = batch(2, -1, 2, false, false);
        all.extend(&tail[..tail.len() - 5]);
        let (runs, next) = Aborted::default().committed(&Bytes::from(all), 0);
        assert_eq!(next, Some(2));
        assert_eq!(offsets_read(&runs), vec![0, 1]);
    }
}
