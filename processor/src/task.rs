//! One task of a pipeline: a copy of every node of the graph (keyed nodes with the key groups this task
//! owns), the queues between them, the elements bound for other tasks, and the outputs produced since the
//! last checkpoint.
//!
//! Both the threaded runtime ([`crate::runtime`]) and the [`crate::driver::TestDriver`] drive tasks the same
//! way: `feed` source records, `run_stage` each stage in order with that stage's watermarks, hand
//! `take_outgoing` to the owning tasks' `deliver`. So pipelines behave the same under test as in the broker.
//!
//! Records enter in batches of at most [`MAX_BATCH`], and a stage runs each batch through all of its nodes
//! before it takes the next (deepest node with work first), so a batch is still in cache when the next
//! step reads it, and its buffers are small enough to be reused by the allocator rather than mapped fresh
//! from the kernel (a read of 1 MiB is about 16,000 records).
//!
//! Invariants: a node's queue holds only batches for it, in arrival order; a source's `fed` list holds
//! fewer than [`MAX_BATCH`] records (full ones are queued at once); after `run_stage(s)` the queues of every
//! node of stage <= s are empty; outputs stay in `out`, encoded, until a checkpoint takes them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use millrace_protocol::records::BatchBuilder;

use crate::graph::node::{Batch, GroupedState, NodeCx, NodeInit};
use crate::graph::{GraphSpec, NodeCore};
use crate::keygroup::KeyGroups;
use crate::metrics::OperatorMetrics;
use crate::operator::TaskState;
use crate::partitioner::partition_for;
use crate::record::{Message, OutRecord};

/// Extracts an event time from a source record; `None` falls back to the record's timestamp.
pub type EventTimeFn = Arc<dyn Fn(&Message) -> Option<i64> + Send + Sync>;

/// Where a pipeline's outputs go: the partition count of every output topic, in the graph's output order.
#[derive(Debug, Clone, Default)]
pub struct OutputLayout {
    pub partitions: Vec<usize>,
}

impl OutputLayout {
    /// The first slot of each output, and the slot count.
    fn bases(&self) -> (Vec<usize>, usize) {
        let mut bases = Vec::with_capacity(self.partitions.len());
        let mut n = 0;
        for p in &self.partitions {
            bases.push(n);
            n += p;
        }
        (bases, n)
    }
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

/// Pending outputs, one [`SlotOutput`] per output partition (the partitions of output 0, then of output 1...).
/// Records are encoded into batches as they are emitted, so a pending output costs its encoded bytes and holds
/// no reference to the input batches.
#[derive(Debug)]
pub struct TaskOutput {
    layout: OutputLayout,
    bases: Vec<usize>,
    task: usize,
    producer_id: i64,
    pub slots: Vec<SlotOutput>,
    pub bytes: usize,
    pub late_dropped: u64,
}

impl TaskOutput {
    pub fn new(layout: OutputLayout, task: usize) -> Self {
        let (bases, slots) = layout.bases();
        TaskOutput {
            layout,
            bases,
            task,
            producer_id: -1,
            slots: (0..slots).map(|_| SlotOutput::default()).collect(),
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

impl TaskOutput {
    /// Writes `r` to output `output` (None: a step without a late topic sent it, which the builders refuse;
    /// counted, never silent).
    pub fn emit_to(&mut self, output: Option<usize>, r: OutRecord) {
        match output
            .and_then(|o| Some((self.bases.get(o).copied()?, *self.layout.partitions.get(o)?)))
        {
            Some((base, n)) if n > 0 => self.push(base, n, r),
            _ => self.late_dropped += 1,
        }
    }

    /// The output index of every slot.
    pub fn slot_outputs(&self) -> Vec<(usize, i32)> {
        let mut v = Vec::with_capacity(self.slots.len());
        for (o, n) in self.layout.partitions.iter().enumerate() {
            for p in 0..*n {
                v.push((o, p as i32));
            }
        }
        v
    }
}

/// The most source records in one batch.
pub const MAX_BATCH: usize = 512;

/// The watermark of one source as a stage sees it: the minimum over its active partitions, and whether all of
/// them are idle (an idle source does not hold back the nodes it feeds, unless all their sources are idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceWatermark {
    pub watermark: i64,
    pub idle: bool,
}

impl SourceWatermark {
    pub const START: SourceWatermark = SourceWatermark {
        watermark: i64::MIN,
        idle: false,
    };
}

/// The watermark of a node fed by `sources`: the minimum over those not idle; when all are idle, the largest.
pub fn combine(sources: &[usize], wms: &[SourceWatermark]) -> i64 {
    let mut active: Option<i64> = None;
    let mut all = i64::MIN;
    for s in sources {
        let Some(w) = wms.get(*s) else { continue };
        all = all.max(w.watermark);
        if !w.idle {
            active = Some(active.map_or(w.watermark, |a| a.min(w.watermark)));
        }
    }
    active.unwrap_or(all)
}

/// The watermark of one input of a node fed by `sources`: the minimum over all of them, idle or not. Unlike
/// [`combine`] it never skips a source, so it is a floor for that input's elements to come (an idle source's
/// watermark still bounds what it sends when it wakes).
pub fn floor(sources: &[usize], wms: &[SourceWatermark]) -> i64 {
    sources
        .iter()
        .filter_map(|s| wms.get(*s))
        .map(|w| w.watermark)
        .min()
        .unwrap_or(i64::MIN)
}

/// A batch on its way to another task: (task, node, input port, batch).
pub type Shipment = (usize, usize, usize, Batch);

/// One task: every node of the graph, instantiated for this task.
pub struct Task {
    index: usize,
    groups: KeyGroups,
    graph: Arc<GraphSpec>,
    nodes: Vec<Box<dyn NodeCore>>,
    /// Batches waiting for each node, with their input port.
    queues: Vec<VecDeque<(usize, Batch)>>,
    /// The watermark each node last saw (watermarks given to operators only grow).
    node_wm: Vec<i64>,
    /// For nodes with several inputs, the watermark each input last gave.
    port_wm: Vec<Vec<i64>>,
    /// Source records read but not yet run, per source (event time, record).
    fed: Vec<Vec<(i64, Message)>>,
    outgoing: Vec<Shipment>,
    scratch: Vec<Batch>,
    out: TaskOutput,
}

impl Task {
    pub fn new(
        graph: Arc<GraphSpec>,
        index: usize,
        groups: KeyGroups,
        layout: OutputLayout,
        state: Option<crate::keyed_state::StateHandle>,
    ) -> Task {
        let nodes = graph
            .nodes
            .iter()
            .map(|n| {
                (n.factory)(&NodeInit {
                    id: &n.id,
                    task: index,
                    groups,
                    late: n.late,
                    sink: n.sink,
                    state: state.clone(),
                })
            })
            .collect();
        let n = graph.nodes.len();
        Task {
            index,
            groups,
            nodes,
            queues: (0..n).map(|_| VecDeque::new()).collect(),
            node_wm: vec![i64::MIN; n],
            port_wm: graph
                .port_upstream
                .iter()
                .map(|p| vec![i64::MIN; p.len()])
                .collect(),
            fed: (0..graph.sources.len()).map(|_| Vec::new()).collect(),
            outgoing: Vec::new(),
            scratch: Vec::new(),
            out: TaskOutput::new(layout, index),
            graph,
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn stages(&self) -> usize {
        self.graph.stages
    }

    /// Queues a record read from source `source`; returns its event time.
    pub fn feed(&mut self, source: usize, m: Message) -> i64 {
        let ts = match self
            .graph
            .sources
            .get(source)
            .and_then(|s| s.event_time.as_ref())
        {
            Some(f) => f(&m).unwrap_or(m.timestamp),
            None => m.timestamp,
        };
        if let Some(q) = self.fed.get_mut(source) {
            q.push((ts, m));
            if q.len() >= MAX_BATCH {
                let full = std::mem::replace(q, Vec::with_capacity(MAX_BATCH));
                if let Some(node) = self.graph.sources.get(source).map(|s| s.node) {
                    self.queues[node].push_back((0, Box::new(full)));
                }
            }
        }
        ts
    }

    /// Queues a batch another task sent to input `port` of `node`.
    pub fn deliver(&mut self, node: usize, port: usize, batch: Batch) {
        if let Some(q) = self.queues.get_mut(node) {
            q.push_back((port, batch));
        }
    }

    /// Runs every node of stage `stage`: first every queued batch, one at a time through all the nodes it
    /// reaches (the deepest node with work first), then, in topological order, what the nodes before emitted
    /// since and (if given) the watermark of its sources and the processing time. So a node sees every
    /// element of the round before its watermark, as when it ran its whole queue at once. What the nodes emit goes to the queues of local
    /// consumers and, across keyed edges, to `outgoing` for the tasks owning the keys.
    pub fn run_stage(
        &mut self,
        stage: usize,
        wms: Option<&[SourceWatermark]>,
        now: Option<i64>,
    ) -> crate::Result<()> {
        if stage == 0 {
            for (s, src) in self.graph.sources.iter().enumerate() {
                let fed = std::mem::take(&mut self.fed[s]);
                if !fed.is_empty() {
                    self.queues[src.node].push_back((0, Box::new(fed)));
                }
            }
        }
        let graph = self.graph.clone();
        let in_stage: Vec<usize> = (0..graph.nodes.len())
            .filter(|&n| graph.stage[n] == stage)
            .collect();
        while let Some(&n) = in_stage.iter().rev().find(|&&n| !self.queues[n].is_empty()) {
            if let Some((port, batch)) = self.queues[n].pop_front() {
                let mut cx = NodeCx { out: &mut self.out };
                self.nodes[n].push(port, batch, &mut cx)?;
                self.forward(n);
            }
        }
        for &n in &in_stage {
            let mut cx = NodeCx { out: &mut self.out };
            for (port, batch) in self.queues[n].drain(..) {
                self.nodes[n].push(port, batch, &mut cx)?;
            }
            if let Some(wms) = wms {
                for (port, sources) in graph.port_upstream[n].iter().enumerate() {
                    let wm = floor(sources, wms);
                    if wm > self.port_wm[n][port] {
                        self.port_wm[n][port] = wm;
                        self.nodes[n].input_watermark(port, wm, &mut cx);
                    }
                }
                let wm = combine(&graph.upstream[n], wms);
                if wm > self.node_wm[n] {
                    self.node_wm[n] = wm;
                    self.nodes[n].watermark(wm, &mut cx);
                }
            }
            if let Some(now) = now {
                self.nodes[n].processing_time(now, &mut cx);
            }
            self.forward(n);
        }
        Ok(())
    }

    /// Hands what node `n` emitted to its consumers.
    fn forward(&mut self, n: usize) {
        let consumers = &self.graph.consumers[n];
        self.scratch.clear();
        self.nodes[n].take(consumers.len(), &mut self.scratch);
        for ((c, port), batch) in consumers.iter().zip(self.scratch.drain(..)) {
            match &self.graph.nodes[*c].inputs[*port].exchange {
                None => self.queues[*c].push_back((*port, batch)),
                Some(x) => {
                    let me = self.index;
                    let queues = &mut self.queues;
                    let outgoing = &mut self.outgoing;
                    let ok = x.split(batch, &self.groups, &mut |task, b| {
                        if task == me {
                            queues[*c].push_back((*port, b));
                        } else {
                            outgoing.push((task, *c, *port, b));
                        }
                    });
                    if !ok {
                        tracing::error!(node = %self.graph.nodes[*c].id, "a batch of the wrong type reached an exchange");
                    }
                }
            }
        }
    }

    /// Takes every batch bound for another task.
    pub fn take_outgoing(&mut self) -> std::vec::Drain<'_, Shipment> {
        self.outgoing.drain(..)
    }

    /// Whether nothing waits in this task's queues (between two stages of a checkpoint drain).
    pub fn is_drained(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty) && self.fed.iter().all(Vec::is_empty)
    }

    /// Calls every node's close hook, in order, passing on what they emit.
    pub fn close(&mut self) {
        let graph = self.graph.clone();
        for n in 0..graph.nodes.len() {
            let mut cx = NodeCx { out: &mut self.out };
            for (port, batch) in self.queues[n].drain(..) {
                if let Err(e) = self.nodes[n].push(port, batch, &mut cx) {
                    tracing::error!(error = %e, "while closing");
                }
            }
            self.nodes[n].close(&mut cx);
            self.forward(n);
        }
    }

    /// The state of every node, by group (key group, or [`crate::graph::node::TASK_GROUP`] for per-task
    /// steps).
    pub fn snapshot(&mut self) -> GroupedState {
        let mut g = GroupedState::new();
        for n in &mut self.nodes {
            n.snapshot(&mut g);
        }
        g
    }

    /// Restores the snapshots this task now holds: key groups it owns, per-task state handed to it.
    pub fn restore(&mut self, from: &HashMap<i32, Vec<TaskState>>) -> crate::Result<()> {
        for n in &mut self.nodes {
            n.restore(from)?;
        }
        Ok(())
    }

    pub fn output(&mut self) -> &mut TaskOutput {
        &mut self.out
    }

    pub fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        for n in &self.nodes {
            n.metrics(into);
        }
    }

    /// The key groups this task owns.
    pub fn groups(&self) -> std::ops::Range<usize> {
        self.groups.groups_of(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_watermark_skips_idle_sources() {
        let w = |watermark, idle| SourceWatermark { watermark, idle };
        assert_eq!(combine(&[0, 1], &[w(10, false), w(5, false)]), 5);
        assert_eq!(combine(&[0, 1], &[w(10, false), w(5, true)]), 10);
        assert_eq!(combine(&[0, 1], &[w(10, true), w(5, true)]), 10);
        assert_eq!(combine(&[1], &[w(10, false), w(5, false)]), 5);
    }

    #[test]
    fn an_input_floor_never_skips_idle_sources() {
        let w = |watermark, idle| SourceWatermark { watermark, idle };
        assert_eq!(floor(&[0, 1], &[w(10, false), w(5, true)]), 5);
        assert_eq!(floor(&[1], &[w(10, false), w(7, true)]), 7);
        assert_eq!(floor(&[], &[w(10, false)]), i64::MIN);
    }
}
