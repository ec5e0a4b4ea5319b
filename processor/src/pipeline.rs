//! The typed pipeline API, in the style of Flink's DataStream:
//!
//! ```no_run
//! use std::time::Duration;
//! use millrace_processor::{Count, Message, OutRecord, Pipeline, Window};
//!
//! let job = Pipeline::new("clicks_per_user")
//!     .source("clicks")
//!     .filter(|m: &Message| m.key.is_some())
//!     .key_by(|m: &Message| m.key.clone().unwrap_or_default())
//!     .window(Window::tumbling(Duration::from_secs(10)))
//!     .late_topic("clicks_per_user.late")
//!     .aggregate(Count)
//!     .map(|r| OutRecord::new(Some(r.key), Some(format!("{}", r.value).into()), r.window_end - 1))
//!     .sink("clicks_per_user", |r| r)
//!     .unwrap();
//! ```
//!
//! Every operator gets a stable id (`<position>.<kind>`, or the name given with `.uid(..)` right after it): its
//! state is found again by that id after a restart, so reordering steps of a running pipeline loses their state,
//! renaming one with `.uid` does not.
//!
//! A pipeline runs one task per partition of its source topic. Steps before `key_by` run in the task of the
//! partition they read; `key_by` sends each element to the task that owns its key (Kafka's default partitioner
//! over the task count), where windows and aggregations keep their state.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::Aggregator;
use crate::error::{Error, Result};
use crate::operator::{Chain, Identity, Named, Operator, Stage, TaskInfo};
use crate::ops::window::LateFn;
use crate::ops::{Filter, FlatMap, Map, WindowAggregate};
use crate::partitioner::partition_for;
use crate::record::{Message, OutRecord, WindowResult};
use crate::state::Key;
use crate::task::{EventTimeFn, OutputLayout, RouteFn, Task, TaskCore};
use crate::window::Window;

type Factory<I, O> = Arc<dyn Fn() -> Box<dyn Stage<I, Out = O>> + Send + Sync>;

/// A topic a pipeline writes, and the partition count to create it with if it is missing (None: the broker's
/// default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: Option<i32>,
}

/// Settings shared by every step of one pipeline.
#[derive(Clone)]
pub struct Settings {
    pub name: String,
    pub source: TopicSpec,
    pub event_time: Option<EventTimeFn>,
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
    pub late: Option<TopicSpec>,
    /// One line per step, for `millrace pipeline check`.
    pub plan: Vec<String>,
    error: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Settings {
    fn next_id(&mut self, kind: &str, detail: String) -> String {
        let id = format!("{}.{kind}", self.plan.len() + 1);
        self.plan.push(format!("{id}: {detail}"));
        id
    }

    fn rename_last(&mut self, uid: &str) -> Option<String> {
        let last = self.plan.last_mut()?;
        let (old, rest) = last.split_once(": ")?;
        let old = old.to_string();
        *last = format!("{uid}: {rest}");
        Some(old)
    }
}

/// The start of a pipeline: its name (which names its checkpoints) and settings.
pub struct Pipeline {
    settings: Settings,
}

impl Pipeline {
    pub fn new(name: impl Into<String>) -> Pipeline {
        Pipeline {
            settings: Settings {
                name: name.into(),
                source: TopicSpec {
                    name: String::new(),
                    partitions: None,
                },
                event_time: None,
                out_of_orderness_ms: 0,
                idle_timeout_ms: 5_000,
                checkpoint_interval_ms: 1_000,
                checkpoint_max_pending_bytes: 16 << 20,
                checkpoint_fsync: true,
                late: None,
                plan: Vec::new(),
                error: None,
            },
        }
    }

    /// How often state, offsets and outputs are committed (default 1 s). Outputs become visible at commits.
    pub fn checkpoint_interval(mut self, d: Duration) -> Self {
        self.settings.checkpoint_interval_ms = d.as_millis().clamp(1, 3_600_000) as i64;
        self
    }

    /// Whether checkpoints are fsynced (default true; see [`Settings::checkpoint_fsync`]).
    pub fn checkpoint_fsync(mut self, fsync: bool) -> Self {
        self.settings.checkpoint_fsync = fsync;
        self
    }

    /// How long a caught-up partition waits before it stops holding the watermark back (default 5 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.settings.idle_timeout_ms = d.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// How far behind the largest event time seen the watermark stays (default 0).
    pub fn out_of_orderness(mut self, d: Duration) -> Self {
        self.settings.out_of_orderness_ms = d.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Reads `topic`; event time is the record timestamp unless [`Stream::event_time`] says otherwise.
    pub fn source(self, topic: impl Into<String>) -> Stream<Message> {
        self.source_with_partitions(topic, None)
    }

    /// Reads `topic`, creating it with `partitions` partitions if it is missing.
    pub fn source_with_partitions(
        mut self,
        topic: impl Into<String>,
        partitions: Option<i32>,
    ) -> Stream<Message> {
        let name = topic.into();
        self.settings.plan.push(format!("source: topic {name}"));
        self.settings.source = TopicSpec { name, partitions };
        let identity: Factory<Message, Message> = Arc::new(|| Box::new(Identity));
        Stream {
            settings: self.settings,
            make: identity,
            last: None,
        }
    }
}

/// Appends operator `op` (made fresh for every task) to a chain.
fn then<I: 'static, T: 'static, U: 'static, S>(
    prev: Factory<I, T>,
    make: impl Fn() -> S + Send + Sync + 'static,
) -> Factory<I, U>
where
    S: Stage<T, Out = U> + 'static,
{
    Arc::new(move || {
        Box::new(Chain {
            first: prev(),
            second: make(),
        })
    })
}

/// Where `.uid()` renames the operator just added.
type Renamer = Arc<parking_lot::Mutex<String>>;

fn named<T, O: Operator<T>>(id: &Renamer, op: O) -> Named<O> {
    Named::new(id.lock().clone(), op)
}

macro_rules! stateless_steps {
    ($stream:ident [$($param:ident),*] [$($field:ident),*]) => {
        impl<$($param: Send + 'static,)* T: Send + 'static> $stream<$($param,)* T> {
            /// One element out per element in.
            pub fn map<U: Send + 'static>(
                mut self,
                f: impl Fn(T) -> U + Send + Sync + Clone + 'static,
            ) -> $stream<$($param,)* U> {
                let id: Renamer = Arc::new(parking_lot::Mutex::new(self.settings.next_id("map", "map".into())));
                let rid = id.clone();
                let make = then(self.make, move || named(&rid, Map(f.clone())));
                $stream { settings: self.settings, make, last: Some(id) $(, $field: self.$field)* }
            }

            /// Keeps the elements `f` accepts.
            pub fn filter(mut self, f: impl Fn(&T) -> bool + Send + Sync + Clone + 'static) -> Self {
                let id: Renamer = Arc::new(parking_lot::Mutex::new(self.settings.next_id("filter", "filter".into())));
                let rid = id.clone();
                let make = then(self.make, move || named(&rid, Filter(f.clone())));
                $stream { settings: self.settings, make, last: Some(id) $(, $field: self.$field)* }
            }

            /// Zero or more elements out per element in.
            pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U> + 'static>(
                mut self,
                f: impl Fn(T) -> I + Send + Sync + Clone + 'static,
            ) -> $stream<$($param,)* U> {
                let id: Renamer = Arc::new(parking_lot::Mutex::new(self.settings.next_id("flat_map", "flat_map".into())));
                let rid = id.clone();
                let make = then(self.make, move || named(&rid, FlatMap(f.clone())));
                $stream { settings: self.settings, make, last: Some(id) $(, $field: self.$field)* }
            }

            /// A custom operator, made fresh by `make` for every task.
            pub fn process<O>(mut self, make: impl Fn() -> O + Send + Sync + 'static) -> $stream<$($param,)* O::Out>
            where
                O: Operator<T> + 'static,
                O::Out: Send + 'static,
            {
                let id: Renamer = Arc::new(parking_lot::Mutex::new(self.settings.next_id("process", "custom operator".into())));
                let rid = id.clone();
                let chain = then(self.make, move || named(&rid, make()));
                $stream { settings: self.settings, make: chain, last: Some(id) $(, $field: self.$field)* }
            }

            /// Writes every element to `topic` as the record `f` makes of it.
            pub fn sink(
                self,
                topic: impl Into<String>,
                f: impl Fn(T) -> OutRecord + Send + Sync + Clone + 'static,
            ) -> Result<Job> {
                self.sink_with_partitions(topic, None, f)
            }

            /// Gives the operator just added a stable id of your choosing (its state is found by it after a
            /// restart even if steps before it change).
            pub fn uid(mut self, uid: &str) -> Self {
                if let Some(id) = &self.last {
                    self.settings.rename_last(uid);
                    *id.lock() = uid.to_string();
                }
                self
            }

            /// Event time from the source record (None: the record's timestamp). Applies at the source, before
            /// every step.
            pub fn event_time(mut self, f: impl Fn(&Message) -> Option<i64> + Send + Sync + 'static) -> Self {
                self.settings.event_time = Some(Arc::new(f));
                self
            }
        }
    };
}

/// A stream before any key_by: its steps run in the task of the partition they read.
pub struct Stream<T> {
    settings: Settings,
    make: Factory<Message, T>,
    last: Option<Renamer>,
}

stateless_steps!(Stream [] []);

impl<T: Send + 'static> Stream<T> {
    /// Sends each element to the task owning its key, where windows keep per-key state.
    pub fn key_by<K: Key>(
        mut self,
        f: impl Fn(&T) -> K + Send + Sync + Clone + 'static,
    ) -> KeyedStream<K, T> {
        let id = self.settings.next_id("key_by", "key_by".into());
        let rid: Renamer = Arc::new(parking_lot::Mutex::new(id));
        let make = then(self.make, move || {
            let f = f.clone();
            named(&rid, Map(move |t: T| (f(&t), t)))
        });
        KeyedStream {
            settings: self.settings,
            make,
        }
    }

    /// Like `sink`, creating the topic with `partitions` partitions if it is missing.
    pub fn sink_with_partitions(
        mut self,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(T) -> OutRecord + Send + Sync + Clone + 'static,
    ) -> Result<Job> {
        let topic = topic.into();
        let id = self.settings.next_id("sink", format!("topic {topic}"));
        let make = then(self.make, move || Named::new(id.clone(), Map(f.clone())));
        let keyed: Factory<OutRecord, OutRecord> = Arc::new(|| Box::new(Identity));
        Job::new(
            self.settings,
            TopicSpec {
                name: topic,
                partitions,
            },
            make,
            keyed,
            None,
        )
    }
}

/// A stream after key_by, before its window.
pub struct KeyedStream<K, T> {
    settings: Settings,
    make: Factory<Message, (K, T)>,
}

fn key_route<K: Key, T>() -> RouteFn<(K, T)> {
    Arc::new(|m: &(K, T), n| partition_for(&m.0.key_bytes(), n))
}

impl<K: Key, T: Send + 'static> KeyedStream<K, T> {
    pub fn window(self, window: Window) -> WindowedStream<K, T> {
        WindowedStream {
            settings: self.settings,
            make: self.make,
            window,
            lateness_ms: 0,
            late: None,
        }
    }

    /// A custom keyed operator, running in the task that owns each key.
    pub fn process<O>(
        mut self,
        make: impl Fn() -> O + Send + Sync + 'static,
    ) -> After<(K, T), O::Out>
    where
        O: Operator<(K, T)> + 'static,
        O::Out: Send + 'static,
    {
        let id: Renamer = Arc::new(parking_lot::Mutex::new(
            self.settings
                .next_id("process", "custom keyed operator".into()),
        ));
        let rid = id.clone();
        let start: Factory<(K, T), (K, T)> = Arc::new(|| Box::new(Identity));
        let keyed = then(start, move || named(&rid, make()));
        After {
            settings: self.settings,
            source: self.make,
            route: key_route::<K, T>(),
            make: keyed,
            last: Some(id),
        }
    }
}

/// A keyed stream with its window, before its aggregation.
pub struct WindowedStream<K, T> {
    settings: Settings,
    make: Factory<Message, (K, T)>,
    window: Window,
    lateness_ms: i64,
    late: Option<LateFn<K, T>>,
}

impl<K: Key, T: Send + 'static> WindowedStream<K, T> {
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
        self.settings.late = Some(TopicSpec {
            name: topic.into(),
            partitions,
        });
        self.late = Some(Arc::new(f));
        self
    }

    /// Aggregates each (key, window) with `agg`.
    pub fn aggregate<A: Aggregator<T>>(mut self, agg: A) -> After<(K, T), WindowResult<K, A::Out>>
    where
        A::Out: 'static,
    {
        let agg = Arc::new(agg);
        let window = self.window;
        let lateness = self.lateness_ms;
        if let Err(e) = window.validate() {
            self.settings.error.get_or_insert(e);
        }
        let late = match self.late {
            Some(l) => l,
            None => {
                self.settings.error.get_or_insert(
                    "a windowed stream needs a late-record topic (late_to / late_topic): late records are \
                     never dropped silently"
                        .into(),
                );
                Arc::new(|_: &K, _: &T, ts| OutRecord::new(None, None, ts))
            }
        };
        let late_name = self
            .settings
            .late
            .as_ref()
            .map_or(String::from("-"), |t| t.name.clone());
        let id = self.settings.next_id(
            "window",
            format!(
                "window {window:?}, allowed lateness {lateness} ms, late records to {late_name}"
            ),
        );
        let rid: Renamer = Arc::new(parking_lot::Mutex::new(id));
        let last = rid.clone();
        let start: Factory<(K, T), (K, T)> = Arc::new(|| Box::new(Identity));
        let keyed = then(start, move || {
            named(
                &rid,
                WindowAggregate::new(window, lateness, agg.clone(), late.clone()),
            )
        });
        After {
            settings: self.settings,
            source: self.make,
            route: key_route::<K, T>(),
            make: keyed,
            last: Some(last),
        }
    }
}

impl<K: Key, T: Clone + Into<OutRecord> + Send + 'static> WindowedStream<K, T> {
    /// Late elements go to `topic` unchanged.
    pub fn late_topic(self, topic: impl Into<String>) -> Self {
        self.late_to(topic, None, |_, t: &T, _| t.clone().into())
    }
}

/// A stream on the keyed side of a pipeline (after key_by and its window or keyed operator).
pub struct After<M, T> {
    settings: Settings,
    source: Factory<Message, M>,
    route: RouteFn<M>,
    make: Factory<M, T>,
    last: Option<Renamer>,
}

stateless_steps!(After [M] [source, route]);

impl<M: Send + 'static, T: Send + 'static> After<M, T> {
    /// Like `sink`, creating the topic with `partitions` partitions if it is missing.
    pub fn sink_with_partitions(
        mut self,
        topic: impl Into<String>,
        partitions: Option<i32>,
        f: impl Fn(T) -> OutRecord + Send + Sync + Clone + 'static,
    ) -> Result<Job> {
        let topic = topic.into();
        let id = self.settings.next_id("sink", format!("topic {topic}"));
        let make = then(self.make, move || Named::new(id.clone(), Map(f.clone())));
        Job::new(
            self.settings,
            TopicSpec {
                name: topic,
                partitions,
            },
            self.source,
            make,
            Some(self.route),
        )
    }
}

/// A complete pipeline, ready to run in the broker ([`crate::runtime`]) or in the
/// [`crate::driver::TestDriver`].
#[derive(Clone)]
pub struct Job {
    pub(crate) settings: Settings,
    pub(crate) sink: TopicSpec,
    pub(crate) make_task: Arc<dyn Fn(TaskInfo, OutputLayout) -> Box<dyn TaskCore> + Send + Sync>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("settings", &self.settings)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl Job {
    fn new<M: Send + 'static>(
        settings: Settings,
        sink: TopicSpec,
        source: Factory<Message, M>,
        keyed: Factory<M, OutRecord>,
        route: Option<RouteFn<M>>,
    ) -> Result<Job> {
        if let Some(e) = &settings.error {
            return Err(Error::Invalid(e.clone()));
        }
        if settings.name.is_empty() {
            return Err(Error::Invalid("a pipeline needs a name".into()));
        }
        if settings.source.name.is_empty() {
            return Err(Error::Invalid("a pipeline needs a source topic".into()));
        }
        if settings.source.name == sink.name {
            return Err(Error::Invalid(format!(
                "pipeline {} reads and writes topic {}: a loop",
                settings.name, sink.name
            )));
        }
        if settings
            .late
            .as_ref()
            .is_some_and(|l| l.name == sink.name || l.name == settings.source.name)
        {
            return Err(Error::Invalid(
                "the late-record topic must differ from the source and the sink".into(),
            ));
        }
        let et = settings.event_time.clone();
        let make_task = Arc::new(move |info: TaskInfo, layout: OutputLayout| {
            Box::new(Task::new(
                info,
                source(),
                keyed(),
                route.clone(),
                et.clone(),
                layout,
            )) as Box<dyn TaskCore>
        });
        Ok(Job {
            settings,
            sink,
            make_task,
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn sink_topic(&self) -> &TopicSpec {
        &self.sink
    }

    /// One line per step: what `millrace pipeline check` prints.
    pub fn plan(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "pipeline {}\n  tasks: one per partition of {}{}\n",
            s.name,
            s.source.name,
            s.source
                .partitions
                .map_or(String::new(), |p| format!(" ({p}, created if missing)"))
        );
        for step in &s.plan {
            out.push_str(&format!("  {step}\n"));
        }
        if let Some(l) = &s.late {
            out.push_str(&format!("  late records: topic {}\n", l.name));
        }
        out.push_str(&format!(
            "  watermark: max event time - {} ms per partition, minimum over partitions; idle after {} ms\n  \
             checkpoint: every {} ms (exactly-once: outputs are committed with the checkpoint)\n",
            s.out_of_orderness_ms, s.idle_timeout_ms, s.checkpoint_interval_ms
        ));
        out
    }
}
