//! The typed pipeline API, in the style of Flink's DataStream: a pipeline is a dataflow graph of sources,
//! steps and sinks.
//!
//! ```no_run
//! use std::time::Duration;
//! use millrace_processor::{Count, Message, OutRecord, Pipeline, Window};
//!
//! let p = Pipeline::new("clicks_per_user");
//! let clicks = p.source("clicks");
//! // A branch: every click with a key goes on unchanged to `clicks_keyed`...
//! let keyed = clicks.filter(|m: &Message| m.key.is_some());
//! keyed.clone().to("clicks_keyed", |m: Message| m.into());
//! // ...and is counted per user in 10-second windows.
//! let job = keyed
//!     .key_by(|m: &Message| m.key.clone().unwrap_or_default())
//!     .window(Window::tumbling(Duration::from_secs(10)))
//!     .late_topic("clicks_per_user.late")
//!     .aggregate(Count)
//!     .map(|r| OutRecord::new(Some(r.key), Some(format!("{}", r.value).into()), r.window_end - 1))
//!     .sink("clicks_per_user", |r| r)
//!     .unwrap();
//! ```
//!
//! `sink` adds a sink and builds the whole graph made so far; `to` adds a sink without building (for
//! pipelines with several), and [`Pipeline::build`] builds. A [`Stream`] is a cheap handle: cloning it and
//! adding steps to each clone branches the stream.
//!
//! Every step gets a stable id (`<position>.<kind>`, or the name given with `.uid(..)` right after it): its
//! state is found again by that id after a restart, so reordering steps of a running pipeline loses their
//! state, renaming one with `.uid` does not.
//!
//! A pipeline runs `parallelism` tasks (by default as many as its largest source has partitions); the
//! partitions of every source are spread over them. Steps before `key_by` run in the task that read the
//! record; `key_by` sends each element to the task owning its key group (of `max_parallelism`, default 128),
//! where windows, aggregations, joins and custom keyed operators keep their state per key group.

use std::cell::RefCell;
use std::collections::HashSet;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::graph::node::{
    ForwardNode, ForwardPort, KeyExchange, KeyedNode, KeyedPort, Port, SinkNode, SourceNode,
};
use crate::graph::{
    Edge, Exchange, GraphSpec, NodeFactory, NodeInit, NodeSpec, OutputSpec, SourceSpec,
};
pub use crate::graph::{EndAt, StartAt};
use crate::join::{Either, JoinKind};
use crate::keygroup::{KeyGroups, DEFAULT_MAX_PARALLELISM};
use crate::operator::{Identity, Named, Operator, Stage};
use crate::ops::interval_join::IntervalJoinFn;
use crate::ops::table_join::TableJoinFn;
use crate::ops::temporal_join::TemporalJoinFn;
use crate::ops::window::LateFn;
use crate::ops::window_join::WindowJoinFn;
use crate::ops::{
    Filter, FlatMap, IntervalJoin, Map, TableAggregate, TableJoin, TemporalJoin, WindowAggregate,
    WindowJoin,
};
use crate::record::{Message, OutRecord, WindowResult};
use crate::state::{Key, StateCodec};
use crate::task::EventTimeFn;
use crate::window::Window;

pub use crate::graph::TopicSpec;

/// Settings shared by every step of one pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub out_of_orderness_ms: i64,
    /// A partition caught up for this long stops holding the watermark back.
    pub idle_timeout_ms: i64,
    pub checkpoint_interval_ms: i64,
    /// A checkpoint is also taken when this many bytes of output are pending.
    pub checkpoint_max_pending_bytes: usize,
    /// fsync each checkpoint (and the outputs of the one before) before its outputs are appended. Without it,
    /// exactly-once still holds across a crash of the process (kill -9: the page cache survives), not across a
    /// crash of the machine.
    pub checkpoint_fsync: bool,
    /// How many tasks run the pipeline (None: as many as the largest source has partitions).
    pub parallelism: Option<usize>,
    /// How many key groups keyed state is split into: the most tasks the pipeline can ever be rescaled to.
    /// Fixed for the life of the pipeline's state.
    pub max_parallelism: usize,
    /// Where keyed state lives between checkpoints (see [`crate::keyed_state`]).
    pub state_backend: crate::keyed_state::BackendKind,
    /// The most memory the disk backend keeps keyed state in (bytes).
    pub state_memory_budget: usize,
}

/// The graph under construction, shared by every handle of one pipeline.
struct Builder {
    settings: Settings,
    nodes: Vec<NodeSpec>,
    sources: Vec<SourceSpec>,
    outputs: Vec<OutputSpec>,
    error: Option<String>,
}

type Shared = Rc<RefCell<Builder>>;

impl Builder {
    fn fail(&mut self, e: impl Into<String>) {
        self.error.get_or_insert(e.into());
    }

    fn add(
        &mut self,
        kind: &str,
        detail: String,
        inputs: Vec<Edge>,
        keyed: bool,
        factory: NodeFactory,
    ) -> usize {
        let id = format!("{}.{kind}", self.nodes.len() + 1);
        self.nodes.push(NodeSpec {
            id,
            detail,
            inputs,
            factory,
            keyed,
            late: None,
            sink: None,
            source: None,
        });
        self.nodes.len() - 1
    }

    /// The index of output `topic` (one per topic name; several sinks may write one topic).
    fn output(&mut self, topic: TopicSpec, late: bool) -> usize {
        if let Some(i) = self.outputs.iter().position(|o| o.topic.name == topic.name) {
            if self.outputs[i].late != late {
                self.fail(format!(
                    "topic {} is both a sink and a late-record topic",
                    topic.name
                ));
            }
            if self.outputs[i].topic.partitions.is_none() {
                self.outputs[i].topic.partitions = topic.partitions;
            }
            return i;
        }
        self.outputs.push(OutputSpec { topic, late });
        self.outputs.len() - 1
    }

    fn build(&self) -> Result<Job> {
        if let Some(e) = &self.error {
            return Err(Error::Invalid(e.clone()));
        }
        let s = &self.settings;
        if s.name.is_empty() {
            return Err(Error::Invalid("a pipeline needs a name".into()));
        }
        if self.sources.is_empty() {
            return Err(Error::Invalid("a pipeline needs a source topic".into()));
        }
        if !self.outputs.iter().any(|o| !o.late) {
            return Err(Error::Invalid("a pipeline needs a sink".into()));
        }
        for o in &self.outputs {
            if self
                .sources
                .iter()
                .any(|src| src.topic.name == o.topic.name)
            {
                return Err(Error::Invalid(format!(
                    "pipeline {} reads and writes topic {}: a loop",
                    s.name, o.topic.name
                )));
            }
        }
        let mut ids = HashSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id.as_str()) {
                return Err(Error::Invalid(format!(
                    "two steps have the id {}: uids must be unique",
                    n.id
                )));
            }
        }
        let graph = GraphSpec::new(
            self.nodes.clone(),
            self.sources.clone(),
            self.outputs.clone(),
        )?;
        Ok(Job {
            settings: self.settings.clone(),
            graph: Arc::new(graph),
        })
    }
}

/// A pipeline under construction: its name (which names its checkpoints), settings and sources.
pub struct Pipeline {
    b: Shared,
}

impl Pipeline {
    pub fn new(name: impl Into<String>) -> Pipeline {
        Pipeline {
            b: Rc::new(RefCell::new(Builder {
                settings: Settings {
                    name: name.into(),
                    out_of_orderness_ms: 0,
                    idle_timeout_ms: 5_000,
                    checkpoint_interval_ms: 1_000,
                    checkpoint_max_pending_bytes: 16 << 20,
                    checkpoint_fsync: true,
                    parallelism: None,
                    max_parallelism: DEFAULT_MAX_PARALLELISM,
                    state_backend: crate::keyed_state::BackendKind::Memory,
                    state_memory_budget: crate::keyed_state::DEFAULT_MEMORY_BUDGET,
                },
                nodes: Vec::new(),
                sources: Vec::new(),
                outputs: Vec::new(),
                error: None,
            })),
        }
    }

    fn set(self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.b.borrow_mut().settings);
        self
    }

    /// How often state, offsets and outputs are committed (default 1 s). Outputs become visible at commits.
    pub fn checkpoint_interval(self, d: Duration) -> Self {
        self.set(|s| s.checkpoint_interval_ms = d.as_millis().clamp(1, 3_600_000) as i64)
    }

    /// Whether checkpoints are fsynced (default true; see [`Settings::checkpoint_fsync`]).
    pub fn checkpoint_fsync(self, fsync: bool) -> Self {
        self.set(|s| s.checkpoint_fsync = fsync)
    }

    /// How long a caught-up partition waits before it stops holding the watermark back (default 5 s).
    pub fn idle_timeout(self, d: Duration) -> Self {
        self.set(|s| s.idle_timeout_ms = d.as_millis().min(i64::MAX as u128) as i64)
    }

    /// How far behind the largest event time seen the watermark stays (default 0).
    pub fn out_of_orderness(self, d: Duration) -> Self {
        self.set(|s| s.out_of_orderness_ms = d.as_millis().min(i64::MAX as u128) as i64)
    }

    /// How many tasks run the pipeline (default: the largest source partition count). It may change between
    /// runs: keyed state moves with its key groups.
    pub fn parallelism(self, n: usize) -> Self {
        self.set(|s| s.parallelism = Some(n.max(1)))
    }

    /// How many key groups keyed state is split into (default 128, at most 32768). It cannot change while
    /// the pipeline has state.
    pub fn max_parallelism(self, n: usize) -> Self {
        self.set(|s| s.max_parallelism = n.clamp(1, crate::keygroup::MAX_KEY_GROUPS))
    }

    /// Where keyed state lives: in memory (the default) or on disk, with at most
    /// [`Pipeline::state_memory_budget`] of it resident. Checkpoints are incremental with either.
    pub fn state_backend(self, kind: crate::keyed_state::BackendKind) -> Self {
        self.set(|s| s.state_backend = kind)
    }

    /// The memory budget of the disk state backend (default 256 MiB, at least 1 MiB).
    pub fn state_memory_budget(self, bytes: usize) -> Self {
        self.set(|s| s.state_memory_budget = bytes.max(1 << 20))
    }

    /// Reads `topic`; event time is the record timestamp unless [`Stream::event_time`] says otherwise.
    pub fn source(&self, topic: impl Into<String>) -> Stream<Message> {
        self.source_with_partitions(topic, None)
    }

    /// Reads `topic`, creating it with `partitions` partitions if it is missing.
    pub fn source_with_partitions(
        &self,
        topic: impl Into<String>,
        partitions: Option<i32>,
    ) -> Stream<Message> {
        let node = add_source(&self.b, topic.into(), partitions, false);
        Stream::at(&self.b, node)
    }

    /// Reads `topic` (usually compacted) as a table: the latest value per record key, a tombstone (null
    /// value) deleting it. Records without a key are skipped.
    pub fn table(&self, topic: impl Into<String>) -> Table<Bytes, Message> {
        self.table_with_partitions(topic, None)
    }

    /// Like [`Pipeline::table`], creating the topic with `partitions` partitions if it is missing.
    pub fn table_with_partitions(
        &self,
        topic: impl Into<String>,
        partitions: Option<i32>,
    ) -> Table<Bytes, Message> {
        let node = add_source(&self.b, topic.into(), partitions, true);
        let s: Stream<Message> = Stream::at(&self.b, node);
        let changes = s.flat_map(|m: Message| {
            let key = m.key.clone()?;
            let value = m.value.is_some().then_some(m);
            Some((key, value))
        });
        Table {
            b: changes.b,
            node: changes.node,
            _t: PhantomData,
        }
    }

    /// Builds the graph made so far (every sink added with `to` or `sink`).
    pub fn build(&self) -> Result<Job> {
        self.b.borrow().build()
    }
}

fn add_source(b: &Shared, name: String, partitions: Option<i32>, table: bool) -> usize {
    let mut g = b.borrow_mut();
    let s = g.sources.len();
    let detail = format!("{} {name}", if table { "table" } else { "source" });
    let factory: NodeFactory =
        Arc::new(|_: &NodeInit<'_>| Box::new(SourceNode::<Message>::default()));
    let node = g.add("source", detail, Vec::new(), false, factory);
    g.nodes[node].source = Some(s);
    g.sources.push(SourceSpec {
        topic: TopicSpec {
            name,
            partitions,
            cluster: None,
        },
        event_time: None,
        node,
        table,
        start: StartAt::Earliest,
        end: EndAt::Unbounded,
    });
    node
}

/// Applies `f` to the source a handle reads: a stream's own source node, or the source under a table read
/// from a topic (its source and the step that turns records into changes).
fn with_source(b: &Shared, node: usize, table: bool, what: &str, f: impl FnOnce(&mut SourceSpec)) {
    let mut g = b.borrow_mut();
    let source = if table {
        g.nodes[node]
            .inputs
            .first()
            .and_then(|e| g.nodes[e.from].source)
            .filter(|s| g.sources[*s].table)
    } else {
        g.nodes[node].source
    };
    match source {
        Some(s) => f(&mut g.sources[s]),
        None if table => g.fail(format!(
            "{what} applies to a table read from a topic, right after table()"
        )),
        None => g.fail(format!(
            "{what} applies to a source stream, right after source()"
        )),
    }
}

fn same<T>(t: T) -> T {
    t
}

/// Adds a node running one operator chain per task, fed by forward edges from `inputs`.
fn forward_node<I, O>(
    b: &Shared,
    kind: &str,
    detail: String,
    inputs: &[usize],
    make: impl Fn(&str) -> Box<dyn Stage<I, Out = O>> + Send + Sync + 'static,
) -> usize
where
    I: Clone + Send + 'static,
    O: Clone + Send + 'static,
{
    let ports = inputs.len();
    let factory: NodeFactory = Arc::new(move |init: &NodeInit<'_>| {
        let ports: Vec<Box<dyn Port<I>>> = (0..ports)
            .map(|_| Box::new(ForwardPort::<I, I>::new(same::<I>)) as Box<dyn Port<I>>)
            .collect();
        Box::new(ForwardNode::new(make(init.id), ports, init))
    });
    let edges = inputs
        .iter()
        .map(|&from| Edge {
            from,
            exchange: None,
        })
        .collect();
    b.borrow_mut().add(kind, detail, edges, false, factory)
}

/// The key group of a keyed element.
fn key_group<K: Key, T>(e: &(K, T), g: &KeyGroups) -> u16 {
    g.group_of(&e.0.key_bytes())
}

/// The exchange of `(K, T)` elements by key.
fn exchange<K: Key, T: Send + 'static>() -> Arc<dyn Exchange> {
    Arc::new(KeyExchange::<(K, T)>::new(key_group::<K, T>))
}

/// Adds a node with one operator instance per key group, fed by `inputs` (node, exchange) through `ports`.
fn keyed_node_with_ports<I, O>(
    b: &Shared,
    kind: &str,
    detail: String,
    inputs: Vec<(usize, Arc<dyn Exchange>)>,
    ports: impl Fn() -> Vec<Box<dyn Port<I>>> + Send + Sync + 'static,
    make: impl Fn(&str) -> Box<dyn Stage<I, Out = O>> + Send + Sync + 'static,
) -> usize
where
    I: 'static,
    O: Clone + Send + 'static,
{
    let make = Arc::new(make);
    let factory: NodeFactory = Arc::new(move |init: &NodeInit<'_>| {
        let id = init.id.to_string();
        let make = make.clone();
        Box::new(KeyedNode::new(Box::new(move || make(&id)), ports(), init))
    });
    let edges = inputs
        .into_iter()
        .map(|(from, x)| Edge {
            from,
            exchange: Some(x),
        })
        .collect();
    b.borrow_mut().add(kind, detail, edges, true, factory)
}

/// A keyed node over one keyed input of `(K, T)`.
fn keyed_node<K: Key, T: Clone + Send + 'static, O: Clone + Send + 'static>(
    b: &Shared,
    kind: &str,
    detail: String,
    input: usize,
    make: impl Fn(&str) -> Box<dyn Stage<(K, T), Out = O>> + Send + Sync + 'static,
) -> usize {
    keyed_node_with_ports(
        b,
        kind,
        detail,
        vec![(input, exchange::<K, T>())],
        || vec![Box::new(KeyedPort::<(K, T), (K, T)>::new(same::<(K, T)>)) as Box<dyn Port<(K, T)>>],
        make,
    )
}

/// A stream of `T`: what a source or a step emits. Cloning the handle branches the stream.
pub struct Stream<T> {
    b: Shared,
    node: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            b: self.b.clone(),
            node: self.node,
            _t: PhantomData,
        }
    }
}

impl<T: Clone + Send + 'static> Stream<T> {
    fn at(b: &Shared, node: usize) -> Self {
        Stream {
            b: b.clone(),
            node,
            _t: PhantomData,
        }
    }

    fn then<U: Clone + Send + 'static>(
        self,
        kind: &str,
        detail: String,
        make: impl Fn(&str) -> Box<dyn Stage<T, Out = U>> + Send + Sync + 'static,
    ) -> Stream<U> {
        let node = forward_node(&self.b, kind, detail, &[self.node], make);
        Stream::at(&self.b, node)
    }

    /// One element out per element in.
    pub fn map<U: Clone + Send + 'static>(
        self,
        f: impl Fn(T) -> U + Send + Sync + Clone + 'static,
    ) -> Stream<U> {
        self.then("map", "map".into(), move |id| {
            Box::new(Named::new(id, Map(f.clone())))
        })
    }

    /// Keeps the elements `f` accepts.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + Clone + 'static) -> Stream<T> {
        self.then("filter", "filter".into(), move |id| {
            Box::new(Named::new(id, Filter(f.clone())))
        })
    }

    /// Zero or more elements out per element in.
    pub fn flat_map<U: Clone + Send + 'static, I: IntoIterator<Item = U> + 'static>(
        self,
        f: impl Fn(T) -> I + Send + Sync + Clone + 'static,
    ) -> Stream<U> {
        self.then("flat_map", "flat_map".into(), move |id| {
            Box::new(Named::new(id, FlatMap(f.clone())))
        })
    }

    /// A custom operator, made fresh by `make` for every task.
    pub fn process<O>(self, make: impl Fn() -> O + Send + Sync + 'static) -> Stream<O::Out>
    where
        O: Operator<T> + 'static,
        O::Out: Clone + Send + 'static,
    {
        self.then("process", "custom operator".into(), move |id| {
            Box::new(Named::new(id, make()))
        })
    }

    /// Splits the stream by `f`: the elements it accepts, and the others.
    pub fn split(
        self,
        f: impl Fn(&T) -> bool + Send + Sync + Clone + 'static,
    ) -> (Stream<T>, Stream<T>) {
        let g = f.clone();
        let yes = self.clone().filter(f);
        let no = self.filter(move |t| !g(t));
        (yes, no)
    }

    /// The elements of both streams, as they come.
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        self.union_all(vec![other])
    }

    /// The elements of this stream and of every one of `others`.
    pub fn union_all(self, others: Vec<Stream<T>>) -> Stream<T> {
        let mut inputs = vec![self.node];
        inputs.extend(others.iter().map(|s| s.node));
        let node = forward_node(&self.b, "union", "union".into(), &inputs, |_| {
            Box::new(Identity) as Box<dyn Stage<T, Out = T>>
        });
        Stream::at(&self.b, node)
    }

    /// Sends each element to the task owning its key, where windows, joins and keyed operators keep per-key
    /// state.
    pub fn key_by<K: Key>(
        self,
        f: impl Fn(&T) -> K + Send + Sync + Clone + 'static,
    ) -> KeyedStream<K, T> {
        let keyed = self.then("key_by", "key_by".into(), move |id| {
            let f = f.clone();
            Box::new(Named::new(id, Map(move |t: T| (f(&t), t))))
        });
        KeyedStream {
            b: keyed.b,
            node: keyed.node,
            _t: PhantomData,
        }
    }

    /// Writes every element to `topic` as the record `f` makes of it, and builds the pipeline (every sink
    /// added so far included).
    pub fn sink(
        self,
        topic: impl Into<String>,
        f: impl Fn(T) -> OutRecord + Send + Sync + 'static,
    ) -> Result<Job> {
        self.sink_with_partitions(topic, None, f)
    }

    /// Like `sink`, creating the topic with `partitions` partitions if it is missing.
    pub fn sink_with_partitions(
        self,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(T) -> OutRecord + Send + Sync + 'static,
    ) -> Result<Job> {
        let b = self.b.clone();
        self.to_with_partitions(topic, partitions, f);
        let job = b.borrow().build();
        job
    }

    /// Writes every element to `topic` (one more sink; build with [`Pipeline::build`] or a later `sink`).
    pub fn to(&self, topic: impl Into<String>, f: impl Fn(T) -> OutRecord + Send + Sync + 'static) {
        self.to_with_partitions(topic, None, f)
    }

    /// Like `to`, creating the topic with `partitions` partitions if it is missing.
    pub fn to_with_partitions(
        &self,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(T) -> OutRecord + Send + Sync + 'static,
    ) {
        self.to_cluster(None, topic, partitions, f)
    }

    /// Like `to_with_partitions`, on the cluster at `bootstrap` (its `bootstrap.servers`; None: this
    /// broker). The remote topic is created when missing; outputs reach it once their checkpoint commits,
    /// written by an idempotent producer of that cluster, so a crash neither loses nor repeats them.
    pub fn to_cluster(
        &self,
        bootstrap: Option<String>,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(T) -> OutRecord + Send + Sync + 'static,
    ) {
        let cluster = bootstrap;
        let name = topic.into();
        let f: Arc<dyn Fn(T) -> OutRecord + Send + Sync> = Arc::new(f);
        let factory: NodeFactory =
            Arc::new(move |init: &NodeInit<'_>| Box::new(SinkNode::new(f.clone(), init)));
        let mut g = self.b.borrow_mut();
        let out = g.output(
            TopicSpec {
                name: name.clone(),
                partitions,
                cluster,
            },
            false,
        );
        let edges = vec![Edge {
            from: self.node,
            exchange: None,
        }];
        let detail = match &g.outputs[out].topic.cluster {
            Some(c) => format!("sink {name} at {c}"),
            None => format!("sink {name}"),
        };
        let node = g.add("sink", detail, edges, false, factory);
        g.nodes[node].sink = Some(out);
    }

    /// Gives the step just added a stable id of your choosing (its state is found by it after a restart even
    /// if steps before it change).
    pub fn uid(self, uid: &str) -> Self {
        self.b.borrow_mut().nodes[self.node].id = uid.to_string();
        self
    }

    /// Event time from the source record (None: the record's timestamp). Applies to a source stream, right
    /// after `source`.
    pub fn event_time(self, f: impl Fn(&Message) -> Option<i64> + Send + Sync + 'static) -> Self {
        let f: EventTimeFn = Arc::new(f);
        with_source(&self.b, self.node, false, "event_time", |s| {
            s.event_time = Some(f)
        });
        self
    }

    /// Where the source starts reading when the pipeline has no checkpoint (default: the log start).
    pub fn start_at(self, start: StartAt) -> Self {
        with_source(&self.b, self.node, false, "start_at", |s| s.start = start);
        self
    }

    /// Makes the source finite: it ends at `end`. A pipeline whose sources are all bounded is a batch job:
    /// when every source has been read to its end the watermark moves to the end of time (every window and
    /// event-time timer fires), a final checkpoint commits, and the pipeline stops.
    pub fn bounded(self, end: EndAt) -> Self {
        with_source(&self.b, self.node, false, "bounded", |s| s.end = end);
        self
    }

    /// Reads the source's topic from the cluster at `bootstrap` (its `bootstrap.servers`) instead of this
    /// broker: committed records only (read_committed), with its offsets in the pipeline's checkpoints.
    pub fn from_cluster(self, bootstrap: impl Into<String>) -> Self {
        let b = bootstrap.into();
        let mut node = None;
        with_source(&self.b, self.node, false, "from_cluster", |s| {
            s.topic.cluster = Some(b.clone());
            node = Some(s.node);
        });
        if let Some(n) = node {
            // `pipeline check` shows where the topic is read from.
            self.b.borrow_mut().nodes[n].detail += &format!(" at {b}");
        }
        self
    }
}

/// A stream after key_by: elements `(key, element)`, sent to the task that owns the key.
pub struct KeyedStream<K, T> {
    b: Shared,
    node: usize,
    _t: PhantomData<fn() -> (K, T)>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        KeyedStream {
            b: self.b.clone(),
            node: self.node,
            _t: PhantomData,
        }
    }
}

impl<K: Key, T: Clone + Send + 'static> KeyedStream<K, T> {
    pub fn window(self, window: Window) -> WindowedStream<K, T> {
        WindowedStream {
            b: self.b,
            node: self.node,
            window,
            lateness_ms: 0,
            late: None,
        }
    }

    /// A custom keyed operator, running in the task that owns each key (one instance per key group).
    pub fn process<O>(self, make: impl Fn() -> O + Send + Sync + 'static) -> Stream<O::Out>
    where
        O: Operator<(K, T)> + 'static,
        O::Out: Clone + Send + 'static,
    {
        let node = keyed_node(
            &self.b,
            "process",
            "custom keyed operator".into(),
            self.node,
            move |id| Box::new(Named::new(id, make())),
        );
        Stream::at(&self.b, node)
    }

    /// Aggregates each key's elements into a table (no window): every element emits the key's new value.
    pub fn aggregate<A: Aggregator<T>>(self, agg: A) -> Table<K, A::Out>
    where
        A::Out: Clone + 'static,
    {
        let agg = Arc::new(agg);
        let node = keyed_node(
            &self.b,
            "aggregate",
            "aggregate into a table".into(),
            self.node,
            move |id| Box::new(Named::new(id, TableAggregate::<K, T, A>::new(agg.clone()))),
        );
        Table {
            b: self.b,
            node,
            _t: PhantomData,
        }
    }

    /// Combines each key's elements with `f` into a table (no window).
    pub fn reduce(self, f: impl Fn(&T, &T) -> T + Send + Sync + 'static) -> Table<K, T>
    where
        T: crate::state::StateCodec,
    {
        let t = self.aggregate(crate::aggregate::Reduce(f));
        // Reduce emits Some after every element: the Option of its output is always Some.
        let s = t
            .to_stream()
            .flat_map(|(k, v): (K, Option<Option<T>>)| v.flatten().map(|v| (k, Some(v))));
        Table {
            b: s.b,
            node: s.node,
            _t: PhantomData,
        }
    }

    /// Gives the key_by step a stable id of your choosing.
    pub fn uid(self, uid: &str) -> Self {
        self.b.borrow_mut().nodes[self.node].id = uid.to_string();
        self
    }

    /// Writes the stream back out of the keyed form.
    pub fn to_stream(self) -> Stream<(K, T)> {
        Stream::at(&self.b, self.node)
    }
}

/// A keyed node over two keyed inputs, `(K, A)` on port 0 and `(K, B)` on port 1, as an [`Either`].
fn two_input_node<K, A, B, O>(
    b: &Shared,
    kind: &str,
    detail: String,
    left: usize,
    right: usize,
    make: impl Fn(&str) -> Box<dyn Stage<Either<(K, A), (K, B)>, Out = O>> + Send + Sync + 'static,
) -> usize
where
    K: Key,
    A: Clone + Send + 'static,
    B: Clone + Send + 'static,
    O: Clone + Send + 'static,
{
    type In<K, A, B> = Either<(K, A), (K, B)>;
    keyed_node_with_ports(
        b,
        kind,
        detail,
        vec![(left, exchange::<K, A>()), (right, exchange::<K, B>())],
        || {
            vec![
                Box::new(KeyedPort::<(K, A), In<K, A, B>>::new(Either::Left))
                    as Box<dyn Port<In<K, A, B>>>,
                Box::new(KeyedPort::<(K, B), In<K, A, B>>::new(Either::Right)),
            ]
        },
        make,
    )
}

/// Whether two handles belong to one pipeline (joins cannot span pipelines).
fn same_pipeline(a: &Shared, b: &Shared) -> bool {
    let same = Rc::ptr_eq(a, b);
    if !same {
        a.borrow_mut()
            .fail("a join's inputs must come from the same Pipeline");
    }
    same
}

impl<K: Key, T: Clone + Send + StateCodec + 'static> KeyedStream<K, T> {
    /// Joins each element with the row of `table` for its key that was current at the element's event time
    /// (the row with the largest time at or before it; a tombstone there means none), as Flink's temporal
    /// join `FOR SYSTEM_TIME AS OF`. An element is joined once the table's own watermark passes it (at once
    /// when the table is ahead), or the step's watermark does (when the table's source is idle), so a row
    /// that arrives a little after an element but is older than it is still found. `kind`: `Inner` drops
    /// elements without a row, `Left` gives `f` None.
    pub fn join_table<V, O>(
        self,
        table: &Table<K, V>,
        kind: JoinKind,
        f: impl Fn(&K, T, Option<&V>) -> O + Send + Sync + 'static,
    ) -> Stream<O>
    where
        V: StateCodec + Clone + Send + 'static,
        O: Clone + Send + 'static,
    {
        same_pipeline(&self.b, &table.b);
        let f: TemporalJoinFn<K, T, V, O> = Arc::new(f);
        let detail = format!("{kind:?} join with the table as of each element's time");
        let node = two_input_node(&self.b, "join", detail, self.node, table.node, move |id| {
            Box::new(Named::new(id, TemporalJoin::new(kind, f.clone())))
        });
        Stream::at(&self.b, node)
    }

    /// Joins elements of this stream (`a`) and `other` (`b`) with the same key when
    /// `a.ts + lower <= b.ts <= a.ts + upper` (milliseconds), as Flink's interval join. Pairs are emitted as
    /// soon as both are there; state is dropped once the watermark passes the interval. Outer kinds emit
    /// unmatched elements when their interval has passed.
    pub fn interval_join<R, O>(
        self,
        other: &KeyedStream<K, R>,
        kind: JoinKind,
        lower: Duration,
        upper: Duration,
        f: impl Fn(&K, Option<&T>, Option<&R>) -> O + Send + Sync + 'static,
    ) -> Stream<O>
    where
        R: StateCodec + Clone + Send + 'static,
        O: Clone + Send + 'static,
    {
        let lo = lower.as_millis().min(i64::MAX as u128) as i64;
        let hi = upper.as_millis().min(i64::MAX as u128) as i64;
        self.interval_join_ms(other, kind, lo, hi, f)
    }

    /// [`KeyedStream::interval_join`] with bounds in signed milliseconds (`lower` may be negative: `b` may
    /// come before `a`).
    pub fn interval_join_ms<R, O>(
        self,
        other: &KeyedStream<K, R>,
        kind: JoinKind,
        lower: i64,
        upper: i64,
        f: impl Fn(&K, Option<&T>, Option<&R>) -> O + Send + Sync + 'static,
    ) -> Stream<O>
    where
        R: StateCodec + Clone + Send + 'static,
        O: Clone + Send + 'static,
    {
        same_pipeline(&self.b, &other.b);
        let (lower, upper) = if lower <= upper {
            (lower, upper)
        } else {
            self.b.borrow_mut().fail(format!(
                "an interval join needs lower <= upper, got {lower} and {upper} ms"
            ));
            (0, 0)
        };
        let f: IntervalJoinFn<K, T, R, O> = Arc::new(f);
        let detail =
            format!("{kind:?} interval join, b.ts in [a.ts {lower:+} ms, a.ts {upper:+} ms]");
        let node = two_input_node(
            &self.b,
            "interval_join",
            detail,
            self.node,
            other.node,
            move |id| {
                match IntervalJoin::new(kind, lower, upper, f.clone()) {
                    Ok(j) => Box::new(Named::new(id, j)) as Box<dyn Stage<_, Out = O>>,
                    // Unreachable: the bounds were checked above. An empty operator rather than a panic.
                    Err(_) => Box::new(Named::new(
                        id,
                        FlatMap(|_: Either<(K, T), (K, R)>| None::<O>),
                    )) as Box<dyn Stage<_, Out = _>>,
                }
            },
        );
        Stream::at(&self.b, node)
    }

    /// Joins the elements of this stream and `other` that have the same key and fall in the same (tumbling
    /// or hopping) window; each window's pairs are emitted when it closes, with the window's bounds.
    pub fn window_join<R, O>(
        self,
        other: &KeyedStream<K, R>,
        kind: JoinKind,
        window: Window,
        f: impl Fn(&K, Option<&T>, Option<&R>, i64, i64) -> O + Send + Sync + 'static,
    ) -> Stream<O>
    where
        R: StateCodec + Clone + Send + 'static,
        O: Clone + Send + 'static,
    {
        same_pipeline(&self.b, &other.b);
        let f: WindowJoinFn<K, T, R, O> = Arc::new(f);
        let valid = match WindowJoin::<K, T, R, O>::new(kind, window, f.clone()) {
            Ok(_) => true,
            Err(e) => {
                self.b.borrow_mut().fail(e.to_string());
                false
            }
        };
        let detail = format!("{kind:?} window join, window {window:?}");
        let node = two_input_node(
            &self.b,
            "window_join",
            detail,
            self.node,
            other.node,
            move |id| {
                match WindowJoin::new(kind, window, f.clone()) {
                    Ok(j) if valid => Box::new(Named::new(id, j)) as Box<dyn Stage<_, Out = O>>,
                    // Unreachable: a window that does not validate fails the build above.
                    _ => Box::new(Named::new(
                        id,
                        FlatMap(|_: Either<(K, T), (K, R)>| None::<O>),
                    )) as Box<dyn Stage<_, Out = _>>,
                }
            },
        );
        Stream::at(&self.b, node)
    }
}

/// A keyed stream with its window, before its aggregation.
pub struct WindowedStream<K, T> {
    b: Shared,
    node: usize,
    window: Window,
    lateness_ms: i64,
    late: Option<(usize, LateFn<K, T>)>,
}

impl<K: Key, T: Clone + Send + 'static> WindowedStream<K, T> {
    /// How long after a window's end its elements are still accepted (default 0). The window is emitted once,
    /// when the watermark passes end + lateness.
    pub fn allowed_lateness(mut self, d: Duration) -> Self {
        self.lateness_ms = d.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Late elements go to `topic` as the record `f` makes of them (they are never dropped silently).
    pub fn late_to(
        mut self,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(&K, &T, i64) -> OutRecord + Send + Sync + 'static,
    ) -> Self {
        let out = self.b.borrow_mut().output(
            TopicSpec {
                name: topic.into(),
                partitions,
                cluster: None,
            },
            true,
        );
        self.late = Some((out, Arc::new(f)));
        self
    }

    /// Aggregates each (key, window) with `agg`.
    pub fn aggregate<A: Aggregator<T>>(self, agg: A) -> Stream<WindowResult<K, A::Out>>
    where
        A::Out: Clone + 'static,
    {
        let agg = Arc::new(agg);
        let window = self.window;
        let lateness = self.lateness_ms;
        if let Err(e) = window.validate() {
            self.b.borrow_mut().fail(e);
        }
        let (late_out, late) = match self.late {
            Some(l) => (Some(l.0), l.1),
            None => {
                self.b.borrow_mut().fail(
                    "a windowed stream needs a late-record topic (late_to / late_topic): late records are \
                     never dropped silently",
                );
                let f: LateFn<K, T> = Arc::new(|_: &K, _: &T, ts| OutRecord::new(None, None, ts));
                (None, f)
            }
        };
        let detail = format!("window {window:?}, allowed lateness {lateness} ms");
        let node = keyed_node(&self.b, "window", detail, self.node, move |id| {
            Box::new(Named::new(
                id,
                WindowAggregate::new(window, lateness, agg.clone(), late.clone()),
            ))
        });
        self.b.borrow_mut().nodes[node].late = late_out;
        Stream::at(&self.b, node)
    }
}

impl<K: Key, T: Clone + Into<OutRecord> + Send + 'static> WindowedStream<K, T> {
    /// Late elements go to `topic` unchanged.
    pub fn late_topic(self, topic: impl Into<String>) -> Self {
        self.late_to(topic, None, |_, t: &T, _| t.clone().into())
    }
}

/// A table: a changelog of `(key, Some(value))` updates and `(key, None)` deletions, partitioned by key.
pub struct Table<K, V> {
    b: Shared,
    node: usize,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table {
            b: self.b.clone(),
            node: self.node,
            _t: PhantomData,
        }
    }
}

impl<K: Key, V: Clone + Send + 'static> Table<K, V> {
    /// Event time of the table's records (None: the record timestamp), for a table read from a topic.
    pub fn event_time(self, f: impl Fn(&Message) -> Option<i64> + Send + Sync + 'static) -> Self {
        let f: EventTimeFn = Arc::new(f);
        with_source(&self.b, self.node, true, "event_time", |s| {
            s.event_time = Some(f)
        });
        self
    }

    /// Where the table's topic starts being read (default: the log start).
    pub fn start_at(self, start: StartAt) -> Self {
        with_source(&self.b, self.node, true, "start_at", |s| s.start = start);
        self
    }

    /// Makes the table's topic finite (see [`Stream::bounded`]).
    pub fn bounded(self, end: EndAt) -> Self {
        with_source(&self.b, self.node, true, "bounded", |s| s.end = end);
        self
    }

    /// Reads the table's topic from the cluster at `bootstrap` (see [`Stream::from_cluster`]).
    pub fn from_cluster(self, bootstrap: impl Into<String>) -> Self {
        let b = bootstrap.into();
        let mut node = None;
        with_source(&self.b, self.node, true, "from_cluster", |s| {
            s.topic.cluster = Some(b.clone());
            node = Some(s.node);
        });
        if let Some(n) = node {
            // `pipeline check` shows where the topic is read from.
            self.b.borrow_mut().nodes[n].detail += &format!(" at {b}");
        }
        self
    }

    /// Gives the step that made this table (an aggregate, a join) a stable id of your choosing: its state
    /// is found by it after a restart.
    pub fn uid(self, uid: &str) -> Self {
        self.b.borrow_mut().nodes[self.node].id = uid.to_string();
        self
    }

    /// The table's changes as a stream.
    pub fn to_stream(self) -> Stream<(K, Option<V>)> {
        Stream::at(&self.b, self.node)
    }

    /// A table of `f` applied to every value (deletions stay deletions).
    pub fn map_values<U: Clone + Send + 'static>(
        self,
        f: impl Fn(V) -> U + Send + Sync + Clone + 'static,
    ) -> Table<K, U> {
        let s = self
            .to_stream()
            .map(move |(k, v): (K, Option<V>)| (k, v.map(&f)));
        Table {
            b: s.b,
            node: s.node,
            _t: PhantomData,
        }
    }
}

impl<K: Key, A: Clone + Send + StateCodec + 'static> Table<K, A> {
    /// Joins two tables by key, emitting the joined table's changes (as Kafka Streams' KTable-KTable join):
    /// after every change of either side the key's joined value, or a deletion when it had one and no longer
    /// has. `Inner`: both sides present; `Left`: this side present; `Full`: either.
    pub fn join<B, O>(
        self,
        other: &Table<K, B>,
        kind: JoinKind,
        f: impl Fn(&K, Option<&A>, Option<&B>) -> O + Send + Sync + 'static,
    ) -> Table<K, O>
    where
        B: StateCodec + Clone + Send + 'static,
        O: Clone + Send + 'static,
    {
        same_pipeline(&self.b, &other.b);
        let f: TableJoinFn<K, A, B, O> = Arc::new(f);
        let detail = format!("{kind:?} table-table join");
        let node = two_input_node::<K, Option<A>, Option<B>, (K, Option<O>)>(
            &self.b,
            "table_join",
            detail,
            self.node,
            other.node,
            move |id| Box::new(Named::new(id, TableJoin::new(kind, f.clone()))),
        );
        Table {
            b: self.b,
            node,
            _t: PhantomData,
        }
    }
}

/// A complete pipeline, ready to run in the broker ([`crate::runtime`]) or in the
/// [`crate::driver::TestDriver`].
#[derive(Clone)]
pub struct Job {
    pub(crate) settings: Settings,
    pub(crate) graph: Arc<GraphSpec>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("settings", &self.settings)
            .field("sources", &self.sources())
            .field("sinks", &self.sinks())
            .finish_non_exhaustive()
    }
}

impl Job {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn graph(&self) -> &GraphSpec {
        &self.graph
    }

    /// The topics the pipeline reads, in source order.
    pub fn sources(&self) -> Vec<&TopicSpec> {
        self.graph.sources.iter().map(|s| &s.topic).collect()
    }

    /// The topics the pipeline's sinks write.
    pub fn sinks(&self) -> Vec<&TopicSpec> {
        self.graph
            .outputs
            .iter()
            .filter(|o| !o.late)
            .map(|o| &o.topic)
            .collect()
    }

    /// The late-record topics.
    pub fn late_topics(&self) -> Vec<&TopicSpec> {
        self.graph
            .outputs
            .iter()
            .filter(|o| o.late)
            .map(|o| &o.topic)
            .collect()
    }

    /// The key groups and task count for sources of `partitions` partitions each.
    pub fn key_groups(&self, partitions: &[usize]) -> KeyGroups {
        let p = self
            .settings
            .parallelism
            .unwrap_or_else(|| partitions.iter().copied().max().unwrap_or(1));
        KeyGroups::new(p, self.settings.max_parallelism)
    }

    /// The graph and settings: what `millrace pipeline check` prints.
    pub fn plan(&self) -> String {
        let s = &self.settings;
        let mut out = format!("pipeline {}\n", s.name);
        let parallelism = s.parallelism.map_or_else(
            || "one per partition of the largest source".to_string(),
            |p| p.to_string(),
        );
        let backend = match s.state_backend {
            crate::keyed_state::BackendKind::Memory => "in memory".to_string(),
            crate::keyed_state::BackendKind::Disk => format!(
                "on disk, at most {} MiB resident",
                s.state_memory_budget >> 20
            ),
        };
        out.push_str(&format!(
            "  tasks: {parallelism}; keyed state in {} key groups, {backend}\n",
            s.max_parallelism
        ));
        for src in &self.graph.sources {
            out.push_str(&format!(
                "  {} {}{}\n",
                if src.table { "table:" } else { "source:" },
                src.topic.name,
                src.topic.partitions.map_or(String::new(), |p| format!(
                    " ({p} partitions, created if missing)"
                ))
            ));
        }
        out.push_str(&format!(
            "  graph ([stage] id: step <- inputs):\n{}",
            self.graph.describe()
        ));
        for o in &self.graph.outputs {
            out.push_str(&format!(
                "  {} {}\n",
                if o.late { "late records:" } else { "sink:" },
                o.topic.name
            ));
        }
        out.push_str(&format!(
            "  watermark: max event time - {} ms per partition, minimum over the inputs of each step; idle \
             after {} ms\n  checkpoint: every {} ms (exactly-once: outputs are committed with the checkpoint)\n",
            s.out_of_orderness_ms, s.idle_timeout_ms, s.checkpoint_interval_ms
        ));
        out
    }
}
