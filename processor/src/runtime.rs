//! Running a pipeline inside the broker: one OS thread per source partition, reading and writing partitions
//! through the storage layer, with stop-the-world checkpoints that commit state, input offsets and outputs
//! together (see [`crate::checkpoint`]).
//!
//! The loop of task `i`: read a chunk of its partition, run the source-side steps, ship keyed elements to
//! their owners, publish its partition's event time, then load the pipeline watermark, drain its inbox and run
//! the keyed steps and the watermark. A checkpoint stops every task between two chunks:
//! 1. barrier: every task has shipped all it read;
//! 2. each drains its inbox (nothing more can arrive), barrier: nothing is in flight;
//! 3. each puts its state, offset and pending outputs in its slot, barrier; the leader fsyncs the previous
//!    checkpoint's outputs, writes and fsyncs the new checkpoint, appends its outputs, barrier; all resume.
//!
//! Operators never run concurrently with a snapshot, so the checkpoint is consistent without aligning barriers
//! in the data streams. Threads are plain OS threads (operators are CPU-bound and must not stall the broker's
//! async workers); they wait for appends through the log's notifier on the broker's runtime handle.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use millrace_protocol::records::{BatchBuilder, BatchIter};

use millrace_storage::Log;
use parking_lot::Mutex;

use crate::barrier::Barrier;
use crate::checkpoint::{Checkpoint, InputPosition, OutputBatch, TaskCheckpoint};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::operator::{TaskInfo, TaskState};
use crate::pipeline::{Job, TopicSpec};
use crate::source::for_each_record;
use crate::task::{OutputLayout, Shipment, SlotOutput, TaskCore};
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
}

/// How much one read of a source partition asks for.
const READ_BYTES: usize = 1 << 20;
/// How long a caught-up task waits for an append before it looks at checkpoints and idleness again.
const IDLE_POLL: Duration = Duration::from_millis(10);
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
    log: Arc<Log>,
    /// The last offset appended by the previous checkpoint, to be fsynced before the next one is written.
    unsynced: Option<i64>,
}

/// What a task hands in at a checkpoint.
#[derive(Default)]
struct Slot {
    state: TaskState,
    next_offset: i64,
    max_ts: i64,
    producer_id: i64,
    /// Next sequence per output slot, after `outputs`.
    sequences: Vec<i32>,
    outputs: Vec<SlotOutput>,
    read: u64,
    operators: Vec<crate::metrics::OperatorMetrics>,
}

struct Shared {
    name: String,
    tasks: usize,
    inboxes: Vec<Mutex<Vec<Shipment>>>,
    board: WatermarkBoard,
    barrier: Barrier,
    checkpoint_requested: AtomicBool,
    stopping: AtomicBool,
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
    /// When the metrics were last logged at info level.
    last_report_ms: AtomicI64,
    rt: tokio::runtime::Handle,
}

/// How often a running pipeline logs its metrics (at info level; every checkpoint logs at debug).
const REPORT_INTERVAL_MS: i64 = 30_000;

/// A snapshot taken by the tasks, for the committer thread to make durable.
struct CommitJob {
    slots: Vec<Slot>,
    started: Instant,
}

/// The committer's side of a checkpoint: the logs it writes.
struct Committer {
    checkpoint_log: Arc<Log>,
    checkpoint_id: u64,
    outputs: Vec<OutputPartition>,
    /// The first `sink_partitions` outputs are the sink topic's, the rest the late topic's.
    sink_partitions: usize,
    /// Input offsets of the last checkpoint (to skip commits with nothing new).
    committed_offsets: Vec<i64>,
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
        for t in self.threads {
            let _ = t.join();
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
/// crash kept from reaching their partitions.
pub fn start(
    job: &Job,
    host: Arc<dyn Host>,
    rt: tokio::runtime::Handle,
) -> Result<RunningPipeline> {
    let settings = job.settings();
    let sources = topic_logs(&*host, &settings.source)?;
    let sink = topic_logs(&*host, job.sink_topic())?;
    let late = match &settings.late {
        Some(spec) => topic_logs(&*host, spec)?,
        None => Vec::new(),
    };
    let checkpoint_log = host.checkpoint_log(&settings.name)?;
    let n = sources.len();
    let layout = OutputLayout {
        sink_partitions: sink.len(),
        late_partitions: late.len(),
    };
    let late_name = settings
        .late
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let mut outputs: Vec<OutputPartition> = sink
        .iter()
        .enumerate()
        .map(|(p, log)| (job.sink_topic().name.clone(), p, log))
        .chain(
            late.iter()
                .enumerate()
                .map(|(p, log)| (late_name.clone(), p, log)),
        )
        .map(|(topic, p, log)| OutputPartition {
            topic,
            partition: p as i32,
            log: log.clone(),
            unsynced: None,
        })
        .collect();

    let restored = latest_checkpoint(&checkpoint_log, &settings.name)?;
    let (checkpoint_id, positions, restored_tasks) = match restored {
        Some(c) => {
            let has_state = c.tasks.iter().any(|t| !t.state.is_empty());
            if c.inputs.len() != n && has_state {
                return Err(Error::Invalid(format!(
                    "pipeline {}: source topic {} had {} partitions at the last checkpoint and has {n} now; \
                     keyed state cannot be redistributed",
                    settings.name,
                    settings.source.name,
                    c.inputs.len()
                )));
            }
            for o in &c.outputs {
                let Some(out) = outputs
                    .iter()
                    .find(|x| x.topic == o.topic && x.partition == o.partition)
                else {
                    return Err(Error::Invalid(format!(
                        "pipeline {}: checkpoint output for {}-{} which the pipeline no longer writes",
                        settings.name, o.topic, o.partition
                    )));
                };
                if !holds_batch(&out.log, o.search_from, o.producer_id, o.base_sequence)? {
                    out.log.append_slice(&o.batch, now_ms())?;
                    tracing::info!(pipeline = %settings.name, topic = %o.topic, partition = o.partition,
                        sequence = o.base_sequence, "wrote a checkpointed output batch a crash had kept back");
                }
            }
            tracing::info!(pipeline = %settings.name, checkpoint = c.id, "restored checkpoint");
            (c.id, c.inputs, c.tasks)
        }
        None => (0, Vec::new(), Vec::new()),
    };

    let mut tasks: Vec<Box<dyn TaskCore>> = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    let board = WatermarkBoard::new(n, settings.out_of_orderness_ms);
    for (i, log) in sources.iter().enumerate() {
        let mut task = (job.make_task)(TaskInfo { index: i, tasks: n }, layout);
        task.start();
        match restored_tasks.get(i) {
            Some(t) => {
                task.restore(&t.state)?;
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
        let pos = positions.iter().find(|p| p.partition == i as i32);
        let offset = pos.map_or(log.log_start_offset(), |p| p.next_offset);
        if let Some(p) = pos {
            task.set_max_ts(p.max_ts);
            board.observe(i, p.max_ts);
        }
        offsets.push(offset);
        tasks.push(task);
    }

    // One checkpoint may be committing while the tasks snapshot the next; a third waits (backpressure).
    let (commit_tx, commit_rx) = std::sync::mpsc::sync_channel::<CommitJob>(1);
    let shared = Arc::new(Shared {
        name: settings.name.clone(),
        tasks: n,
        inboxes: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
        board,
        barrier: Barrier::new(n),
        checkpoint_requested: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        last_checkpoint_ms: AtomicI64::new(now_ms()),
        pending_bytes: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        slots: Mutex::new((0..n).map(|_| Slot::default()).collect()),
        committer: Mutex::new(Committer {
            checkpoint_log,
            checkpoint_id,
            outputs: std::mem::take(&mut outputs),
            sink_partitions: layout.sink_partitions,
            committed_offsets: offsets.clone(),
        }),
        commits: Mutex::new(Some(commit_tx)),
        metrics: Mutex::new(PipelineMetrics {
            name: settings.name.clone(),
            watermark: i64::MIN,
            ..Default::default()
        }),
        error: Mutex::new(None),
        interval_ms: settings.checkpoint_interval_ms,
        max_pending: settings.checkpoint_max_pending_bytes,
        idle_timeout_ms: settings.idle_timeout_ms,
        fsync: settings.checkpoint_fsync,
        last_report_ms: AtomicI64::new(now_ms()),
        rt,
    });

    let mut threads = Vec::with_capacity(n);
    for (i, (task, (log, offset))) in tasks
        .into_iter()
        .zip(sources.into_iter().zip(offsets))
        .enumerate()
    {
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("pipe-{}-{i}", settings.name))
            .spawn(move || {
                let s = shared.clone();
                let run = std::panic::AssertUnwindSafe(move || run_task(&s, i, task, log, offset));
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
            .name(format!("pipe-{}-commit", settings.name))
            .spawn(move || {
                // Sequential: checkpoint N's outputs are appended before N+1 is written, as the invariants ask.
                for job in commit_rx {
                    if let Err(e) = commit(&shared, job.slots, job.started) {
                        // The outputs this checkpoint carried are gone from memory: stop, so that a restart
                        // replays from the previous checkpoint.
                        fail(&shared, e);
                        return;
                    }
                }
            })
            .map_err(|e| Error::Host(format!("cannot start a pipeline thread: {e}")))?
    };
    tracing::info!(pipeline = %settings.name, tasks = n, "pipeline started");
    Ok(RunningPipeline {
        shared,
        threads,
        committer: Some(committer),
    })
}

fn fail(shared: &Shared, e: Error) {
    tracing::error!(pipeline = %shared.name, error = %e, "pipeline failed");
    shared.error.lock().get_or_insert(e);
    shared.stopping.store(true, Ordering::Release);
    shared.barrier.break_it();
}

fn run_task(
    shared: &Shared,
    i: usize,
    mut task: Box<dyn TaskCore>,
    log: Arc<Log>,
    mut offset: i64,
) {
    let mut last_data_ms = now_ms();
    let mut read: u64 = 0;
    loop {
        if shared.barrier.is_broken() {
            return;
        }
        if shared.checkpoint_requested.load(Ordering::Acquire) {
            let stopping = shared.stopping.load(Ordering::Acquire);
            if checkpoint(shared, i, &mut *task, offset, &mut read, stopping).is_err() {
                return;
            }
            if stopping {
                return;
            }
            continue;
        }

        let mut got_data = false;
        match log.read(offset, READ_BYTES, true) {
            Ok(slice) if !slice.records.is_empty() => {
                let partition = log.partition();
                match for_each_record(&slice.records, offset, partition, |m| {
                    read += 1;
                    task.feed(m);
                }) {
                    Ok(next) => {
                        got_data = next > offset;
                        offset = next;
                    }
                    Err(e) => {
                        fail(shared, e);
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(millrace_storage::Error::OffsetOutOfRange { log_start, .. })
                if offset < log_start =>
            {
                tracing::warn!(pipeline = %shared.name, partition = i, from = offset, to = log_start,
                    "input records were deleted by retention before the pipeline read them; skipping ahead");
                offset = log_start;
                continue;
            }
            Err(millrace_storage::Error::OffsetOutOfRange {
                log_start, log_end, ..
            }) if offset > log_end => {
                // The partition is shorter than the checkpoint says (the topic was deleted and created again, or
                // truncated): what is there now is new input, read from its start.
                tracing::warn!(pipeline = %shared.name, partition = i, from = offset, log_end, to = log_start,
                    "input partition is shorter than the pipeline's position; reading it from its start");
                offset = log_start;
                continue;
            }
            Err(e) => {
                fail(shared, e.into());
                return;
            }
        }
        task.ship(&mut |target, shipment| shared.inboxes[target].lock().push(shipment));
        task.process_local();

        let now = now_ms();
        shared.board.observe(i, task.max_ts());
        if got_data {
            last_data_ms = now;
            shared.board.set_idle(i, false);
        } else if now - last_data_ms >= shared.idle_timeout_ms {
            shared.board.set_idle(i, true);
        }
        // The watermark is loaded before the inbox is drained: every element it covers is in the inbox by then.
        let watermark = shared.board.current();
        let inbox = std::mem::take(&mut *shared.inboxes[i].lock());
        let had_inbox = !inbox.is_empty();
        for s in inbox {
            task.accept(s);
        }
        task.watermark(watermark);
        task.processing_time(now);

        shared.pending_bytes[i].store(task.output().bytes, Ordering::Relaxed);
        let pending: usize = shared
            .pending_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        let since = now - shared.last_checkpoint_ms.load(Ordering::Relaxed);
        // Outputs become visible at checkpoints: commit on the interval, when enough is pending, and as soon as
        // a caught-up task has output waiting (so a quiet pipeline does not sit on results for a whole interval).
        let caught_up = !got_data && !had_inbox;
        if since >= shared.interval_ms
            || pending >= shared.max_pending
            || (caught_up && pending > 0 && since >= MIN_CHECKPOINT_GAP_MS)
        {
            shared.checkpoint_requested.store(true, Ordering::Release);
            continue;
        }
        if !got_data && !had_inbox {
            let from = offset;
            shared.rt.block_on(async {
                let appended = log.appended().notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                if log.log_end_offset() > from {
                    return;
                }
                let _ = tokio::time::timeout(IDLE_POLL, appended).await;
            });
        }
    }
}

/// One task's part in a checkpoint (see the module documentation). Err: the barrier broke (a task failed).
fn checkpoint(
    shared: &Shared,
    i: usize,
    task: &mut dyn TaskCore,
    offset: i64,
    read: &mut u64,
    stopping: bool,
) -> std::result::Result<(), crate::barrier::Broken> {
    let started = Instant::now();
    shared.barrier.wait()?;
    let inbox = std::mem::take(&mut *shared.inboxes[i].lock());
    for s in inbox {
        task.accept(s);
    }
    shared.barrier.wait()?;
    if stopping {
        task.close();
    }
    {
        let mut operators = Vec::new();
        task.metrics(&mut operators);
        let out = task.output();
        let outputs = out.take();
        let producer_id = out.producer_id();
        let sequences = out.sequences();
        shared.pending_bytes[i].store(0, Ordering::Relaxed);
        let mut slots = shared.slots.lock();
        slots[i] = Slot {
            state: task.snapshot(),
            next_offset: offset,
            max_ts: task.max_ts(),
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
        // The fsyncs and appends run on the committer thread while the tasks go on with the next epoch.
        let sent = match &*shared.commits.lock() {
            Some(tx) => tx.send(CommitJob { slots, started }).is_ok(),
            None => false,
        };
        shared.last_checkpoint_ms.store(now_ms(), Ordering::Relaxed);
        shared.checkpoint_requested.store(false, Ordering::Release);
        if !sent {
            fail(shared, Error::Stopped("the committer has stopped".into()));
        }
    }
    shared.barrier.wait()?;
    Ok(())
}

fn commit(shared: &Shared, mut slots: Vec<Slot>, started: Instant) -> Result<()> {
    let mut c = shared.committer.lock();
    let offsets: Vec<i64> = slots.iter().map(|s| s.next_offset).collect();
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
    if !has_outputs && offsets == c.committed_offsets {
        return Ok(());
    }

    // The previous checkpoint's outputs must be durable before a checkpoint that no longer carries them is.
    for o in c.outputs.iter_mut() {
        if let Some(last) = o.unsynced.take() {
            if shared.fsync {
                shared.rt.block_on(o.log.wait_durable(last))?;
            }
        }
    }

    let mut batches = Vec::new();
    let mut written = 0u64;
    let mut late_written = 0u64;
    let sink_partitions = c.sink_partitions;
    for (slot_index, out) in c.outputs.iter().enumerate() {
        let search_from = out.log.log_end_offset();
        for s in slots.iter_mut() {
            let Some(slot) = s.outputs.get_mut(slot_index) else {
                continue;
            };
            if slot_index < sink_partitions {
                written += slot.records;
            } else {
                late_written += slot.records;
            }
            for (base_sequence, batch) in slot.batches.drain(..) {
                batches.push(OutputBatch {
                    topic: out.topic.clone(),
                    partition: out.partition,
                    producer_id: s.producer_id,
                    search_from,
                    base_sequence,
                    batch,
                });
            }
        }
    }
    let state_bytes: usize = slots
        .iter()
        .map(|s| s.state.values().map(Vec::len).sum::<usize>())
        .sum();
    let checkpoint = Checkpoint {
        pipeline: shared.name.clone(),
        id: c.checkpoint_id + 1,
        inputs: slots
            .iter()
            .enumerate()
            .map(|(i, s)| InputPosition {
                partition: i as i32,
                next_offset: s.next_offset,
                max_ts: s.max_ts,
            })
            .collect(),
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
                state: s.state,
            })
            .collect(),
        outputs: batches,
    };
    let encoded = checkpoint.encode();
    let mut b = BatchBuilder::new(now_ms());
    b.push(now_ms(), Some(shared.name.as_bytes()), Some(&encoded), &[]);
    let record = b.finish();
    let info = c.checkpoint_log.append_slice(&record, now_ms())?;
    if shared.fsync {
        shared
            .rt
            .block_on(c.checkpoint_log.wait_durable(info.last_offset))?;
    }

    // Committed: now the outputs may be seen.
    for o in &checkpoint.outputs {
        let Some(out) = c
            .outputs
            .iter_mut()
            .find(|x| x.topic == o.topic && x.partition == o.partition)
        else {
            continue;
        };
        let appended = out.log.append_slice(&o.batch, now_ms())?;
        out.unsynced = Some(appended.last_offset);
    }
    c.checkpoint_log.delete_records_before(info.base_offset)?;
    c.checkpoint_id = checkpoint.id;
    c.committed_offsets = offsets;

    let mut m = shared.metrics.lock();
    m.records_written += written;
    m.late_written += late_written;
    m.checkpoints += 1;
    m.last_checkpoint_micros = started.elapsed().as_micros() as u64;
    m.last_checkpoint_bytes = record.len() as u64;
    m.state_bytes = state_bytes as u64;
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
            state_bytes = m.state_bytes, operators = %ops.join("; "), "pipeline metrics"
        );
    }
    Ok(())
}
