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
//! quiet partition becomes idle. Each [`TestDriver::send`] runs the record through every step, the shuffle
//! and the watermark before it returns.

use crate::metrics::PipelineMetrics;
use crate::operator::{TaskInfo, TaskState};
use crate::pipeline::Job;
use crate::record::{Message, OutRecord};
use crate::source::for_each_record;
use crate::task::{OutputLayout, Shipment, TaskCore};
use crate::watermark::WatermarkBoard;

/// What [`TestDriver::checkpoint`] captures: enough to build a driver that continues where this one was.
#[derive(Debug, Clone)]
pub struct DriverSnapshot {
    tasks: Vec<TaskState>,
    max_ts: Vec<i64>,
}

pub struct TestDriver {
    tasks: Vec<Box<dyn TaskCore>>,
    board: WatermarkBoard,
    now_ms: i64,
    last_data_ms: Vec<i64>,
    offsets: Vec<i64>,
    idle_timeout_ms: i64,
    outputs: Vec<OutRecord>,
    late: Vec<OutRecord>,
    read: u64,
}

impl TestDriver {
    /// A driver for `job` reading a source topic of `partitions` partitions.
    pub fn new(job: &Job, partitions: usize) -> TestDriver {
        let n = partitions.max(1);
        let layout = OutputLayout {
            sink_partitions: 1,
            late_partitions: 1,
        };
        let tasks = (0..n)
            .map(|i| {
                let mut t = (job.make_task)(TaskInfo { index: i, tasks: n }, layout);
                t.start();
                t
            })
            .collect();
        TestDriver {
            tasks,
            board: WatermarkBoard::new(n, job.settings().out_of_orderness_ms),
            now_ms: 0,
            last_data_ms: vec![0; n],
            offsets: vec![0; n],
            idle_timeout_ms: job.settings().idle_timeout_ms,
            outputs: Vec::new(),
            late: Vec::new(),
            read: 0,
        }
    }

    /// A driver that continues from `snapshot` (as the runtime does after a restart).
    pub fn restore(
        job: &Job,
        partitions: usize,
        snapshot: &DriverSnapshot,
    ) -> crate::Result<TestDriver> {
        let mut d = TestDriver::new(job, partitions);
        for (i, t) in d.tasks.iter_mut().enumerate() {
            if let Some(s) = snapshot.tasks.get(i) {
                t.restore(s)?;
            }
            if let Some(ts) = snapshot.max_ts.get(i) {
                t.set_max_ts(*ts);
                d.board.observe(i, *ts);
            }
        }
        Ok(d)
    }

    /// Runs one record read from source partition `partition` through the pipeline.
    pub fn send(&mut self, partition: usize, mut m: Message) {
        let p = partition % self.tasks.len();
        m.partition = p as i32;
        m.offset = self.offsets[p];
        self.offsets[p] += 1;
        self.read += 1;
        self.tasks[p].feed(m);
        let mut shipped: Vec<(usize, Shipment)> = Vec::new();
        self.tasks[p].ship(&mut |target, s| shipped.push((target, s)));
        self.tasks[p].process_local();
        for (target, s) in shipped {
            self.tasks[target].accept(s);
        }
        self.last_data_ms[p] = self.now_ms;
        self.board.observe(p, self.tasks[p].max_ts());
        self.board.set_idle(p, false);
        self.advance_watermark();
    }

    /// Moves processing time forward: partitions quiet for the idle timeout stop holding the watermark back.
    pub fn advance_time(&mut self, ms: i64) {
        self.now_ms = self.now_ms.saturating_add(ms.max(0));
        for p in 0..self.tasks.len() {
            if self.now_ms - self.last_data_ms[p] >= self.idle_timeout_ms {
                self.board.set_idle(p, true);
            }
        }
        let now = self.now_ms;
        for t in &mut self.tasks {
            t.processing_time(now);
        }
        self.advance_watermark();
    }

    fn advance_watermark(&mut self) {
        let wm = self.board.current();
        for t in &mut self.tasks {
            t.watermark(wm);
        }
        self.collect();
    }

    /// Moves every task's pending output batches into `outputs` and `late`, decoded back into records.
    fn collect(&mut self) {
        for t in &mut self.tasks {
            for (slot, out) in t.output().take().into_iter().enumerate() {
                let into = if slot == 0 {
                    &mut self.outputs
                } else {
                    &mut self.late
                };
                for (_, batch) in out.batches {
                    // The driver's own batches: always well formed.
                    let _ = for_each_record(&batch, 0, 0, |m| into.push(m.into()));
                }
            }
        }
    }

    /// The pipeline's watermark now.
    pub fn watermark(&self) -> i64 {
        self.board.current()
    }

    /// Takes the records written to the sink topic so far.
    pub fn outputs(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.outputs)
    }

    /// Takes the records written to the late topic so far.
    pub fn late(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.late)
    }

    /// Snapshots every task, as a checkpoint would.
    pub fn checkpoint(&mut self) -> DriverSnapshot {
        DriverSnapshot {
            tasks: self.tasks.iter_mut().map(|t| t.snapshot()).collect(),
            max_ts: self.tasks.iter().map(|t| t.max_ts()).collect(),
        }
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
