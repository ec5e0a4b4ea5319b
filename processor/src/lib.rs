//! Stream-processing pipelines that run inside the broker and read and write partitions directly through the
//! storage layer: no network hop, no Kafka client in between. Their outputs are ordinary topics.
//!
//! # Components
//!
//! ```text
//! pipeline.rs     the typed API: sources and tables, map/filter/flat_map/split/union, key_by, windows,
//!                 aggregations, joins, sinks: a graph, built into a Job
//! graph/          the graph (nodes, edges, stages) and its nodes as a task runs them (node.rs)
//! keygroup.rs     key groups: how keyed state is split so that it can move between tasks
//! file.rs         pipeline files (TOML): parsed, checked with line numbers, built into the same Job; linear
//!                 files here, graph files in graph_file.rs (over json_rec.rs records, json_agg.rs aggregates)
//! operator.rs     the Operator trait (process + lifecycle hooks), Collector, Stage, Named, Chain
//! ops/            built-in operators: map, filter, flat_map, window (keyed window aggregation), table_aggregate
//! ops/*_join.rs   joins: temporal (as of the probe's time), interval, window, table-table; join.rs Either, JoinKind
//! window.rs       tumbling, hopping and session windows      aggregate.rs   count, sum, min, max, avg, fold, reduce
//!                 also cumulative, sliding (ops/sliding_window.rs) and global (ops/global_window.rs, trigger.rs)
//!                 aggregate.rs also has count distinct (exact, and approximate: hll.rs), top n, collect list
//! watermark.rs    per-partition watermarks, minimum over partitions, idle partitions
//! task.rs         one task: every node of the graph for the key groups it owns, queues, pending outputs
//! runtime.rs      tasks on threads over storage; stop-the-world checkpoints that commit exactly once
//! checkpoint.rs   what a checkpoint holds        state.rs   state encoding (StateCodec, Key)
//! driver.rs       TestDriver: deterministic, virtual time, no broker
//! source.rs       decoding stored batches        partitioner.rs   Kafka's murmur2 partitioner
//! metrics.rs      per-operator and per-pipeline figures      barrier.rs   a breakable barrier for checkpoints
//! local.rs        a Host over a bare LogManager (tests, benchmarks)   nexmark.rs   benchmark bids and pipelines
//! timers.rs       per-key event- and processing-time timers   value_state.rs   per-key value state with a TTL
//! ops/keyed_process.rs   KeyedProcess: a keyed process function (state, timers, TTL) as Flink's
//! reference.rs    the reference pipelines' workloads and their expected outputs (tests, benchmarks)
//! fxhash.rs       a fast hasher for state maps
//! ```
//!
//! # Exactly once
//!
//! A checkpoint commits, in one record of the pipeline's internal checkpoint topic, the input offsets, every
//! operator's state and the output batches produced since the previous checkpoint (stamped with the
//! pipeline's producer id and sequence numbers). Outputs are appended to their topics only once that record is
//! fsynced. After a kill -9 the newest checkpoint is restored, its output batches that did not reach their
//! partition are written (found by producer id and sequence), and input is replayed from its offsets. So every
//! output appears exactly once, to plain consumers as well as read_committed ones; the price is that outputs
//! become visible at checkpoints (every `checkpoint_interval`, 1 s by default) rather than at once.

pub mod aggregate;
mod barrier;
pub mod change_log;
pub mod checkpoint;
pub mod driver;
pub mod error;
pub mod file;
pub mod fxhash;
pub mod graph;
pub mod graph_file;
pub mod hll;
pub mod join;
pub mod json_agg;
pub mod json_rec;
pub mod keyed_state;
pub mod keygroup;
pub mod local;
pub mod metrics;
pub mod nexmark;
pub mod operator;
pub mod ops;
pub mod partition_io;
pub mod partitioner;
pub mod pipeline;
pub mod record;
pub mod reference;
pub mod remote;
pub mod runtime;
pub mod source;
pub mod state;
pub mod store;
pub mod task;
#[cfg(test)]
mod test_support;
pub mod time_index;
pub mod timers;
pub mod trigger;
pub mod value_state;
pub mod watermark;
pub mod window;

pub use aggregate::{Aggregator, Avg, Count, Fold, Max, Min, Reduce, Sum};
pub use aggregate::{ApproxCountDistinct, CollectList, Collected, CountDistinct, TopN};
pub use driver::TestDriver;
pub use error::{Error, Result};
pub use join::{Either, JoinKind};
pub use keygroup::KeyGroups;
pub use metrics::{OperatorMetrics, PipelineMetrics};
pub use operator::{Collector, Operator, TaskInfo};
pub use ops::{IntervalJoin, TableJoin, TemporalJoin, WindowJoin};
pub use ops::{KeyedContext, KeyedProcess, KeyedProcessFunction};
pub use pipeline::{Job, KeyedStream, Pipeline, Stream, Table, TopicSpec, WindowedStream};
pub use record::{Header, Message, OutRecord, WindowResult};
pub use runtime::{start, Host, RunningPipeline};
pub use state::{Key, StateCodec, StateReader, StateWriter};
pub use timers::{TimeDomain, TimerQueue};
pub use trigger::{CustomTrigger, Pane, Trigger};
pub use value_state::{TtlTime, UpdateType};
pub use window::Window;
