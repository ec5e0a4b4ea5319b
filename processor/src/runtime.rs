//! Running a pipeline inside the broker: `parallelism` OS threads, one per task, reading and writing
//! partitions through the storage layer, with stop-the-world checkpoints that commit state, input offsets and
//! outputs together (see [`crate::checkpoint`]).
//!
//! The partitions of every source are spread over the tasks (partition `i` of all sources, counted across
//! sources, goes to task `i % parallelism`). The loop of a task:
//! 1. read a chunk of each of its partitions and run stage 0 (the steps before the first key_by); ship what
//!    crosses a keyed edge to the owning tasks' inboxes; publish its partitions' event times;
//! 2. for each later stage `s`: load the stage's watermarks (stage 1: the source partitions'; stage s > 1:
//!    the minimum of what every task published for stage s - 1), drain its inbox for stage s, run the
//!    stage's nodes and their watermarks, ship, then publish the watermarks it used for stage s.
//!
//! A task publishes a stage's watermark only after shipping everything that stage emitted under it, and a
//! reader loads the watermark before it drains its inbox, so no element is ever overtaken by the watermark
//! that covers it, however many exchanges it crosses.
//!
//! A checkpoint stops every task between two loops:
//! 1. barrier: every task has shipped all it read (and, at the final checkpoint, closed its nodes);
//! 2. `stages + 1` rounds of: drain every inbox stage and run it without moving watermarks, ship, barrier.
//!    Each round moves every element in flight at least one exchange on, so after them nothing is in flight;
//! 3. each puts its state (by key group), offsets and pending outputs in its slot, barrier; the leader hands
//!    the checkpoint to the committer thread (which fsyncs the previous checkpoint's outputs, writes and
//!    fsyncs the new checkpoint, then appends its outputs), barrier; all resume.
//!
//! Operators never run concurrently with a snapshot, so the checkpoint is consistent without aligning barriers
//! in the data streams. Threads are plain OS threads (operators are CPU-bound and must not stall the broker's
//! async workers); they wait for appends through the log's notifier on the broker's runtime handle.
//!
//! Restoring redistributes state: keyed state moves with its key groups to whichever task owns them at the
//! current parallelism, so a pipeline may restart with more or fewer tasks, or after a source gained
//! partitions, and loses nothing. Only `max_parallelism` (the number of key groups) is fixed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use millrace_protocol::records::{BatchBuilder, BatchIter};

use millrace_storage::Log;
use parking_lot::Mutex;

use crate::barrier::Barrier;
use crate::checkpoint::{
    distribute, state_entries, Checkpoint, InputPosition, OutputBatch, StateEntry, TaskCheckpoint,
};
use crate::error::{Error, Result};
use crate::graph::node::Batch;
use crate::graph::{EndAt, GraphSpec, StartAt};
use crate::keyed_state::{StateBackend, StateHandle};
use crate::metrics::PipelineMetrics;
use crate::partition_io::{SinkPartition, SourcePartition};
use crate::pipeline::{Job, TopicSpec};
use crate::remote::sink::RemoteSink;
use crate::remote::source::RemotePartition;
use crate::source::for_each_record;
use crate::store::Store;
use crate::task::{OutputLayout, SlotOutput, SourceWatermark, Task};
use crate::watermark::WatermarkBoard;

/// What the processor needs from the broker: topics (created when missing), the pipeline's checkpoint log and
/// producer ids. The root binary implements it over the broker's topic registry.
pub trait Host: Send + Sync + 'static {
    /// The partitions of `topic`, created with `partitions` (None: the broker's default) if it is missing.
    fn topic(&self, name: &str, partitions: Option<i32>) -> Result<Vec<Arc<Log>>>;
    /// The one-partition internal topic holding `pipeline`'s checkpoints, created if missing.
    fn checkpoint_log(&self, pipeline: &str) -> Result<Arc<Log>>;
    /// A producer id no other producer uses.
    fn new_producer_id(&self) -> Result<i64>;
    /// The folder holding `pipeline`'s keyed state store (made if missing). It must survive restarts as the
    /// checkpoint log does.
    fn state_dir(&self, pipeline: &str) -> Result<std::path::PathBuf>;
    /// The names of the topics that exist (for sources that name a pattern).
    fn topic_names(&self) -> Result<Vec<String>> {
        Err(Error::Host(
            "this host cannot list topics (a source names a pattern)".into(),
        ))
    }
}

/// How much one read of a source partition asks for.
const READ_BYTES: usize = 1 << 20;
/// How long a caught-up task waits for an append before it looks at checkpoints and idleness again.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// A task stops reading input while another task's inbox holds more batches than this (backpressure: a
/// slow task's inbox cannot grow without bound; every task drains its inbox whether or not it reads, so
/// this cannot deadlock).
const MAX_INBOX_BATCHES: usize = 1024;
/// The least time between two checkpoints taken early because a caught-up task has output waiting.
const MIN_CHECKPOINT_GAP_MS: i64 = 10;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One output partition the pipeline writes.
struct OutputPartition {
    topic: String,
    partition: i32,
    late: bool,
    log: SinkPartition,
    /// The last offset appended by the previous checkpoint, to be fsynced before the next one is written.
    unsynced: Option<i64>,
}

/// One source partition a task reads.
struct InputPartition {
    source: usize,
    topic: String,
    /// Its index on the watermark board.
    board: usize,
    log: SourcePartition,
    offset: i64,
    /// Where a bounded source stops (exclusive).
    end: Option<i64>,
    max_ts: i64,
    last_data_ms: i64,
}

impl InputPartition {
    fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.offset >= e)
    }
}

/// Where a source with no checkpointed position starts in `log`.
fn start_offset(log: &Log, start: StartAt) -> i64 {
    let (first, end) = (log.log_start_offset(), log.log_end_offset());
    match start {
        StartAt::Earliest => first,
        StartAt::Latest => end,
        StartAt::Offset(o) => o.clamp(first, end),
        StartAt::Time(t) => log.offset_for_timestamp(t).map_or(end, |(o, _)| o),
    }
}

/// Where a bounded source stops in `log` (exclusive), resolved when the pipeline starts.
fn end_offset(log: &Log, end: EndAt) -> Option<i64> {
    let last = log.log_end_offset();
    match end {
        EndAt::Unbounded => None,
        EndAt::End => Some(last),
        EndAt::Offset(o) => Some(o.min(last)),
        EndAt::Time(t) => Some(
            t.checked_add(1)
                .and_then(|t| log.offset_for_timestamp(t))
                .map_or(last, |(o, _)| o),
        ),
    }
}

/// A source partition found at start, before its start offset is known.
enum Found {
    Local(Arc<Log>),
    /// (bootstrap servers, topic, partition)
    Remote(String, millrace_client::cluster::Topic, i32),
}

/// The offset of one remote partition at `ts` (EARLIEST, LATEST or a time; read_committed), and its latest.
async fn remote_offsets(
    cluster: &str,
    t: &millrace_client::cluster::Topic,
    partition: i32,
    ts: i64,
) -> Result<(i64, i64)> {
    use millrace_client::cluster::LATEST;
    let at = crate::remote::offsets(cluster, t, &[partition], ts).await?;
    let latest = crate::remote::offsets(cluster, t, &[partition], LATEST).await?;
    let latest = latest.first().copied().unwrap_or(0);
    // A time after every record: Kafka answers -1; that is the end.
    let at = at.first().copied().filter(|o| *o >= 0).unwrap_or(latest);
    Ok((at, latest))
}

/// Where a remote source with no checkpointed position starts (as [`start_offset`] for a local one).
async fn remote_start(
    cluster: &str,
    t: &millrace_client::cluster::Topic,
    partition: i32,
    start: StartAt,
) -> Result<i64> {
    use millrace_client::cluster::{EARLIEST, LATEST};
    Ok(match start {
        StartAt::Earliest => remote_offsets(cluster, t, partition, EARLIEST).await?.0,
        StartAt::Latest => remote_offsets(cluster, t, partition, LATEST).await?.0,
        StartAt::Offset(o) => {
            let first = remote_offsets(cluster, t, partition, EARLIEST).await?;
            o.clamp(first.0, first.1)
        }
        StartAt::Time(ts) => remote_offsets(cluster, t, partition, ts).await?.0,
    })
}

/// Where a bounded remote source stops (as [`end_offset`] for a local one): its last stable offset now.
async fn remote_end(
    cluster: &str,
    t: &millrace_client::cluster::Topic,
    partition: i32,
    end: EndAt,
) -> Result<Option<i64>> {
    use millrace_client::cluster::LATEST;
    Ok(match end {
        EndAt::Unbounded => None,
        EndAt::End => Some(remote_offsets(cluster, t, partition, LATEST).await?.0),
        EndAt::Offset(o) => Some(o.min(remote_offsets(cluster, t, partition, LATEST).await?.1)),
        EndAt::Time(ts) => Some(
            remote_offsets(cluster, t, partition, ts.saturating_add(1))
                .await?
                .0,
        ),
    })
}

/// What a task hands in at a checkpoint.
#[derive(Default)]
struct Slot {
    state: Vec<StateEntry>,
    inputs: Vec<InputPosition>,
    producer_id: i64,
    /// Next sequence per output slot, after `outputs`.
    sequences: Vec<i32>,
    outputs: Vec<SlotOutput>,
    read: u64,
    operators: Vec<crate::metrics::OperatorMetrics>,
}

/// An element batch in an inbox: (node, input port, batch).
type Inbound = (usize, usize, Batch);

struct Shared {
    name: String,
    graph: Arc<GraphSpec>,
    tasks: usize,
    stages: usize,
    /// The board range of each source.
    source_ranges: Vec<std::ops::Range<usize>>,
    /// Per (task, stage): `inboxes[task * stages + stage]`.
    inboxes: Vec<Mutex<Vec<Inbound>>>,
    /// Batches waiting in each task's inboxes (all stages).
    inbox_batches: Vec<AtomicUsize>,
    /// Every source partition by board index, and the next offset its task will read.
    input_logs: Vec<SourcePartition>,
    positions: Vec<AtomicI64>,
    /// Watermarks each task last used per (stage, task, source), published after it shipped that stage.
    published_wm: Vec<AtomicI64>,
    published_idle: Vec<AtomicBool>,
    board: WatermarkBoard,
    barrier: Barrier,
    checkpoint_requested: AtomicBool,
    stopping: AtomicBool,
    /// Whether the checkpoint under way is the final one (set by its leader; see `checkpoint`).
    final_checkpoint: AtomicBool,
    last_checkpoint_ms: AtomicI64,
    pending_bytes: Vec<AtomicUsize>,
    slots: Mutex<Vec<Slot>>,
    committer: Mutex<Committer>,
    /// Checkpoints on their way to the committer thread (taken, and so closed, by `stop`).
    commits: Mutex<Option<std::sync::mpsc::SyncSender<CommitJob>>>,
    metrics: Mutex<PipelineMetrics>,
    error: Mutex<Option<Error>>,
    interval_ms: i64,
    max_pending: usize,
    idle_timeout_ms: i64,
    fsync: bool,
    max_parallelism: u32,
    /// Every source is bounded: the pipeline stops when all are read.
    bounded: bool,
    /// When the metrics were last logged at info level.
    last_report_ms: AtomicI64,
    state: StateHandle,
    rt: tokio::runtime::Handle,
}

impl Shared {
    fn pub_index(&self, stage: usize, task: usize, source: usize) -> usize {
        (stage * self.tasks + task) * self.source_ranges.len() + source
    }

    /// The source watermarks stage `stage` runs with (see the module documentation).
    fn stage_watermarks(&self, stage: usize) -> Vec<SourceWatermark> {
        if stage <= 1 {
            // A partition marked idle that has unread records is not caught up, so not idle.
            let pending = |p: usize| {
                self.input_logs
                    .get(p)
                    .zip(self.positions.get(p))
                    .is_some_and(|(log, pos)| log.end_offset() > pos.load(Ordering::Acquire))
            };
            return self
                .source_ranges
                .iter()
                .map(|r| self.board.source_with(r.clone(), pending))
                .collect();
        }
        (0..self.source_ranges.len())
            .map(|src| {
                let mut w = SourceWatermark {
                    watermark: i64::MAX,
                    idle: true,
                };
                for t in 0..self.tasks {
                    let i = self.pub_index(stage - 1, t, src);
                    w.watermark = w
                        .watermark
                        .min(self.published_wm[i].load(Ordering::Acquire));
                    w.idle &= self.published_idle[i].load(Ordering::Acquire);
                }
                w
            })
            .collect()
    }

    fn publish(&self, stage: usize, task: usize, wms: &[SourceWatermark]) {
        for (src, w) in wms.iter().enumerate() {
            let i = self.pub_index(stage, task, src);
            self.published_idle[i].store(w.idle, Ordering::Release);
            self.published_wm[i].store(w.watermark, Ordering::Release);
        }
    }

    /// Whether every task has run the last stage with every source at the end of time.
    fn all_done(&self) -> bool {
        let last = self.stages - 1;
        (0..self.tasks).all(|t| {
            (0..self.source_ranges.len()).all(|s| {
                self.published_wm[self.pub_index(last, t, s)].load(Ordering::Acquire) == i64::MAX
            })
        })
    }

    /// Hands a task's outgoing batches to the inboxes of their tasks.
    fn ship(&self, task: &mut Task) {
        for (target, node, port, batch) in task.take_outgoing() {
            let stage = self.graph.stage.get(node).copied().unwrap_or(0);
            if let Some(inbox) = self.inboxes.get(target * self.stages + stage) {
                inbox.lock().push((node, port, batch));
                self.inbox_batches[target].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves task `i`'s inbox for `stage` into its queues; whether there was anything.
    fn drain_inbox(&self, i: usize, stage: usize, task: &mut Task) -> bool {
        let inbox = std::mem::take(&mut *self.inboxes[i * self.stages + stage].lock());
        let any = !inbox.is_empty();
        self.inbox_batches[i].fetch_sub(inbox.len(), Ordering::Relaxed);
        for (node, port, batch) in inbox {
            task.deliver(node, port, batch);
        }
        any
    }
}

/// How often a running pipeline logs its metrics (at info level; every checkpoint logs at debug).
const REPORT_INTERVAL_MS: i64 = 30_000;

/// A snapshot taken by the tasks, for the committer thread to make durable.
struct CommitJob {
    slots: Vec<Slot>,
    started: Instant,
    /// The state backend's epoch this checkpoint ends, and the change sets staged in it.
    epoch: u64,
    changes: Vec<Bytes>,
}

/// The committer's side of a checkpoint: the logs it writes.
struct Committer {
    checkpoint_log: Arc<Log>,
    checkpoint_id: u64,
    /// Every output partition, in the order of the tasks' output slots.
    outputs: Vec<OutputPartition>,
    /// Input offsets of the last checkpoint (to skip commits with nothing new).
    committed_offsets: Vec<(String, i32, i64)>,
    /// The remote topics written (`SinkPartition::Remote` indexes them).
    remote: Vec<RemoteSink>,
}

/// A running pipeline. Dropping it without [`RunningPipeline::stop`] leaves the threads running until the
/// process exits (as a crash would, which exactly-once tolerates).
pub struct RunningPipeline {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl RunningPipeline {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many tasks run the pipeline.
    pub fn parallelism(&self) -> usize {
        self.shared.tasks
    }

    /// Figures as of the last checkpoint.
    pub fn metrics(&self) -> PipelineMetrics {
        self.shared.metrics.lock().clone()
    }

    /// The error that stopped the pipeline, if one did.
    pub fn error(&self) -> Option<Error> {
        self.shared.error.lock().clone()
    }

    /// Takes a final checkpoint, stops every task, waits for the commit; returns the final metrics.
    pub fn stop(self) -> Result<PipelineMetrics> {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared
            .checkpoint_requested
            .store(true, Ordering::Release);
        self.finish()
    }

    /// Waits until a batch pipeline (every source bounded) has read everything, committed and stopped, or
    /// until any pipeline fails; returns the final metrics.
    pub fn wait(self) -> Result<PipelineMetrics> {
        self.finish()
    }

    /// Whether the pipeline's tasks have all ended (a batch job done, or a failure).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    fn finish(self) -> Result<PipelineMetrics> {
        for t in self.threads {
            let _ = t.join();
        }
        for input in &self.shared.input_logs {
            input.stop();
        }
        // Closing the channel lets the committer finish what is queued and end.
        drop(self.shared.commits.lock().take());
        if let Some(c) = self.committer {
            let _ = c.join();
        }
        let m = self.shared.metrics.lock().clone();
        tracing::info!(
            pipeline = %m.name, read = m.records_read, written = m.records_written, late = m.late_written,
            checkpoints = m.checkpoints, "pipeline stopped"
        );
        match self.shared.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }
}

fn topic_logs(host: &dyn Host, spec: &TopicSpec) -> Result<Vec<Arc<Log>>> {
    let logs = host.topic(&spec.name, spec.partitions)?;
    if logs.is_empty() {
        return Err(Error::Host(format!(
            "topic {} has no partitions",
            spec.name
        )));
    }
    Ok(logs)
}

/// The newest checkpoint in `log`, if any. Older ones are removed by DeleteRecords after each commit, so this
/// reads one record in the common case.
fn latest_checkpoint(log: &Log, pipeline: &str) -> Result<Option<Checkpoint>> {
    let mut offset = log.log_start_offset();
    let mut latest: Option<Bytes> = None;
    loop {
        let slice = log.read(offset, 64 << 20, true)?;
        if slice.records.is_empty() {
            break;
        }
        let next = for_each_record(&slice.records, offset, log.partition(), |m| {
            if m.key.as_deref() == Some(pipeline.as_bytes()) {
                latest = m.value;
            }
        })?;
        if next <= offset {
            break;
        }
        offset = next;
    }
    latest.map(|v| Checkpoint::decode(&v)).transpose()
}

/// Whether `log` holds, at or after `from`, a batch of `producer_id` starting at `base_sequence`.
fn holds_batch(log: &Log, from: i64, producer_id: i64, base_sequence: i32) -> Result<bool> {
    let mut offset = from.max(log.log_start_offset());
    loop {
        let slice = match log.read(offset, READ_BYTES, true) {
            Ok(s) => s,
            Err(millrace_storage::Error::OffsetOutOfRange { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if slice.records.is_empty() {
            return Ok(false);
        }
        let mut next = offset;
        for item in BatchIter::new(&slice.records) {
            let (h, _) = item?;
            if h.producer_id == producer_id && h.base_sequence == base_sequence {
                return Ok(true);
            }
            next = next.max(h.last_offset() + 1);
        }
        if next <= offset {
            return Ok(false);
        }
        offset = next;
    }
}

/// Starts `job` over the host's storage. Restores the newest checkpoint first, writing any of its outputs a
/// crash kept from reaching their partitions, and redistributing its state over the tasks.
pub fn start(
    job: &Job,
    host: Arc<dyn Host>,
    rt: tokio::runtime::Handle,
) -> Result<RunningPipeline> {
    let settings = job.settings();
    let graph = job.graph.clone();
    let name = settings.name.clone();

    // Per source, its partitions with their topic: a pattern reads every topic it matches now (in name
    // order; topics made later are read after a restart).
    let mut source_logs: Vec<Vec<(String, Found)>> = Vec::with_capacity(graph.sources.len());
    for s in &graph.sources {
        if let Some(cluster) = &s.topic.cluster {
            if s.topic.is_pattern() {
                return Err(Error::Invalid(format!(
                    "source {}: a topic pattern cannot be read from a remote cluster ({cluster})",
                    s.topic.name
                )));
            }
            let t = rt.block_on(crate::remote::describe(cluster, &s.topic.name, None))?;
            source_logs.push(
                t.partitions
                    .iter()
                    .map(|p| {
                        (
                            t.name.clone(),
                            Found::Remote(cluster.clone(), t.clone(), p.index),
                        )
                    })
                    .collect(),
            );
            continue;
        }
        let topics = if s.topic.is_pattern() {
            let mut names: Vec<String> = host
                .topic_names()?
                .into_iter()
                .filter(|t| {
                    s.topic.matches(t)
                        && !t.starts_with("__")
                        && !graph.outputs.iter().any(|o| o.topic.name == *t)
                })
                .collect();
            names.sort();
            names
        } else {
            vec![s.topic.name.clone()]
        };
        let mut logs = Vec::new();
        for t in topics {
            let spec = TopicSpec {
                name: t.clone(),
                partitions: s.topic.partitions,
                cluster: None,
            };
            logs.extend(
                topic_logs(&*host, &spec)?
                    .into_iter()
                    .map(|l| (t.clone(), Found::Local(l))),
            );
        }
        source_logs.push(logs);
    }
    let mut outputs: Vec<OutputPartition> = Vec::new();
    let mut remote_sinks: Vec<RemoteSink> = Vec::new();
    let mut layout = OutputLayout::default();
    for o in &graph.outputs {
        let logs: Vec<SinkPartition> = match &o.topic.cluster {
            Some(cluster) => {
                let sink =
                    rt.block_on(RemoteSink::open(cluster, &o.topic.name, o.topic.partitions))?;
                let n = sink.partitions();
                remote_sinks.push(sink);
                let sink = remote_sinks.len() - 1;
                (0..n).map(|_| SinkPartition::Remote { sink }).collect()
            }
            None => topic_logs(&*host, &o.topic)?
                .into_iter()
                .map(SinkPartition::Local)
                .collect(),
        };
        layout.partitions.push(logs.len());
        for (p, log) in logs.into_iter().enumerate() {
            outputs.push(OutputPartition {
                topic: o.topic.name.clone(),
                partition: p as i32,
                late: o.late,
                log,
                unsynced: None,
            });
        }
    }
    let checkpoint_log = host.checkpoint_log(&name)?;
    let partition_counts: Vec<usize> = source_logs.iter().map(Vec::len).collect();
    let groups = job.key_groups(&partition_counts);
    let n = groups.parallelism;

    let restored = latest_checkpoint(&checkpoint_log, &name)?;
    let store = Arc::new(Store::open(&host.state_dir(&name)?)?);
    reconcile_store(&name, &store, restored.as_ref())?;
    let state_backend =
        StateBackend::new(store, settings.state_backend, settings.state_memory_budget);
    let mut positions: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    let (checkpoint_id, restored_tasks, state) = match restored {
        Some(c) => {
            if !c.state.is_empty() && c.max_parallelism == 0 {
                return Err(Error::Invalid(format!(
                    "pipeline {name}: its last checkpoint was written by an older millrace that placed keyed \
                     state by partition, not by key group; it cannot be restored (delete the pipeline's \
                     checkpoint topic to start it afresh)"
                )));
            }
            if !c.state.is_empty() && c.max_parallelism as usize != groups.max_parallelism {
                return Err(Error::Invalid(format!(
                    "pipeline {name}: its state is split into {} key groups and max_parallelism is now {}; \
                     max_parallelism cannot change while the pipeline has state",
                    c.max_parallelism, groups.max_parallelism
                )));
            }
            for o in &c.outputs {
                let Some(out) = outputs
                    .iter()
                    .find(|x| x.topic == o.topic && x.partition == o.partition)
                else {
                    return Err(Error::Invalid(format!(
                        "pipeline {name}: checkpoint output for {}-{} which the pipeline no longer writes",
                        o.topic, o.partition
                    )));
                };
                let written = match &out.log {
                    SinkPartition::Local(log) => {
                        if holds_batch(log, o.search_from, o.producer_id, o.base_sequence)? {
                            false
                        } else {
                            log.append_slice(&o.batch, now_ms())?;
                            true
                        }
                    }
                    SinkPartition::Remote { sink } => {
                        let Some(sink) = remote_sinks.get_mut(*sink) else {
                            return Err(Error::Host("remote sink index out of range".into()));
                        };
                        if rt.block_on(sink.holds(
                            o.partition,
                            o.search_from,
                            o.producer_id,
                            o.base_sequence,
                        ))? {
                            false
                        } else {
                            rt.block_on(sink.write(vec![(o.partition, o.batch.clone())], true))?;
                            true
                        }
                    }
                };
                if written {
                    tracing::info!(pipeline = %name, topic = %o.topic, partition = o.partition,
                        sequence = o.base_sequence, "wrote a checkpointed output batch a crash had kept back");
                }
            }
            let first = graph
                .sources
                .first()
                .map(|s| s.topic.name.clone())
                .unwrap_or_default();
            for i in &c.inputs {
                // Format 1 named no topic: its inputs are the only source's.
                let topic = if i.topic.is_empty() {
                    first.clone()
                } else {
                    i.topic.clone()
                };
                positions.insert((topic, i.partition), (i.next_offset, i.max_ts));
            }
            tracing::info!(pipeline = %name, checkpoint = c.id, tasks_before = c.parallelism, tasks = n,
                "restored checkpoint");
            (c.id, c.tasks, c.state)
        }
        None => (0, Vec::new(), Vec::new()),
    };

    // Source partitions, on the board in source order, spread over the tasks.
    let mut source_ranges = Vec::with_capacity(source_logs.len());
    let mut parts: Vec<Vec<InputPartition>> = (0..n).map(|_| Vec::new()).collect();
    let mut board_index = 0;
    let mut restored_ts = Vec::new();
    let start_ms = now_ms();
    for (s, logs) in source_logs.into_iter().enumerate() {
        let start = board_index;
        let spec = &graph.sources[s];
        for (topic, found) in logs {
            let (log, offset, max_ts, end) = match found {
                Found::Local(log) => {
                    let pos = positions.get(&(topic.clone(), log.partition())).copied();
                    let (offset, max_ts) =
                        pos.unwrap_or_else(|| (start_offset(&log, spec.start), i64::MIN));
                    let end = end_offset(&log, spec.end);
                    (SourcePartition::Local(log), offset, max_ts, end)
                }
                Found::Remote(cluster, t, partition) => {
                    let pos = positions.get(&(topic.clone(), partition)).copied();
                    let (offset, max_ts) = match pos {
                        Some(p) => p,
                        None => (
                            rt.block_on(remote_start(&cluster, &t, partition, spec.start))?,
                            i64::MIN,
                        ),
                    };
                    let end = rt.block_on(remote_end(&cluster, &t, partition, spec.end))?;
                    let r = RemotePartition::start(&cluster, t, partition, offset, &rt);
                    (SourcePartition::Remote(r), offset, max_ts, end)
                }
            };
            let part = InputPartition {
                source: s,
                topic: topic.clone(),
                board: board_index,
                log,
                offset,
                end,
                max_ts,
                last_data_ms: start_ms,
            };
            restored_ts.push((board_index, if part.finished() { i64::MAX } else { max_ts }));
            parts[board_index % n].push(part);
            board_index += 1;
        }
        source_ranges.push(start..board_index);
    }
    let board = WatermarkBoard::new(board_index, settings.out_of_orderness_ms);
    for (i, ts) in restored_ts {
        board.observe(i, ts);
    }

    let mut input_logs: Vec<Option<SourcePartition>> = vec![None; board_index];
    let mut positions: Vec<AtomicI64> = (0..board_index).map(|_| AtomicI64::new(0)).collect();
    for p in parts.iter().flatten() {
        input_logs[p.board] = Some(p.log.clone());
        // (A finished bounded partition may look pending for records past its end: harmless, its watermark
        // is the end of time.)
        positions[p.board] = AtomicI64::new(p.offset);
    }
    let input_logs: Vec<SourcePartition> = input_logs.into_iter().flatten().collect();

    let per_task = distribute(&state, &groups);
    let mut tasks = Vec::with_capacity(n);
    for (i, restore) in per_task.iter().enumerate() {
        let mut task = Task::new(
            graph.clone(),
            i,
            groups,
            layout.clone(),
            Some(state_backend.clone()),
        );
        task.restore(restore)?;
        match restored_tasks.get(i) {
            Some(t) => {
                let seqs: Vec<i32> = outputs
                    .iter()
                    .map(|o| {
                        t.sequences
                            .iter()
                            .find(|(topic, p, _)| *topic == o.topic && *p == o.partition)
                            .map_or(0, |x| x.2)
                    })
                    .collect();
                task.output().set_producer(t.producer_id, &seqs);
            }
            None => {
                let seqs = vec![0; outputs.len()];
                task.output().set_producer(host.new_producer_id()?, &seqs);
            }
        }
        tasks.push(task);
    }

    let stages = graph.stages;
    let sources = source_ranges.len();
    let committed_offsets = committed(&parts);
    // One checkpoint may be committing while the tasks snapshot the next; a third waits (backpressure).
    let (commit_tx, commit_rx) = std::sync::mpsc::sync_channel::<CommitJob>(1);
    let shared = Arc::new(Shared {
        name: name.clone(),
        graph: graph.clone(),
        tasks: n,
        stages,
        source_ranges,
        inboxes: (0..n * stages).map(|_| Mutex::new(Vec::new())).collect(),
        inbox_batches: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        input_logs,
        positions,
        published_wm: (0..stages * n * sources)
            .map(|_| AtomicI64::new(i64::MIN))
            .collect(),
        published_idle: (0..stages * n * sources)
            .map(|_| AtomicBool::new(false))
            .collect(),
        board,
        barrier: Barrier::new(n),
        checkpoint_requested: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        final_checkpoint: AtomicBool::new(false),
        last_checkpoint_ms: AtomicI64::new(now_ms()),
        pending_bytes: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        slots: Mutex::new((0..n).map(|_| Slot::default()).collect()),
        committer: Mutex::new(Committer {
            checkpoint_log,
            checkpoint_id,
            outputs: std::mem::take(&mut outputs),
            committed_offsets,
            remote: remote_sinks,
        }),
        commits: Mutex::new(Some(commit_tx)),
        metrics: Mutex::new(PipelineMetrics {
            name: name.clone(),
            watermark: i64::MIN,
            ..Default::default()
        }),
        error: Mutex::new(None),
        interval_ms: settings.checkpoint_interval_ms,
        max_pending: settings.checkpoint_max_pending_bytes,
        idle_timeout_ms: settings.idle_timeout_ms,
        fsync: settings.checkpoint_fsync,
        max_parallelism: groups.max_parallelism as u32,
        bounded: graph.is_bounded(),
        last_report_ms: AtomicI64::new(now_ms()),
        state: state_backend.clone(),
        rt,
    });

    let mut threads = Vec::with_capacity(n);
    for (i, (task, parts)) in tasks.into_iter().zip(parts).enumerate() {
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("pipe-{name}-{i}"))
            .spawn(move || {
                let s = shared.clone();
                let run = std::panic::AssertUnwindSafe(move || run_task(&s, i, task, parts));
                if std::panic::catch_unwind(run).is_err() {
                    fail(&shared, Error::Stopped(format!("task {i} panicked")));
                }
            })
            .map_err(|e| Error::Host(format!("cannot start a pipeline thread: {e}")))?;
        threads.push(t);
    }
    let committer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("pipe-{name}-commit"))
            .spawn(move || {
                // Sequential: checkpoint N's outputs are appended before N+1 is written, as the invariants ask.
                for job in commit_rx {
                    if let Err(e) = commit(&shared, job) {
                        // The outputs this checkpoint carried are gone from memory: stop, so that a restart
                        // replays from the previous checkpoint.
                        fail(&shared, e);
                        return;
                    }
                }
            })
            .map_err(|e| Error::Host(format!("cannot start a pipeline thread: {e}")))?
    };
    tracing::info!(pipeline = %name, tasks = n, key_groups = groups.max_parallelism, stages, "pipeline started");
    Ok(RunningPipeline {
        shared,
        threads,
        committer: Some(committer),
    })
}

/// Brings the state store to the checkpoint being restored: empty without one; the checkpoint's changes
/// applied if a crash came between the checkpoint becoming durable and its changes reaching the store. A
/// store ahead of the checkpoint log cannot be restored from (its older state is gone).
fn reconcile_store(name: &str, store: &Store, restored: Option<&Checkpoint>) -> Result<()> {
    let at = store.checkpoint();
    match restored {
        None => {
            if at != 0 || store.runs() > 0 {
                tracing::info!(pipeline = %name, store_checkpoint = at,
                    "no checkpoint to restore: the state store starts empty");
                store.clear()?;
            }
        }
        Some(c) if at > c.id => {
            return Err(Error::Invalid(format!(
                "pipeline {name}: its state store holds checkpoint {at}, newer than the last checkpoint \
                 {} in its checkpoint log; delete {} to start the pipeline's state afresh",
                c.id,
                store.dir().display()
            )));
        }
        Some(c) if at < c.id && !c.changes.is_empty() => {
            store.apply(c.id, &c.changes)?;
            tracing::info!(pipeline = %name, checkpoint = c.id,
                "applied a checkpoint's state changes a crash had kept from the store");
        }
        Some(_) => {}
    }
    Ok(())
}

/// The input positions of every task's partitions, in task order.
fn committed(parts: &[Vec<InputPartition>]) -> Vec<(String, i32, i64)> {
    let mut v: Vec<(String, i32, i64)> = parts
        .iter()
        .flatten()
        .map(|p| (p.topic.clone(), p.log.partition(), p.offset))
        .collect();
    v.sort();
    v
}

fn fail(shared: &Shared, e: Error) {
    tracing::error!(pipeline = %shared.name, error = %e, "pipeline failed");
    shared.error.lock().get_or_insert(e);
    shared.stopping.store(true, Ordering::Release);
    shared.barrier.break_it();
}

/// Reads one chunk of `part` into the task. Ok(true): records were read.
fn read_partition(
    shared: &Shared,
    task: &mut Task,
    part: &mut InputPartition,
    read: &mut u64,
) -> Result<bool> {
    let log = match &part.log {
        SourcePartition::Local(log) => log.clone(),
        SourcePartition::Remote(r) => {
            let Some(chunk) = r.read(part.offset)? else {
                return Ok(false);
            };
            let source = part.source;
            let mut max_ts = part.max_ts;
            let next = for_each_record(&chunk.records, part.offset, r.partition, |m| {
                *read += 1;
                max_ts = max_ts.max(task.feed(source, m));
            })?;
            part.max_ts = max_ts;
            // The chunk ends past what it holds when the batches behind it were aborted or markers.
            let next = next.max(chunk.next);
            let got = next > part.offset;
            part.offset = next;
            return Ok(got);
        }
    };
    loop {
        match log.read(part.offset, READ_BYTES, true) {
            Ok(slice) if !slice.records.is_empty() => {
                let partition = log.partition();
                let source = part.source;
                let mut max_ts = part.max_ts;
                let next = for_each_record(&slice.records, part.offset, partition, |m| {
                    *read += 1;
                    max_ts = max_ts.max(task.feed(source, m));
                })?;
                part.max_ts = max_ts;
                let got = next > part.offset;
                part.offset = next;
                return Ok(got);
            }
            Ok(_) => return Ok(false),
            Err(millrace_storage::Error::OffsetOutOfRange { log_start, .. })
                if part.offset < log_start =>
            {
                tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.log.partition(),
                    from = part.offset, to = log_start,
                    "input records were deleted by retention before the pipeline read them; skipping ahead");
                part.offset = log_start;
            }
            Err(millrace_storage::Error::OffsetOutOfRange {
                log_start, log_end, ..
            }) if part.offset > log_end => {
                // The partition is shorter than the checkpoint says (the topic was deleted and created again, or
                // truncated): what is there now is new input, read from its start.
                tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.log.partition(),
                    from = part.offset, log_end, to = log_start,
                    "input partition is shorter than the pipeline's position; reading it from its start");
                part.offset = log_start;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run_task(shared: &Shared, i: usize, mut task: Task, mut parts: Vec<InputPartition>) {
    let mut read: u64 = 0;
    let mut seen_epoch = shared.board.epoch();
    let stages = shared.stages;
    loop {
        if shared.barrier.is_broken() {
            return;
        }
        if shared.checkpoint_requested.load(Ordering::Acquire) {
            match checkpoint(shared, i, &mut task, &parts, &mut read) {
                Ok(true) | Err(_) => return,
                Ok(false) => continue,
            }
        }

        // Stage 0 runs under the watermarks of before this read (its records are not yet on the board).
        let now = now_ms();
        let before = shared.stage_watermarks(0);
        // Input resumed after a pause of every partition: start this task's idle timers afresh.
        let epoch = shared.board.epoch();
        if epoch != seen_epoch {
            seen_epoch = epoch;
            for part in parts.iter_mut() {
                part.last_data_ms = now;
            }
        }
        let mut got_data = false;
        let backpressured = shared
            .inbox_batches
            .iter()
            .enumerate()
            .any(|(t, n)| t != i && n.load(Ordering::Relaxed) > MAX_INBOX_BATCHES);
        for part in parts.iter_mut().filter(|_| !backpressured) {
            match read_partition(shared, &mut task, part, &mut read) {
                Ok(got) => {
                    if let Some(pos) = shared.positions.get(part.board) {
                        pos.store(part.offset, Ordering::Release);
                    }
                    if got {
                        got_data = true;
                        part.last_data_ms = now;
                        if shared.board.idle(part.board) && shared.board.all_idle() {
                            shared.board.wake();
                        }
                        shared.board.set_idle(part.board, false);
                    } else if now - part.last_data_ms >= shared.idle_timeout_ms {
                        shared.board.mark_idle(part.board, seen_epoch);
                    }
                }
                Err(e) => {
                    fail(shared, e);
                    return;
                }
            }
        }
        if let Err(e) = task.run_stage(0, Some(&before), Some(now)) {
            fail(shared, e);
            return;
        }
        shared.ship(&mut task);
        shared.publish(0, i, &before);
        for part in &parts {
            if part.finished() {
                // Read to its end: it holds nothing back any more.
                shared.board.set_idle(part.board, false);
                shared.board.observe(part.board, i64::MAX);
            } else {
                shared.board.observe(part.board, part.max_ts);
            }
        }

        let mut had_inbox = false;
        for s in 1..stages {
            // Loaded before the inbox is drained: every element the watermarks cover is in the inbox by then.
            let wms = shared.stage_watermarks(s);
            had_inbox |= shared.drain_inbox(i, s, &mut task);
            if let Err(e) = task.run_stage(s, Some(&wms), Some(now)) {
                fail(shared, e);
                return;
            }
            shared.ship(&mut task);
            shared.publish(s, i, &wms);
        }

        if shared.bounded && shared.all_done() {
            // Every source read to its end and the end of time through every stage of every task: commit
            // and stop.
            shared.stopping.store(true, Ordering::Release);
            shared.checkpoint_requested.store(true, Ordering::Release);
            continue;
        }

        shared.pending_bytes[i].store(task.output().bytes, Ordering::Relaxed);
        let pending: usize = shared
            .pending_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        let since = now - shared.last_checkpoint_ms.load(Ordering::Relaxed);
        // Outputs become visible at checkpoints: commit on the interval, when enough is pending, and as soon as
        // a caught-up task has output waiting (so a quiet pipeline does not sit on results for a whole interval).
        let caught_up = !got_data && !had_inbox && !backpressured;
        if let Some(e) = shared.state.take_error() {
            fail(shared, e);
            return;
        }
        if since >= shared.interval_ms
            || (shared.state.wants_checkpoint() && since >= MIN_CHECKPOINT_GAP_MS)
            || pending >= shared.max_pending
            || (caught_up && pending > 0 && since >= MIN_CHECKPOINT_GAP_MS)
        {
            shared.checkpoint_requested.store(true, Ordering::Release);
            continue;
        }
        if backpressured && !had_inbox {
            std::thread::sleep(Duration::from_millis(1));
        }
        if caught_up {
            match parts.first() {
                Some(first) => first.log.wait(&shared.rt, first.offset, IDLE_POLL),
                None => std::thread::sleep(IDLE_POLL),
            }
        }
    }
}

/// One task's part in a checkpoint (see the module documentation). Ok(true): it was the final one, the task
/// ends. Err: the barrier broke (a task failed).
fn checkpoint(
    shared: &Shared,
    i: usize,
    task: &mut Task,
    parts: &[InputPartition],
    read: &mut u64,
) -> std::result::Result<bool, crate::barrier::Broken> {
    let started = Instant::now();
    // Whether this checkpoint is the final one is decided once, by the leader, while every task waits:
    // `stopping` may be set at any moment (by stop(), or by a task that saw a batch job end), and tasks that
    // read it at different times would disagree, one ending while another waits at the next barrier.
    if shared.barrier.wait()? {
        let stopping = shared.stopping.load(Ordering::Acquire);
        shared.final_checkpoint.store(stopping, Ordering::Release);
    }
    shared.barrier.wait()?;
    let stopping = shared.final_checkpoint.load(Ordering::Acquire);
    if stopping {
        task.close();
        shared.ship(task);
    }
    for _ in 0..=shared.stages {
        for s in 1..shared.stages {
            shared.drain_inbox(i, s, task);
            if let Err(e) = task.run_stage(s, None, None) {
                fail(shared, e);
                return Err(crate::barrier::Broken);
            }
            shared.ship(task);
        }
        shared.barrier.wait()?;
    }
    {
        let mut operators = Vec::new();
        task.metrics(&mut operators);
        let mut state = Vec::new();
        state_entries(i, task.snapshot(), &mut state);
        let out = task.output();
        let outputs = out.take();
        let producer_id = out.producer_id();
        let sequences = out.sequences();
        shared.pending_bytes[i].store(0, Ordering::Relaxed);
        let inputs = parts
            .iter()
            .map(|p| InputPosition {
                topic: p.topic.clone(),
                partition: p.log.partition(),
                next_offset: p.offset,
                max_ts: p.max_ts,
            })
            .collect();
        let mut slots = shared.slots.lock();
        slots[i] = Slot {
            state,
            inputs,
            producer_id,
            sequences,
            outputs,
            read: std::mem::take(read),
            operators,
        };
    }
    if shared.barrier.wait()? {
        let slots = std::mem::take(&mut *shared.slots.lock());
        *shared.slots.lock() = (0..shared.tasks).map(|_| Slot::default()).collect();
        // Every task has staged its state changes: they belong to this checkpoint.
        let (epoch, changes) = shared.state.seal();
        if let Some(e) = shared.state.take_error() {
            // State read from a damaged store: nothing computed since may be committed.
            fail(shared, e);
            return Err(crate::barrier::Broken);
        }
        // The fsyncs and appends run on the committer thread while the tasks go on with the next epoch.
        let job = CommitJob {
            slots,
            started,
            epoch,
            changes,
        };
        let sent = match &*shared.commits.lock() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        shared.last_checkpoint_ms.store(now_ms(), Ordering::Relaxed);
        shared.checkpoint_requested.store(false, Ordering::Release);
        if !sent {
            fail(shared, Error::Stopped("the committer has stopped".into()));
        }
    }
    shared.barrier.wait()?;
    Ok(stopping)
}

fn commit(shared: &Shared, job: CommitJob) -> Result<()> {
    let CommitJob {
        mut slots,
        started,
        epoch,
        changes,
    } = job;
    let mut c = shared.committer.lock();
    let mut offsets: Vec<(String, i32, i64)> = slots
        .iter()
        .flat_map(|s| {
            s.inputs
                .iter()
                .map(|p| (p.topic.clone(), p.partition, p.next_offset))
        })
        .collect();
    offsets.sort();
    let has_outputs = slots
        .iter()
        .any(|s| s.outputs.iter().any(|v| !v.batches.is_empty()));
    let read: u64 = slots.iter().map(|s| s.read).sum();
    let watermark = shared.board.current();
    {
        let mut m = shared.metrics.lock();
        m.records_read += read;
        m.watermark = watermark;
        m.watermark_lag_ms = if watermark == i64::MIN {
            0
        } else {
            now_ms().saturating_sub(watermark)
        };
        m.operators.clear();
        for s in &slots {
            m.merge_operators(s.operators.clone());
        }
    }
    if !has_outputs && offsets == c.committed_offsets && changes.is_empty() {
        shared.state.mark_applied(epoch);
        let mut m = shared.metrics.lock();
        m.checkpoint_rounds += 1;
        // A round without a commit may still have evicted state (see KeyedState::checkpoint).
        m.state_resident_bytes = shared.state.resident_bytes() as u64;
        return Ok(());
    }

    // The previous checkpoint's outputs must be durable before a checkpoint that no longer carries them is.
    // (A remote sink's writes were acknowledged with acks=all: durable already.)
    for o in c.outputs.iter_mut() {
        if let (Some(last), SinkPartition::Local(log)) = (o.unsynced.take(), &o.log) {
            if shared.fsync {
                shared.rt.block_on(log.wait_durable(last))?;
            }
        }
    }

    let mut batches = Vec::new();
    let mut written = 0u64;
    let mut late_written = 0u64;
    let Committer {
        outputs: committer_outputs,
        remote,
        ..
    } = &mut *c;
    for (slot_index, out) in committer_outputs.iter().enumerate() {
        let search_from = match &out.log {
            SinkPartition::Local(log) => log.log_end_offset(),
            SinkPartition::Remote { sink } => remote
                .get(*sink)
                .map_or(0, |r| r.search_from(out.partition)),
        };
        for s in slots.iter_mut() {
            let Some(slot) = s.outputs.get_mut(slot_index) else {
                continue;
            };
            if out.late {
                late_written += slot.records;
            } else {
                written += slot.records;
            }
            for (base_sequence, batch) in slot.batches.drain(..) {
                let (producer_id, base_sequence, batch) = match &out.log {
                    SinkPartition::Local(_) => (s.producer_id, base_sequence, batch),
                    // Numbered under the remote cluster's producer id before the checkpoint records it,
                    // so a restart looks for exactly what was sent.
                    SinkPartition::Remote { sink } => match remote.get_mut(*sink) {
                        Some(r) => r.assign(out.partition, &batch)?,
                        None => return Err(Error::Host("remote sink index out of range".into())),
                    },
                };
                batches.push(OutputBatch {
                    topic: out.topic.clone(),
                    partition: out.partition,
                    producer_id,
                    search_from,
                    base_sequence,
                    batch,
                });
            }
        }
    }
    let mut inputs = Vec::new();
    let mut state = Vec::new();
    for s in slots.iter_mut() {
        inputs.append(&mut s.inputs);
        state.append(&mut s.state);
    }
    let checkpoint = Checkpoint {
        pipeline: shared.name.clone(),
        id: c.checkpoint_id + 1,
        max_parallelism: shared.max_parallelism,
        parallelism: shared.tasks as u32,
        inputs,
        state,
        tasks: slots
            .into_iter()
            .map(|s| TaskCheckpoint {
                producer_id: s.producer_id,
                sequences: c
                    .outputs
                    .iter()
                    .zip(&s.sequences)
                    .map(|(o, seq)| (o.topic.clone(), o.partition, *seq))
                    .collect(),
            })
            .collect(),
        outputs: batches,
        changes,
    };
    let encoded = checkpoint.encode();
    let mut b = BatchBuilder::new(now_ms());
    b.push(now_ms(), Some(shared.name.as_bytes()), Some(&encoded), &[]);
    // (The batch holds its own copy: a checkpoint with many state changes should not hold three.)
    drop(encoded);
    let record = b.finish();
    let info = c.checkpoint_log.append_slice(&record, now_ms())?;
    if shared.fsync {
        shared
            .rt
            .block_on(c.checkpoint_log.wait_durable(info.last_offset))?;
    }

    // Committed: now the outputs may be seen.
    let mut remote_writes: Vec<Vec<(i32, Bytes)>> = vec![Vec::new(); c.remote.len()];
    for o in &checkpoint.outputs {
        let Some(out) = c
            .outputs
            .iter_mut()
            .find(|x| x.topic == o.topic && x.partition == o.partition)
        else {
            continue;
        };
        match &out.log {
            SinkPartition::Local(log) => {
                let appended = log.append_slice(&o.batch, now_ms())?;
                out.unsynced = Some(appended.last_offset);
            }
            SinkPartition::Remote { sink } => {
                if let Some(w) = remote_writes.get_mut(*sink) {
                    w.push((o.partition, o.batch.clone()));
                }
            }
        }
    }
    for (sink, writes) in c.remote.iter_mut().zip(remote_writes) {
        if !writes.is_empty() {
            // A failure here fails the pipeline; its restart finds what landed and writes the rest.
            shared.rt.block_on(sink.write(writes, false))?;
        }
    }
    // Durable in the checkpoint record: now the store may hold them (a crash before this is mended at restart).
    let change_bytes: usize = checkpoint.changes.iter().map(Bytes::len).sum();
    if !checkpoint.changes.is_empty() {
        shared
            .state
            .store()
            .apply(checkpoint.id, &checkpoint.changes)?;
    }
    shared.state.mark_applied(epoch);
    c.checkpoint_log.delete_records_before(info.base_offset)?;
    c.checkpoint_id = checkpoint.id;
    c.committed_offsets = offsets;

    let mut m = shared.metrics.lock();
    m.records_written += written;
    m.late_written += late_written;
    m.checkpoints += 1;
    m.checkpoint_rounds += 1;
    m.last_checkpoint_micros = started.elapsed().as_micros() as u64;
    m.last_checkpoint_bytes = record.len() as u64;
    m.state_bytes = checkpoint.state_bytes() as u64;
    m.last_checkpoint_change_bytes = change_bytes as u64;
    m.state_change_bytes += change_bytes as u64;
    m.state_store_bytes = shared.state.store().disk_bytes();
    m.state_resident_bytes = shared.state.resident_bytes() as u64;
    tracing::debug!(pipeline = %shared.name, checkpoint = checkpoint.id, bytes = record.len(),
        micros = m.last_checkpoint_micros, "checkpoint committed");
    let now = now_ms();
    if now - shared.last_report_ms.load(Ordering::Relaxed) >= REPORT_INTERVAL_MS {
        shared.last_report_ms.store(now, Ordering::Relaxed);
        let ops: Vec<String> = m
            .operators
            .iter()
            .map(|o| {
                format!(
                    "{} in={} out={} late={} state={}",
                    o.id, o.records_in, o.records_out, o.late_records, o.state_entries
                )
            })
            .collect();
        tracing::info!(
            pipeline = %shared.name, read = m.records_read, written = m.records_written,
            late = m.late_written, watermark_lag_ms = m.watermark_lag_ms, checkpoints = m.checkpoints,
            checkpoint_micros = m.last_checkpoint_micros, checkpoint_bytes = m.last_checkpoint_bytes,
            state_bytes = m.state_bytes, state_change_bytes = m.last_checkpoint_change_bytes,
            state_store_bytes = m.state_store_bytes, state_resident_bytes = m.state_resident_bytes,
            operators = %ops.join("; "), "pipeline metrics"
        );
    }
    Ok(())
}
