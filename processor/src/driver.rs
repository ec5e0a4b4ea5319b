//! A deterministic test driver: runs a pipeline's tasks in one thread, in virtual time, with no broker, no
//! storage and no sockets (as Kafka Streams' TopologyTestDriver does).
//!
//! ```
//! use std::time::Duration;
//! use millrace_processor::{Count, Message, OutRecord, Pipeline, TestDriver, Window};
//!
//! let job = Pipeline::new("counts")
//!     .source("in")
//!     .key_by(|m: &Message| m.key.clone().unwrap_or_default())
//!     .window(Window::tumbling(Duration::from_secs(10)))
//!     .late_topic("late")
//!     .aggregate(Count)
//!     .sink("out", |r| OutRecord::new(Some(r.key), Some(r.value.to_string().into()), r.window_end - 1))
//!     .unwrap();
//! let mut d = TestDriver::new(&job, 1);
//! d.send(0, Message::new(Some(b"a"), Some(b"x"), 1_000));
//! d.send(0, Message::new(Some(b"a"), Some(b"y"), 2_000));
//! assert!(d.outputs().is_empty()); // the window is still open
//! d.send(0, Message::new(Some(b"b"), Some(b"z"), 10_000)); // the watermark passes 10 000
//! let out = d.outputs();
//! assert_eq!(out[0].value.as_deref(), Some(&b"2"[..]));
//! ```
//!
//! Virtual processing time starts at 0 and moves only with [`TestDriver::advance_time`]; it decides when a
//! quiet partition becomes idle, and operators see it (on_processing_time) before the first element. Each
//! [`TestDriver::send`] runs the record through every stage of the graph, the exchanges and the watermarks
//! before it returns. The driver runs the job's parallelism (by default one task per partition of the
//! largest source), so key groups and exchanges behave as in the broker.
//!
//! A job whose `state_backend` is the disk backend runs with a state store in a scratch folder (removed
//! with the driver), so its keyed state is checkpointed incrementally and evicted past the memory budget
//! as in the broker; a [`DriverSnapshot`] then carries every change set applied so far, and a restored
//! driver applies them to a fresh store. With the memory backend (the default) keyed state snapshots
//! whole into the snapshot's state entries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::checkpoint::{distribute, state_entries, StateEntry};
use crate::error::{Error, Result};
use crate::graph::GraphSpec;
use crate::keyed_state::{BackendKind, StateBackend, StateHandle};
use crate::keygroup::KeyGroups;
use crate::metrics::PipelineMetrics;
use crate::pipeline::Job;
use crate::record::{Message, OutRecord};
use crate::source::for_each_record;
use crate::store::Store;
use crate::task::{OutputLayout, SourceWatermark, Task};
use crate::watermark::WatermarkBoard;

/// What [`TestDriver::checkpoint`] captures: enough to build a driver that continues where this one was,
/// at the same or another parallelism.
#[derive(Debug, Clone)]
pub struct DriverSnapshot {
    max_parallelism: usize,
    state: Vec<StateEntry>,
    /// Largest event time per source partition (board order).
    max_ts: Vec<i64>,
    /// With the disk backend: every change set applied to the store so far, in order.
    changes: Vec<Bytes>,
}

impl DriverSnapshot {
    /// The state entries, as a checkpoint would hold them.
    pub fn state(&self) -> &[StateEntry] {
        &self.state
    }
}

pub struct TestDriver {
    graph: Arc<GraphSpec>,
    groups: KeyGroups,
    tasks: Vec<Task>,
    board: WatermarkBoard,
    /// The board index of each source's partition 0, and each source's partition count.
    base: Vec<usize>,
    partitions: Vec<usize>,
    max_ts: Vec<i64>,
    now_ms: i64,
    last_data_ms: Vec<i64>,
    offsets: Vec<i64>,
    idle_timeout_ms: i64,
    /// (output index, record), in the order written.
    written: Vec<(usize, OutRecord)>,
    read: u64,
    /// With the disk backend: the state store, its folder, and every change set applied to it.
    state: Option<DriverState>,
}

struct DriverState {
    handle: StateHandle,
    dir: PathBuf,
    checkpoint: u64,
    changes: Vec<Bytes>,
}

impl Drop for DriverState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scratch store for one driver (a unique folder under the system's temporary directory).
fn scratch_state(budget: usize) -> DriverState {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "millrace-driver-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = match Store::open(&dir) {
        Ok(s) => s,
        // A test tool: a scratch folder that cannot be made is a broken machine, not bad input.
        Err(e) => panic!(
            "the test driver cannot make its state store in {}: {e}",
            dir.display()
        ),
    };
    DriverState {
        handle: StateBackend::new(Arc::new(store), BackendKind::Disk, budget),
        dir,
        checkpoint: 0,
        changes: Vec::new(),
    }
}

impl TestDriver {
    /// A driver for `job` whose every source topic has `partitions` partitions.
    pub fn new(job: &Job, partitions: usize) -> TestDriver {
        let n = job.graph.sources.len();
        TestDriver::with_partitions(job, &vec![partitions.max(1); n])
    }

    /// A driver for `job` whose sources have `partitions[i]` partitions each (missing ones: 1).
    pub fn with_partitions(job: &Job, partitions: &[usize]) -> TestDriver {
        let graph = job.graph.clone();
        let partitions: Vec<usize> = (0..graph.sources.len())
            .map(|s| partitions.get(s).copied().unwrap_or(1).max(1))
            .collect();
        let groups = job.key_groups(&partitions);
        let layout = OutputLayout {
            partitions: vec![1; graph.outputs.len()],
        };
        let state = (job.settings().state_backend == BackendKind::Disk)
            .then(|| scratch_state(job.settings().state_memory_budget));
        let handle = state.as_ref().map(|s| s.handle.clone());
        let tasks = (0..groups.parallelism)
            .map(|i| Task::new(graph.clone(), i, groups, layout.clone(), handle.clone()))
            .collect();
        let mut base = Vec::with_capacity(partitions.len());
        let mut total = 0;
        for p in &partitions {
            base.push(total);
            total += p;
        }
        let mut d = TestDriver {
            graph,
            groups,
            tasks,
            board: WatermarkBoard::new(total, job.settings().out_of_orderness_ms),
            base,
            partitions,
            max_ts: vec![i64::MIN; total],
            now_ms: 0,
            last_data_ms: vec![0; total],
            offsets: vec![0; total],
            idle_timeout_ms: job.settings().idle_timeout_ms,
            written: Vec::new(),
            read: 0,
            state,
        };
        d.settle();
        d
    }

    /// A driver that continues from `snapshot` (as the runtime does after a restart), with `job`'s
    /// parallelism, which may differ from the snapshot's.
    pub fn restore(job: &Job, partitions: usize, snapshot: &DriverSnapshot) -> Result<TestDriver> {
        let n = job.graph.sources.len();
        TestDriver::restore_with_partitions(job, &vec![partitions.max(1); n], snapshot)
    }

    pub fn restore_with_partitions(
        job: &Job,
        partitions: &[usize],
        snapshot: &DriverSnapshot,
    ) -> Result<TestDriver> {
        let mut d = TestDriver::with_partitions(job, partitions);
        if snapshot.max_parallelism != d.groups.max_parallelism && !snapshot.state.is_empty() {
            return Err(Error::Invalid(format!(
                "the snapshot has {} key groups and the pipeline {}: max parallelism cannot change",
                snapshot.max_parallelism, d.groups.max_parallelism
            )));
        }
        if d.state.is_none() && !snapshot.changes.is_empty() {
            return Err(Error::Invalid(
                "the snapshot holds keyed state of the disk backend and the pipeline keeps its state in memory"
                    .into(),
            ));
        }
        if let Some(st) = &mut d.state {
            if !snapshot.changes.is_empty() {
                st.checkpoint += 1;
                st.handle.store().apply(st.checkpoint, &snapshot.changes)?;
                st.changes = snapshot.changes.clone();
            }
        }
        let per_task = distribute(&snapshot.state, &d.groups);
        for (t, s) in d.tasks.iter_mut().zip(&per_task) {
            t.restore(s)?;
        }
        for (i, ts) in snapshot.max_ts.iter().enumerate().take(d.max_ts.len()) {
            d.max_ts[i] = *ts;
            d.board.observe(i, *ts);
        }
        d.settle();
        Ok(d)
    }

    /// Runs one record read from partition `partition` of the first source through the pipeline.
    pub fn send(&mut self, partition: usize, m: Message) {
        self.send_to(0, partition, m)
    }

    /// Runs one record read from partition `partition` of source `source` (in the order the sources were
    /// added) through the pipeline.
    pub fn send_to(&mut self, source: usize, partition: usize, mut m: Message) {
        let Some(base) = self.base.get(source) else {
            return;
        };
        let p = partition % self.partitions[source];
        let idx = base + p;
        m.partition = p as i32;
        m.offset = self.offsets[idx];
        self.offsets[idx] += 1;
        self.read += 1;
        let task = idx % self.tasks.len();
        let ts = self.tasks[task].feed(source, m);
        self.max_ts[idx] = self.max_ts[idx].max(ts);
        if self.board.idle(idx) && self.board.all_idle() {
            // Input resumes after every partition went quiet: every partition gets its idle timeout again
            // (as in the runtime).
            self.board.wake();
            for t in &mut self.last_data_ms {
                *t = self.now_ms;
            }
        }
        self.last_data_ms[idx] = self.now_ms;
        self.board.observe(idx, self.max_ts[idx]);
        self.board.set_idle(idx, false);
        self.settle();
    }

    /// Moves processing time forward: partitions quiet for the idle timeout stop holding the watermark back.
    pub fn advance_time(&mut self, ms: i64) {
        self.now_ms = self.now_ms.saturating_add(ms.max(0));
        for p in 0..self.max_ts.len() {
            if self.now_ms - self.last_data_ms[p] >= self.idle_timeout_ms {
                self.board.set_idle(p, true);
            }
        }
        self.settle();
    }

    /// Ends every source, as a bounded pipeline's sources end: the watermark moves to the end of time, so
    /// every window, buffered join element and event-time timer fires.
    pub fn finish(&mut self) {
        for p in 0..self.max_ts.len() {
            self.max_ts[p] = i64::MAX;
            self.board.observe(p, i64::MAX);
            self.board.set_idle(p, false);
        }
        self.settle();
    }

    fn source_watermarks(&self) -> Vec<SourceWatermark> {
        self.base
            .iter()
            .zip(&self.partitions)
            .map(|(b, n)| self.board.source(*b..b + n))
            .collect()
    }

    /// Runs every stage of every task, in order, with the watermarks of now.
    fn settle(&mut self) {
        let wms = self.source_watermarks();
        let now = self.now_ms;
        for stage in 0..self.graph.stages {
            for t in 0..self.tasks.len() {
                if let Err(e) = self.tasks[t].run_stage(stage, Some(&wms), Some(now)) {
                    panic!("test driver: {e}");
                }
                let shipped: Vec<_> = self.tasks[t].take_outgoing().collect();
                for (target, node, port, batch) in shipped {
                    if let Some(task) = self.tasks.get_mut(target) {
                        task.deliver(node, port, batch);
                    }
                }
            }
        }
        self.collect();
    }

    /// Moves every task's pending output batches into `written`, decoded back into records.
    fn collect(&mut self) {
        for t in &mut self.tasks {
            let slots = t.output().slot_outputs();
            for ((output, _), out) in slots.into_iter().zip(t.output().take()) {
                for (_, batch) in out.batches {
                    let written = &mut self.written;
                    // The driver's own batches: always well formed.
                    let _ = for_each_record(&batch, 0, 0, |m| written.push((output, m.into())));
                }
            }
        }
    }

    /// The watermark of the whole pipeline now (the minimum over its active source partitions).
    pub fn watermark(&self) -> i64 {
        self.board.current()
    }

    fn take_where(&mut self, keep: impl Fn(usize) -> bool) -> Vec<OutRecord> {
        let (taken, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.written)
            .into_iter()
            .partition(|(o, _)| keep(*o));
        self.written = rest;
        taken.into_iter().map(|(_, r)| r).collect()
    }

    /// Takes the records written to every sink topic so far.
    pub fn outputs(&mut self) -> Vec<OutRecord> {
        let graph = self.graph.clone();
        self.take_where(|o| !graph.outputs[o].topic.name.is_empty() && !graph.outputs[o].late)
    }

    /// Takes the records written to sink (or late) topic `topic` so far.
    pub fn outputs_of(&mut self, topic: &str) -> Vec<OutRecord> {
        let graph = self.graph.clone();
        self.take_where(|o| graph.outputs[o].topic.name == topic)
    }

    /// Takes the records written to the late topics so far.
    pub fn late(&mut self) -> Vec<OutRecord> {
        let graph = self.graph.clone();
        self.take_where(|o| graph.outputs[o].late)
    }

    /// Snapshots every task, as a checkpoint would.
    pub fn checkpoint(&mut self) -> DriverSnapshot {
        let mut state = Vec::new();
        for t in &mut self.tasks {
            let i = t.index();
            state_entries(i, t.snapshot(), &mut state);
        }
        let mut changes = Vec::new();
        if let Some(st) = &mut self.state {
            // What the committer does once the checkpoint is durable.
            let (epoch, sets) = st.handle.seal();
            if !sets.is_empty() {
                st.checkpoint += 1;
                if let Err(e) = st.handle.store().apply(st.checkpoint, &sets) {
                    panic!("the test driver's state store failed: {e}");
                }
                st.changes.extend(sets);
            }
            st.handle.mark_applied(epoch);
            changes = st.changes.clone();
        }
        DriverSnapshot {
            max_parallelism: self.groups.max_parallelism,
            state,
            max_ts: self.max_ts.clone(),
            changes,
        }
    }

    /// How many tasks the driver runs.
    pub fn parallelism(&self) -> usize {
        self.tasks.len()
    }

    pub fn metrics(&self) -> PipelineMetrics {
        let mut m = PipelineMetrics {
            records_read: self.read,
            watermark: self.board.current(),
            ..Default::default()
        };
        for t in &self.tasks {
            let mut ops = Vec::new();
            t.metrics(&mut ops);
            m.merge_operators(ops);
        }
        m
    }
}
