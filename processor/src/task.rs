//! One task of a pipeline: the source-side stage for one input partition and the keyed-side stage for one key
//! group, with the outputs it has produced since the last checkpoint.
//!
//! Both the threaded runtime ([`crate::runtime`]) and the [`crate::driver::TestDriver`] drive tasks through the
//! type-erased [`TaskCore`], so pipelines behave the same under test as in the broker.
//!
//! Invariants: `local` and `outgoing` are empty between calls of the driving loop (everything fed is passed on
//! before the watermark is published); outputs stay in `out`, encoded, until a checkpoint takes them.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;

use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Stage, TaskInfo, TaskState};
use crate::partitioner::partition_for;
use crate::record::{Message, OutRecord};

/// Elements on their way from one task to another (a `Vec<(i64, M)>` inside).
pub type Shipment = Box<dyn Any + Send>;

/// Extracts an event time from a source record; `None` falls back to the record's timestamp.
pub type EventTimeFn = Arc<dyn Fn(&Message) -> Option<i64> + Send + Sync>;

/// Picks the task (of `n`) that owns an element after key_by.
pub type RouteFn<M> = Arc<dyn Fn(&M, usize) -> usize + Send + Sync>;
type RouteRef<'a, M> = &'a (dyn Fn(&M, usize) -> usize + Send + Sync);

/// Where a pipeline's outputs go: the sink topic's partitions, then the late topic's.
#[derive(Debug, Clone, Copy)]
pub struct OutputLayout {
    pub sink_partitions: usize,
    pub late_partitions: usize,
}

/// The largest output batch built (Kafka's default max.message.bytes is 1 MiB; smaller batches keep the
/// builders' buffers small).
pub const MAX_OUTPUT_BATCH: usize = 256 * 1024;

/// Output batches of one task for one output partition since the last checkpoint, written by the task's own
/// idempotent producer id with consecutive sequence numbers.
#[derive(Debug, Default)]
pub struct SlotOutput {
    /// Finished batches with their base sequence.
    pub batches: Vec<(i32, Bytes)>,
    pub records: u64,
    building: Option<BatchBuilder>,
    /// The base sequence of the batch being built, then of the next one.
    next_sequence: i32,
}

fn next_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

impl SlotOutput {
    fn finish(&mut self, producer_id: i64) {
        if let Some(b) = self.building.take() {
            let n = b.len();
            let base = self.next_sequence;
            self.batches
                .push((base, b.producer(producer_id, 0, base).finish()));
            self.next_sequence = next_sequence(base, n);
        }
    }
}

/// Pending outputs, one [`SlotOutput`] per output partition (sink partitions first, then late partitions).
/// Records are encoded into batches as they are emitted, so a pending output costs its encoded bytes and holds
/// no reference to the input batches.
#[derive(Debug)]
pub struct TaskOutput {
    layout: OutputLayout,
    task: usize,
    producer_id: i64,
    pub slots: Vec<SlotOutput>,
    pub bytes: usize,
    pub late_dropped: u64,
}

impl TaskOutput {
    fn new(layout: OutputLayout, task: usize) -> Self {
        TaskOutput {
            layout,
            task,
            producer_id: -1,
            slots: (0..layout.sink_partitions + layout.late_partitions)
                .map(|_| SlotOutput::default())
                .collect(),
            bytes: 0,
            late_dropped: 0,
        }
    }

    /// The producer id this task writes with and, per output slot, the next sequence number.
    pub fn set_producer(&mut self, producer_id: i64, sequences: &[i32]) {
        self.producer_id = producer_id;
        for (slot, seq) in self.slots.iter_mut().zip(sequences) {
            slot.next_sequence = *seq;
        }
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The next sequence number of every slot (after the batches taken so far).
    pub fn sequences(&self) -> Vec<i32> {
        self.slots.iter().map(|s| s.next_sequence).collect()
    }

    /// Finishes the batches being built and takes every pending batch, by slot.
    pub fn take(&mut self) -> Vec<SlotOutput> {
        let pid = self.producer_id;
        self.bytes = 0;
        self.slots
            .iter_mut()
            .map(|s| {
                s.finish(pid);
                SlotOutput {
                    batches: std::mem::take(&mut s.batches),
                    records: std::mem::take(&mut s.records),
                    building: None,
                    next_sequence: s.next_sequence,
                }
            })
            .collect()
    }

    /// The partition for a record among `n`: Kafka's default partitioner for keyed records; a record without a
    /// key stays with the partition of the task's own index, so that a task's unkeyed outputs keep their order.
    fn partition(&self, r: &OutRecord, n: usize) -> usize {
        match &r.key {
            Some(k) => partition_for(k, n),
            None => self.task % n.max(1),
        }
    }

    fn push(&mut self, base: usize, n: usize, r: OutRecord) {
        let p = self.partition(&r, n);
        let size = r.approx_size();
        self.bytes += size;
        let pid = self.producer_id;
        let slot = &mut self.slots[base + p];
        if slot
            .building
            .as_ref()
            .is_some_and(|b| b.size() + size > MAX_OUTPUT_BATCH)
        {
            slot.finish(pid);
        }
        let b = slot
            .building
            .get_or_insert_with(|| BatchBuilder::with_capacity(r.timestamp, 16 * 1024));
        if r.headers.is_empty() {
            b.push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &[]);
        } else {
            let headers: Vec<(&[u8], Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|h| (&h.key[..], h.value.as_deref()))
                .collect();
            b.push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &headers);
        }
        slot.records += 1;
    }
}

impl Collector<OutRecord> for TaskOutput {
    fn emit(&mut self, _timestamp: i64, r: OutRecord) {
        let n = self.layout.sink_partitions;
        self.push(0, n, r);
    }
    fn late(&mut self, r: OutRecord) {
        let n = self.layout.late_partitions;
        if n == 0 {
            // Only reachable for pipelines built without a late topic, which the builders refuse.
            self.late_dropped += 1;
            return;
        }
        self.push(self.layout.sink_partitions, n, r);
    }
}

/// Routes source-side output to the task that owns its key (or keeps it here).
struct Router<'a, M> {
    route: Option<RouteRef<'a, M>>,
    me: usize,
    local: &'a mut Vec<(i64, M)>,
    outgoing: &'a mut [Vec<(i64, M)>],
    out: &'a mut TaskOutput,
}

impl<M> Collector<M> for Router<'_, M> {
    fn emit(&mut self, timestamp: i64, item: M) {
        let n = self.outgoing.len();
        let target = self.route.map_or(self.me, |r| r(&item, n));
        if target == self.me || target >= n {
            self.local.push((timestamp, item));
        } else {
            self.outgoing[target].push((timestamp, item));
        }
    }
    fn late(&mut self, record: OutRecord) {
        self.out.late(record);
    }
}

/// A task, with the element type between its two stages erased.
pub trait TaskCore: Send {
    fn start(&mut self);
    fn restore(&mut self, state: &TaskState) -> crate::Result<()>;
    /// Runs one source record through the source-side stage; keyed elements for other tasks wait in
    /// `outgoing` until [`TaskCore::ship`], those for this task in `local` until [`TaskCore::process_local`].
    fn feed(&mut self, m: Message);
    /// Hands every element bound for another task to `send(target, shipment)`.
    fn ship(&mut self, send: &mut dyn FnMut(usize, Shipment));
    fn process_local(&mut self);
    /// Processes elements another task shipped here.
    fn accept(&mut self, shipment: Shipment);
    fn watermark(&mut self, watermark: i64);
    /// Processing time moved to `now` (epoch ms; virtual in the test driver).
    fn processing_time(&mut self, now: i64);
    fn snapshot(&mut self) -> TaskState;
    fn output(&mut self) -> &mut TaskOutput;
    /// The largest event time this task's partition has produced.
    fn max_ts(&self) -> i64;
    fn set_max_ts(&mut self, ts: i64);
    fn close(&mut self);
    fn metrics(&self, into: &mut Vec<OperatorMetrics>);
}

pub struct Task<M> {
    info: TaskInfo,
    source: Box<dyn Stage<Message, Out = M>>,
    keyed: Box<dyn Stage<M, Out = OutRecord>>,
    route: Option<RouteFn<M>>,
    event_time: Option<EventTimeFn>,
    out: TaskOutput,
    local: Vec<(i64, M)>,
    outgoing: Vec<Vec<(i64, M)>>,
    max_ts: i64,
}

impl<M: Send + 'static> Task<M> {
    pub fn new(
        info: TaskInfo,
        source: Box<dyn Stage<Message, Out = M>>,
        keyed: Box<dyn Stage<M, Out = OutRecord>>,
        route: Option<RouteFn<M>>,
        event_time: Option<EventTimeFn>,
        layout: OutputLayout,
    ) -> Self {
        Task {
            info,
            source,
            keyed,
            route,
            event_time,
            out: TaskOutput::new(layout, info.index),
            local: Vec::new(),
            outgoing: (0..info.tasks).map(|_| Vec::new()).collect(),
            max_ts: i64::MIN,
        }
    }
}

impl<M: Send + 'static> Task<M> {
    /// Runs `f` on the source-side stage with a router over this task's queues.
    fn with_source(
        &mut self,
        f: impl FnOnce(&mut dyn Stage<Message, Out = M>, &mut Router<'_, M>),
    ) {
        let mut router = Router {
            route: self.route.as_deref(),
            me: self.info.index,
            local: &mut self.local,
            outgoing: &mut self.outgoing,
            out: &mut self.out,
        };
        f(&mut *self.source, &mut router);
    }
}

impl<M: Send + 'static> TaskCore for Task<M> {
    fn start(&mut self) {
        self.source.start(&self.info);
        self.keyed.start(&self.info);
    }

    fn restore(&mut self, state: &TaskState) -> crate::Result<()> {
        self.source.restore(state)?;
        self.keyed.restore(state)
    }

    fn feed(&mut self, m: Message) {
        let ts = match &self.event_time {
            Some(f) => f(&m).unwrap_or(m.timestamp),
            None => m.timestamp,
        };
        self.max_ts = self.max_ts.max(ts);
        self.with_source(|source, router| source.process(ts, m, router));
    }

    fn ship(&mut self, send: &mut dyn FnMut(usize, Shipment)) {
        for (target, items) in self.outgoing.iter_mut().enumerate() {
            if !items.is_empty() {
                send(target, Box::new(std::mem::take(items)));
            }
        }
    }

    fn process_local(&mut self) {
        for (ts, item) in self.local.drain(..) {
            self.keyed.process(ts, item, &mut self.out);
        }
    }

    fn accept(&mut self, shipment: Shipment) {
        match shipment.downcast::<Vec<(i64, M)>>() {
            Ok(items) => {
                for (ts, item) in *items {
                    self.keyed.process(ts, item, &mut self.out);
                }
            }
            // Tasks of one pipeline share one element type; anything else is a bug in the runtime.
            Err(_) => tracing::error!(task = self.info.index, "shipment of the wrong type dropped"),
        }
    }

    fn watermark(&mut self, watermark: i64) {
        self.with_source(|source, router| source.watermark(watermark, router));
        self.process_local();
        self.keyed.watermark(watermark, &mut self.out);
    }

    fn processing_time(&mut self, now: i64) {
        self.with_source(|source, router| source.processing_time(now, router));
        self.process_local();
        self.keyed.processing_time(now, &mut self.out);
    }

    fn snapshot(&mut self) -> TaskState {
        let mut state = TaskState::new();
        self.source.snapshot(&mut state);
        self.keyed.snapshot(&mut state);
        state
    }

    fn output(&mut self) -> &mut TaskOutput {
        &mut self.out
    }

    fn max_ts(&self) -> i64 {
        self.max_ts
    }

    fn set_max_ts(&mut self, ts: i64) {
        self.max_ts = ts;
    }

    fn close(&mut self) {
        self.with_source(|source, router| source.close(router));
        self.process_local();
        self.keyed.close(&mut self.out);
    }

    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        self.source.metrics(into);
        self.keyed.metrics(into);
    }
}
