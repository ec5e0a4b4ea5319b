//! The physical form of a graph node inside one task, with element types erased at its edges.
//!
//! Elements move between nodes in batches: a `Vec<(i64, T)>` (event time, element) on a forward edge, and a
//! `Vec<(u16, i64, T)>` (key group first) after a keyed exchange. A batch is boxed as [`Batch`] and downcast
//! once by the node that receives it, so the per-element path stays monomorphic: a node pushes each element
//! into its operator and collects what it emits into a typed output buffer, which the task hands on to the
//! node's consumers (cloning it for all but the last when a stream feeds several steps).
//!
//! A keyed node holds one operator instance per key group its task owns (see [`crate::keygroup`]): an
//! instance only ever sees the keys of its group, so its snapshot is that group's state and can be restored
//! in whichever task owns the group after a rescale.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keygroup::KeyGroups;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Stage, TaskInfo, TaskState};
use crate::record::OutRecord;
use crate::task::TaskOutput;

/// A batch of elements on an edge (a `Vec<(i64, T)>`, or `Vec<(u16, i64, T)>` after a keyed exchange).
pub type Batch = Box<dyn Any + Send>;

/// State snapshots of one task by group: a key group (>= 0), or [`TASK_GROUP`] for the state of operators
/// that run once per task (before any key_by).
pub type GroupedState = HashMap<i32, TaskState>;

/// The group of per-task (non-keyed) operator state in a [`GroupedState`].
pub const TASK_GROUP: i32 = -1;

/// What a node needs from its task while it runs.
pub struct NodeCx<'a> {
    /// The task's pending outputs (sinks and late records write here).
    pub out: &'a mut TaskOutput,
}

/// What a node is made with.
#[derive(Debug, Clone)]
pub struct NodeInit<'a> {
    /// The node's stable id (its state is found by it).
    pub id: &'a str,
    pub task: usize,
    pub groups: KeyGroups,
    /// The output index of this node's late-record topic, if it has one.
    pub late: Option<usize>,
    /// The output index of the topic a sink node writes.
    pub sink: Option<usize>,
    /// The pipeline's state backend, if it has one.
    pub state: Option<crate::keyed_state::StateHandle>,
}

/// One node of the graph as a task runs it.
pub trait NodeCore: Send {
    /// Handles a batch that arrived on input `port`.
    fn push(&mut self, port: usize, batch: Batch, cx: &mut NodeCx<'_>) -> Result<()>;
    fn watermark(&mut self, watermark: i64, cx: &mut NodeCx<'_>);
    /// The watermark of input `port` alone moved (for nodes with several inputs; see
    /// [`crate::operator::Operator::on_input_watermark`]).
    fn input_watermark(&mut self, _port: usize, _watermark: i64, _cx: &mut NodeCx<'_>) {}
    fn processing_time(&mut self, now: i64, cx: &mut NodeCx<'_>);
    fn close(&mut self, cx: &mut NodeCx<'_>);
    fn snapshot(&mut self, into: &mut GroupedState);
    /// Restores the snapshots of every group this node holds (a per-task node may get several after a
    /// rescale; each is restored in turn).
    fn restore(&mut self, from: &HashMap<i32, Vec<TaskState>>) -> Result<()>;
    fn metrics(&self, into: &mut Vec<OperatorMetrics>);
    /// Moves what the node emitted since the last call into `into`, as `consumers` batches.
    fn take(&mut self, consumers: usize, into: &mut Vec<Batch>);
}

/// Builds a node for one task.
pub type NodeFactory = Arc<dyn Fn(&NodeInit<'_>) -> Box<dyn NodeCore> + Send + Sync>;

/// A node's emitted elements, waiting to be handed to its consumers.
pub struct Outbox<O> {
    items: Vec<(i64, O)>,
}

impl<O> Default for Outbox<O> {
    fn default() -> Self {
        Outbox { items: Vec::new() }
    }
}

impl<O: Clone + Send + 'static> Outbox<O> {
    fn take(&mut self, consumers: usize, into: &mut Vec<Batch>) {
        if consumers == 0 {
            self.items.clear();
            return;
        }
        if self.items.is_empty() {
            return;
        }
        for _ in 1..consumers {
            into.push(Box::new(self.items.clone()));
        }
        // The next batch is likely as large as this one: sized now, it grows without reallocating.
        let next = Vec::with_capacity(self.items.len());
        into.push(Box::new(std::mem::replace(&mut self.items, next)));
    }
}

/// Collects an operator's output into its node's outbox; late records go to the node's late topic.
struct ToOutbox<'a, O> {
    items: &'a mut Vec<(i64, O)>,
    out: &'a mut TaskOutput,
    late: Option<usize>,
}

impl<O> Collector<O> for ToOutbox<'_, O> {
    fn emit(&mut self, timestamp: i64, item: O) {
        self.items.push((timestamp, item));
    }
    fn late(&mut self, record: OutRecord) {
        self.out.emit_to(self.late, record);
    }
}

fn wrong_type(port: usize) -> Error {
    // Edges are typed by the builder; a mismatch is a bug in the graph code, reported rather than panicking.
    Error::Stopped(format!("a batch of the wrong type reached input {port}"))
}

/// Converts the batches of one input port into the node's element type.
pub trait Port<I>: Send + Sync {
    /// Calls `f(key_group, timestamp, element)` for each element (key group 0 on forward edges).
    fn each(&self, batch: Batch, f: &mut dyn FnMut(u16, i64, I)) -> bool;
}

/// A forward edge carrying `X`, fed to a node of element type `I` through `conv`.
pub struct ForwardPort<X, I> {
    conv: fn(X) -> I,
    _x: PhantomData<fn(X)>,
}

impl<X, I> ForwardPort<X, I> {
    pub fn new(conv: fn(X) -> I) -> Self {
        ForwardPort {
            conv,
            _x: PhantomData,
        }
    }
}

impl<X: 'static, I: 'static> Port<I> for ForwardPort<X, I> {
    fn each(&self, batch: Batch, f: &mut dyn FnMut(u16, i64, I)) -> bool {
        match batch.downcast::<Vec<(i64, X)>>() {
            Ok(items) => {
                for (ts, x) in *items {
                    f(0, ts, (self.conv)(x));
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// A keyed edge carrying `X` (after an exchange), fed through `conv`.
pub struct KeyedPort<X, I> {
    conv: fn(X) -> I,
    _x: PhantomData<fn(X)>,
}

impl<X, I> KeyedPort<X, I> {
    pub fn new(conv: fn(X) -> I) -> Self {
        KeyedPort {
            conv,
            _x: PhantomData,
        }
    }
}

impl<X: 'static, I: 'static> Port<I> for KeyedPort<X, I> {
    fn each(&self, batch: Batch, f: &mut dyn FnMut(u16, i64, I)) -> bool {
        match batch.downcast::<Vec<(u16, i64, X)>>() {
            Ok(items) => {
                for (kg, ts, x) in *items {
                    f(kg, ts, (self.conv)(x));
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Splits a forward batch of `(K, T)`-like elements by key group and owning task.
pub trait Exchange: Send + Sync {
    fn split(&self, batch: Batch, groups: &KeyGroups, send: &mut dyn FnMut(usize, Batch)) -> bool;
}

/// The exchange of elements of type `E`, keyed by `key_group(element)`.
pub struct KeyExchange<E> {
    key_bytes: fn(&E, &KeyGroups) -> u16,
}

impl<E> KeyExchange<E> {
    pub fn new(key_bytes: fn(&E, &KeyGroups) -> u16) -> Self {
        KeyExchange { key_bytes }
    }
}

impl<E: Send + 'static> Exchange for KeyExchange<E> {
    fn split(&self, batch: Batch, groups: &KeyGroups, send: &mut dyn FnMut(usize, Batch)) -> bool {
        let Ok(items) = batch.downcast::<Vec<(i64, E)>>() else {
            return false;
        };
        let n = groups.parallelism;
        let mut per_task: Vec<Vec<(u16, i64, E)>> = (0..n).map(|_| Vec::new()).collect();
        for (ts, e) in *items {
            let kg = (self.key_bytes)(&e, groups);
            per_task[groups.task_of(kg).min(n - 1)].push((kg, ts, e));
        }
        for (task, items) in per_task.into_iter().enumerate() {
            if !items.is_empty() {
                send(task, Box::new(items));
            }
        }
        true
    }
}

/// A node running one operator chain per task (steps before key_by, unions, stateless steps after a keyed
/// step).
pub struct ForwardNode<I, O> {
    stage: Box<dyn Stage<I, Out = O>>,
    ports: Vec<Box<dyn Port<I>>>,
    late: Option<usize>,
    outbox: Outbox<O>,
}

impl<I, O> ForwardNode<I, O> {
    pub fn new(
        stage: Box<dyn Stage<I, Out = O>>,
        ports: Vec<Box<dyn Port<I>>>,
        init: &NodeInit<'_>,
    ) -> Self {
        let mut stage = stage;
        stage.start(&TaskInfo {
            index: init.task,
            tasks: init.groups.parallelism,
            state: init.state.clone(),
            ..TaskInfo::default()
        });
        ForwardNode {
            stage,
            ports,
            late: init.late,
            outbox: Outbox::default(),
        }
    }
}

impl<I: 'static, O: Clone + Send + 'static> NodeCore for ForwardNode<I, O> {
    fn push(&mut self, port: usize, batch: Batch, cx: &mut NodeCx<'_>) -> Result<()> {
        let Some(p) = self.ports.get(port) else {
            return Err(wrong_type(port));
        };
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        let stage = &mut self.stage;
        if p.each(batch, &mut |_, ts, item| stage.process(ts, item, &mut c)) {
            Ok(())
        } else {
            Err(wrong_type(port))
        }
    }
    fn watermark(&mut self, watermark: i64, cx: &mut NodeCx<'_>) {
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        self.stage.watermark(watermark, &mut c);
    }
    fn input_watermark(&mut self, port: usize, watermark: i64, cx: &mut NodeCx<'_>) {
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        self.stage.input_watermark(port, watermark, &mut c);
    }
    fn processing_time(&mut self, now: i64, cx: &mut NodeCx<'_>) {
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        self.stage.processing_time(now, &mut c);
    }
    fn close(&mut self, cx: &mut NodeCx<'_>) {
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        self.stage.close(&mut c);
    }
    fn snapshot(&mut self, into: &mut GroupedState) {
        let mut s = TaskState::new();
        self.stage.snapshot(&mut s);
        if !s.is_empty() {
            into.entry(TASK_GROUP).or_default().extend(s);
        }
    }
    fn restore(&mut self, from: &HashMap<i32, Vec<TaskState>>) -> Result<()> {
        for s in from.get(&TASK_GROUP).into_iter().flatten() {
            self.stage.restore(s)?;
        }
        Ok(())
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        self.stage.metrics(into);
    }
    fn take(&mut self, consumers: usize, into: &mut Vec<Batch>) {
        self.outbox.take(consumers, into);
    }
}

/// Makes a fresh operator chain (one per key group).
pub type MakeStage<I, O> = Box<dyn Fn() -> Box<dyn Stage<I, Out = O>> + Send>;

/// A node with one operator instance per key group its task owns, made when the group first gets an element
/// or state (so a task owning thousands of key groups pays only for those in use: watermarks and timers
/// visit live instances only).
///
/// Invariants: `instances[kg - owned.start]` is `Some` only for key groups in `owned` that have received an
/// element or restored state; an instance made late has seen every watermark it missed before its first
/// element (`watermark` and `port_wm`, which only grow, are given to it when it is made).
pub struct KeyedNode<I, O> {
    make: MakeStage<I, O>,
    info: TaskInfo,
    owned: std::ops::Range<usize>,
    instances: Vec<Option<Box<dyn Stage<I, Out = O>>>>,
    ports: Vec<Box<dyn Port<I>>>,
    late: Option<usize>,
    outbox: Outbox<O>,
    watermark: i64,
    /// The watermark of each input alone (empty for one input), i64::MIN before the first.
    port_wm: Vec<i64>,
    /// The last processing time seen (given to instances made later), i64::MIN before the first.
    now: i64,
    /// Elements for a key group this task does not own (a routing bug: counted and logged, not fatal).
    misrouted: u64,
}

impl<I, O> KeyedNode<I, O> {
    pub fn new(make: MakeStage<I, O>, ports: Vec<Box<dyn Port<I>>>, init: &NodeInit<'_>) -> Self {
        let g = init.groups;
        let owned = g.groups_of(init.task);
        KeyedNode {
            make,
            info: TaskInfo {
                index: init.task,
                tasks: g.parallelism,
                state: init.state.clone(),
                ..TaskInfo::default()
            },
            instances: (0..owned.len()).map(|_| None).collect(),
            owned,
            ports,
            late: init.late,
            outbox: Outbox::default(),
            watermark: i64::MIN,
            port_wm: Vec::new(),
            now: i64::MIN,
            misrouted: 0,
        }
    }

    fn each_instance(
        &mut self,
        cx: &mut NodeCx<'_>,
        mut f: impl FnMut(&mut Box<dyn Stage<I, Out = O>>, &mut dyn Collector<O>),
    ) {
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        for s in self.instances.iter_mut().flatten() {
            f(s, &mut c);
        }
    }
}

/// The times a keyed node has seen, given to an instance when it is made.
#[derive(Clone, Copy)]
struct Times<'a> {
    watermark: i64,
    ports: &'a [i64],
    now: i64,
}

impl Times<'_> {
    const NONE: Times<'static> = Times {
        watermark: i64::MIN,
        ports: &[],
        now: i64::MIN,
    };
}

/// The instance of key group `kg`, made (and told the time) if it has none yet; None if `kg` is not owned.
fn instance<'a, I, O>(
    instances: &'a mut [Option<Box<dyn Stage<I, Out = O>>>],
    owned: &std::ops::Range<usize>,
    make: &MakeStage<I, O>,
    info: &TaskInfo,
    times: Times<'_>,
    kg: usize,
    out: &mut dyn Collector<O>,
) -> Option<&'a mut Box<dyn Stage<I, Out = O>>> {
    if !owned.contains(&kg) {
        return None;
    }
    let slot = &mut instances[kg - owned.start];
    if slot.is_none() {
        let mut s = make();
        s.start(&TaskInfo {
            key_group: Some(kg as u16),
            ..info.clone()
        });
        if times.now != i64::MIN {
            s.processing_time(times.now, out);
        }
        for (port, &w) in times.ports.iter().enumerate() {
            if w != i64::MIN {
                s.input_watermark(port, w, out);
            }
        }
        if times.watermark != i64::MIN {
            s.watermark(times.watermark, out);
        }
        *slot = Some(s);
    }
    slot.as_mut()
}

impl<I: 'static, O: Clone + Send + 'static> NodeCore for KeyedNode<I, O> {
    fn push(&mut self, port: usize, batch: Batch, cx: &mut NodeCx<'_>) -> Result<()> {
        let Some(p) = self.ports.get(port) else {
            return Err(wrong_type(port));
        };
        let mut c = ToOutbox {
            items: &mut self.outbox.items,
            out: cx.out,
            late: self.late,
        };
        let (instances, owned, make, info) =
            (&mut self.instances, &self.owned, &self.make, &self.info);
        let times = Times {
            watermark: self.watermark,
            ports: &self.port_wm,
            now: self.now,
        };
        let misrouted = &mut self.misrouted;
        let ok = p.each(batch, &mut |kg, ts, item| match instance(
            instances,
            owned,
            make,
            info,
            times,
            usize::from(kg),
            &mut c,
        ) {
            Some(s) => s.process(ts, item, &mut c),
            None => *misrouted += 1,
        });
        if self.misrouted > 0 {
            tracing::error!(
                misrouted = self.misrouted,
                "elements reached a task that does not own their key group"
            );
            self.misrouted = 0;
        }
        if ok {
            Ok(())
        } else {
            Err(wrong_type(port))
        }
    }
    fn watermark(&mut self, watermark: i64, cx: &mut NodeCx<'_>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        self.each_instance(cx, |s, c| s.watermark(watermark, c));
    }
    fn input_watermark(&mut self, port: usize, watermark: i64, cx: &mut NodeCx<'_>) {
        if self.port_wm.len() <= port {
            self.port_wm.resize(port + 1, i64::MIN);
        }
        if watermark <= self.port_wm[port] {
            return;
        }
        self.port_wm[port] = watermark;
        self.each_instance(cx, |s, c| s.input_watermark(port, watermark, c));
    }
    fn processing_time(&mut self, now: i64, cx: &mut NodeCx<'_>) {
        self.now = self.now.max(now);
        self.each_instance(cx, |s, c| s.processing_time(now, c));
    }
    fn close(&mut self, cx: &mut NodeCx<'_>) {
        self.each_instance(cx, |s, c| s.close(c));
    }
    fn snapshot(&mut self, into: &mut GroupedState) {
        for (i, s) in self.instances.iter_mut().enumerate() {
            if let Some(s) = s {
                let mut state = TaskState::new();
                s.snapshot(&mut state);
                if !state.is_empty() {
                    into.entry((self.owned.start + i) as i32)
                        .or_default()
                        .extend(state);
                }
            }
        }
    }
    fn restore(&mut self, from: &HashMap<i32, Vec<TaskState>>) -> Result<()> {
        // Restored before any element or time: no watermark or processing time to give the instances yet.
        let mut sink = Vec::new();
        let mut c = ToOutbox {
            items: &mut sink,
            out: &mut TaskOutput::new(Default::default(), 0),
            late: None,
        };
        for kg in self.owned.clone() {
            let Some(states) = from.get(&(kg as i32)) else {
                continue;
            };
            let (instances, owned, make, info) =
                (&mut self.instances, &self.owned, &self.make, &self.info);
            if let Some(s) = instance(instances, owned, make, info, Times::NONE, kg, &mut c) {
                for state in states {
                    s.restore(state)?;
                }
            }
        }
        Ok(())
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        let mut all = crate::metrics::PipelineMetrics::default();
        for s in self.instances.iter().flatten() {
            let mut m = Vec::new();
            s.metrics(&mut m);
            all.merge_operators(m);
        }
        into.extend(all.operators);
    }
    fn take(&mut self, consumers: usize, into: &mut Vec<Batch>) {
        self.outbox.take(consumers, into);
    }
}

/// Where a source's records enter the graph: it passes them on as they come.
pub struct SourceNode<T> {
    outbox: Outbox<T>,
}

impl<T> Default for SourceNode<T> {
    fn default() -> Self {
        SourceNode {
            outbox: Outbox::default(),
        }
    }
}

impl<T: Clone + Send + 'static> NodeCore for SourceNode<T> {
    fn push(&mut self, port: usize, batch: Batch, _cx: &mut NodeCx<'_>) -> Result<()> {
        match batch.downcast::<Vec<(i64, T)>>() {
            Ok(items) if self.outbox.items.is_empty() => self.outbox.items = *items,
            Ok(items) => self.outbox.items.extend(*items),
            Err(_) => return Err(wrong_type(port)),
        }
        Ok(())
    }
    fn watermark(&mut self, _watermark: i64, _cx: &mut NodeCx<'_>) {}
    fn processing_time(&mut self, _now: i64, _cx: &mut NodeCx<'_>) {}
    fn close(&mut self, _cx: &mut NodeCx<'_>) {}
    fn snapshot(&mut self, _into: &mut GroupedState) {}
    fn restore(&mut self, _from: &HashMap<i32, Vec<TaskState>>) -> Result<()> {
        Ok(())
    }
    fn metrics(&self, _into: &mut Vec<OperatorMetrics>) {}
    fn take(&mut self, consumers: usize, into: &mut Vec<Batch>) {
        self.outbox.take(consumers, into);
    }
}

/// Writes each element to a topic as the record `f` makes of it.
pub struct SinkNode<T> {
    id: String,
    f: Arc<dyn Fn(T) -> OutRecord + Send + Sync>,
    topic: Option<usize>,
    records: u64,
}

impl<T> SinkNode<T> {
    pub fn new(f: Arc<dyn Fn(T) -> OutRecord + Send + Sync>, init: &NodeInit<'_>) -> Self {
        SinkNode {
            id: init.id.to_string(),
            f,
            topic: init.sink,
            records: 0,
        }
    }
}

impl<T: 'static> NodeCore for SinkNode<T> {
    fn push(&mut self, port: usize, batch: Batch, cx: &mut NodeCx<'_>) -> Result<()> {
        let items = batch
            .downcast::<Vec<(i64, T)>>()
            .map_err(|_| wrong_type(port))?;
        self.records += items.len() as u64;
        for (_, item) in *items {
            cx.out.emit_to(self.topic, (self.f)(item));
        }
        Ok(())
    }
    fn watermark(&mut self, _watermark: i64, _cx: &mut NodeCx<'_>) {}
    fn processing_time(&mut self, _now: i64, _cx: &mut NodeCx<'_>) {}
    fn close(&mut self, _cx: &mut NodeCx<'_>) {}
    fn snapshot(&mut self, _into: &mut GroupedState) {}
    fn restore(&mut self, _from: &HashMap<i32, Vec<TaskState>>) -> Result<()> {
        Ok(())
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        into.push(OperatorMetrics {
            id: self.id.clone(),
            records_in: self.records,
            records_out: self.records,
            ..Default::default()
        });
    }
    fn take(&mut self, _consumers: usize, _into: &mut Vec<Batch>) {}
}
