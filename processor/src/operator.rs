//! The operator model.
//!
//! - [`Operator`]: what a user implements for a custom step: one required method, [`Operator::process`], and
//!   lifecycle hooks with defaults (`on_start`, `on_watermark`, `on_checkpoint`/`on_restore`, `on_close`).
//! - [`Collector`]: where an operator emits, with a side channel for late records.
//! - [`Stage`]: the object-safe form the runtime drives. [`Named`] turns an operator into a stage with a stable
//!   id (its state is found by that id after a restart) and counts its records; [`Chain`] joins two stages.
//!
//! Two-input operators (joins) will be a second trait beside [`Operator`] whose `process` gets the input side;
//! [`Stage`] already carries everything else they need (watermarks, snapshots by id, side outputs).

use std::collections::HashMap;

use crate::error::Result;
use crate::metrics::OperatorMetrics;
use crate::record::OutRecord;

/// Receives what an operator emits.
pub trait Collector<T> {
    /// Emits `item` with event time `timestamp`.
    fn emit(&mut self, timestamp: i64, item: T);
    /// Sends a record to the pipeline's late-record topic, unchanged.
    fn late(&mut self, record: OutRecord);
}

/// What a task knows about itself, given to `on_start`.
#[derive(Debug, Clone, Default)]
pub struct TaskInfo {
    /// This task's index.
    pub index: usize,
    /// How many tasks the pipeline runs.
    pub tasks: usize,
    /// The key group of this operator instance (None before any key_by: one instance per task).
    pub key_group: Option<u16>,
    /// The operator's stable id (set by [`Named`]).
    pub operator: String,
    /// The pipeline's state backend (None in unit tests and the test driver: keyed state then snapshots
    /// whole, see [`crate::keyed_state`]).
    pub state: Option<crate::keyed_state::StateHandle>,
}

/// A custom step. State that must survive a restart is written by `on_checkpoint` and read back by
/// `on_restore`; an operator that keeps none needs neither.
pub trait Operator<In>: Send {
    type Out;

    /// Handles one element with event time `timestamp`.
    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<Self::Out>);

    fn on_start(&mut self, _task: &TaskInfo) {}

    /// The task's watermark moved to `watermark`: no element with an earlier event time is expected any more.
    fn on_watermark(&mut self, _watermark: i64, _out: &mut dyn Collector<Self::Out>) {}

    /// The watermark of input `port` alone moved to `watermark` (called only for steps with several inputs,
    /// before the combined [`Operator::on_watermark`] of the same round). No element to come on that input has
    /// an earlier event time; elements of the other inputs may still. A temporal join uses its table side's
    /// to join a probe as soon as every version it can need has arrived, without waiting for the probes'
    /// own watermark.
    fn on_input_watermark(
        &mut self,
        _port: usize,
        _watermark: i64,
        _out: &mut dyn Collector<Self::Out>,
    ) {
    }

    /// Processing time (wall-clock epoch ms, virtual in the test driver) moved to `now`: for processing-time
    /// timers and triggers. Called at least every few tens of milliseconds while the pipeline runs.
    fn on_processing_time(&mut self, _now: i64, _out: &mut dyn Collector<Self::Out>) {}

    /// Writes the operator's state into `state` (called at every checkpoint).
    fn on_checkpoint(&mut self, _state: &mut Vec<u8>) {}

    /// Restores what `on_checkpoint` wrote, before the first element after a restart.
    fn on_restore(&mut self, _state: &[u8]) -> Result<()> {
        Ok(())
    }

    /// The pipeline is stopping (after its final checkpoint).
    fn on_close(&mut self, _out: &mut dyn Collector<Self::Out>) {}

    /// Reports state size and late records (operators without state keep the default).
    fn report(&self, _m: &mut OperatorMetrics) {}
}

/// Snapshots of one task, by operator id.
pub type TaskState = HashMap<String, Vec<u8>>;

/// The object-safe form of a chain of operators, as the runtime drives it.
pub trait Stage<In>: Send {
    type Out;
    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<Self::Out>);
    fn start(&mut self, task: &TaskInfo);
    fn watermark(&mut self, watermark: i64, out: &mut dyn Collector<Self::Out>);
    /// The watermark of one input of a multi-input step (see [`Operator::on_input_watermark`]); only the
    /// first stage of a chain has the step's inputs.
    fn input_watermark(
        &mut self,
        _port: usize,
        _watermark: i64,
        _out: &mut dyn Collector<Self::Out>,
    ) {
    }
    fn processing_time(&mut self, now: i64, out: &mut dyn Collector<Self::Out>);
    fn snapshot(&mut self, into: &mut TaskState);
    fn restore(&mut self, from: &TaskState) -> Result<()>;
    fn close(&mut self, out: &mut dyn Collector<Self::Out>);
    fn metrics(&self, into: &mut Vec<OperatorMetrics>);
}

/// An operator with its stable id and record counters.
pub struct Named<O> {
    id: String,
    op: O,
    records_in: u64,
    records_out: u64,
}

impl<O> Named<O> {
    pub fn new(id: impl Into<String>, op: O) -> Self {
        Named {
            id: id.into(),
            op,
            records_in: 0,
            records_out: 0,
        }
    }
}

/// Counts what passes through to the next collector.
struct Counting<'a, T> {
    inner: &'a mut dyn Collector<T>,
    n: &'a mut u64,
}

impl<T> Collector<T> for Counting<'_, T> {
    fn emit(&mut self, timestamp: i64, item: T) {
        *self.n += 1;
        self.inner.emit(timestamp, item);
    }
    fn late(&mut self, record: OutRecord) {
        self.inner.late(record);
    }
}

impl<In, O: Operator<In>> Stage<In> for Named<O> {
    type Out = O::Out;

    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<O::Out>) {
        self.records_in += 1;
        let mut c = Counting {
            inner: out,
            n: &mut self.records_out,
        };
        self.op.process(timestamp, item, &mut c);
    }
    fn start(&mut self, task: &TaskInfo) {
        let task = TaskInfo {
            operator: self.id.clone(),
            ..task.clone()
        };
        self.op.on_start(&task);
    }
    fn watermark(&mut self, watermark: i64, out: &mut dyn Collector<O::Out>) {
        let mut c = Counting {
            inner: out,
            n: &mut self.records_out,
        };
        self.op.on_watermark(watermark, &mut c);
    }
    fn input_watermark(&mut self, port: usize, watermark: i64, out: &mut dyn Collector<O::Out>) {
        let mut c = Counting {
            inner: out,
            n: &mut self.records_out,
        };
        self.op.on_input_watermark(port, watermark, &mut c);
    }
    fn processing_time(&mut self, now: i64, out: &mut dyn Collector<O::Out>) {
        let mut c = Counting {
            inner: out,
            n: &mut self.records_out,
        };
        self.op.on_processing_time(now, &mut c);
    }
    fn snapshot(&mut self, into: &mut TaskState) {
        let mut buf = Vec::new();
        self.op.on_checkpoint(&mut buf);
        if !buf.is_empty() {
            into.insert(self.id.clone(), buf);
        }
    }
    fn restore(&mut self, from: &TaskState) -> Result<()> {
        match from.get(&self.id) {
            Some(state) => self.op.on_restore(state),
            None => Ok(()),
        }
    }
    fn close(&mut self, out: &mut dyn Collector<O::Out>) {
        let mut c = Counting {
            inner: out,
            n: &mut self.records_out,
        };
        self.op.on_close(&mut c);
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        let mut m = OperatorMetrics {
            id: self.id.clone(),
            records_in: self.records_in,
            records_out: self.records_out,
            ..Default::default()
        };
        self.op.report(&mut m);
        into.push(m);
    }
}

/// `first`, then `second` on everything `first` emits.
pub struct Chain<A, B> {
    pub first: A,
    pub second: B,
}

/// Feeds what the first stage emits into the second.
struct Pipe<'a, B: Stage<T>, T> {
    next: &'a mut B,
    out: &'a mut dyn Collector<B::Out>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<B: Stage<T>, T> Collector<T> for Pipe<'_, B, T> {
    fn emit(&mut self, timestamp: i64, item: T) {
        self.next.process(timestamp, item, self.out);
    }
    fn late(&mut self, record: OutRecord) {
        self.out.late(record);
    }
}

impl<In, A: Stage<In>, B: Stage<A::Out>> Stage<In> for Chain<A, B> {
    type Out = B::Out;

    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<B::Out>) {
        let mut pipe = Pipe {
            next: &mut self.second,
            out,
            _t: std::marker::PhantomData,
        };
        self.first.process(timestamp, item, &mut pipe);
    }
    fn start(&mut self, task: &TaskInfo) {
        self.first.start(task);
        self.second.start(task);
    }
    fn watermark(&mut self, watermark: i64, out: &mut dyn Collector<B::Out>) {
        let mut pipe = Pipe {
            next: &mut self.second,
            out: &mut *out,
            _t: std::marker::PhantomData,
        };
        self.first.watermark(watermark, &mut pipe);
        self.second.watermark(watermark, out);
    }
    fn input_watermark(&mut self, port: usize, watermark: i64, out: &mut dyn Collector<B::Out>) {
        let mut pipe = Pipe {
            next: &mut self.second,
            out,
            _t: std::marker::PhantomData,
        };
        self.first.input_watermark(port, watermark, &mut pipe);
    }
    fn processing_time(&mut self, now: i64, out: &mut dyn Collector<B::Out>) {
        let mut pipe = Pipe {
            next: &mut self.second,
            out: &mut *out,
            _t: std::marker::PhantomData,
        };
        self.first.processing_time(now, &mut pipe);
        self.second.processing_time(now, out);
    }
    fn snapshot(&mut self, into: &mut TaskState) {
        self.first.snapshot(into);
        self.second.snapshot(into);
    }
    fn restore(&mut self, from: &TaskState) -> Result<()> {
        self.first.restore(from)?;
        self.second.restore(from)
    }
    fn close(&mut self, out: &mut dyn Collector<B::Out>) {
        let mut pipe = Pipe {
            next: &mut self.second,
            out: &mut *out,
            _t: std::marker::PhantomData,
        };
        self.first.close(&mut pipe);
        self.second.close(out);
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        self.first.metrics(into);
        self.second.metrics(into);
    }
}

/// Passes elements through unchanged (the keyed side of a pipeline without key_by).
pub struct Identity;

impl<T> Stage<T> for Identity {
    type Out = T;
    fn process(&mut self, timestamp: i64, item: T, out: &mut dyn Collector<T>) {
        out.emit(timestamp, item);
    }
    fn start(&mut self, _task: &TaskInfo) {}
    fn watermark(&mut self, _watermark: i64, _out: &mut dyn Collector<T>) {}
    fn processing_time(&mut self, _now: i64, _out: &mut dyn Collector<T>) {}
    fn snapshot(&mut self, _into: &mut TaskState) {}
    fn restore(&mut self, _from: &TaskState) -> Result<()> {
        Ok(())
    }
    fn close(&mut self, _out: &mut dyn Collector<T>) {}
    fn metrics(&self, _into: &mut Vec<OperatorMetrics>) {}
}

/// A boxed stage is a stage (so chains can be built from trait objects).
impl<In, Out> Stage<In> for Box<dyn Stage<In, Out = Out>> {
    type Out = Out;
    fn process(&mut self, timestamp: i64, item: In, out: &mut dyn Collector<Out>) {
        (**self).process(timestamp, item, out)
    }
    fn start(&mut self, task: &TaskInfo) {
        (**self).start(task)
    }
    fn watermark(&mut self, watermark: i64, out: &mut dyn Collector<Out>) {
        (**self).watermark(watermark, out)
    }
    fn input_watermark(&mut self, port: usize, watermark: i64, out: &mut dyn Collector<Out>) {
        (**self).input_watermark(port, watermark, out)
    }
    fn processing_time(&mut self, now: i64, out: &mut dyn Collector<Out>) {
        (**self).processing_time(now, out)
    }
    fn snapshot(&mut self, into: &mut TaskState) {
        (**self).snapshot(into)
    }
    fn restore(&mut self, from: &TaskState) -> Result<()> {
        (**self).restore(from)
    }
    fn close(&mut self, out: &mut dyn Collector<Out>) {
        (**self).close(out)
    }
    fn metrics(&self, into: &mut Vec<OperatorMetrics>) {
        (**self).metrics(into)
    }
}
