//! Durable partition logs on disk, laid out as Kafka lays them out.
//!
//! - [`LogManager`] ([`manager`]): the data directory, one folder `<topic>-<partition>` per partition.
//! - [`Log`] ([`log`]): one partition: append (offset assignment, idempotent-producer checks), zero-copy reads,
//!   time lookups, retention, DeleteRecords, recovery on open, group-committed fsync ([`Log::wait_durable`]).
//! - [`segment`]: a `.log` file of whole batches with its sparse `.index` and `.timeindex` ([`index`]).
//! - [`cleaner`]: log compaction for compacted topics.
//! - [`producer_state`]: per-producer epochs and recent sequences, rebuilt from the log on open.
//! - [`mmap`]: the only module with `unsafe`: the mappings and why they are sound.
//! - [`names`]: file names, built and parsed in one place.
//!
//! Storage knows nothing of requests or sockets: it takes batches already CRC-checked by the caller and returns
//! typed errors; the broker picks Kafka error codes.

pub mod cleaner;
pub mod config;
pub mod error;
pub mod index;
pub mod log;
pub mod manager;
pub mod mmap;
pub mod names;
pub mod producer_state;
pub mod segment;

pub use cleaner::CleanStats;
pub use config::{LogConfig, TimestampType};
pub use error::{Error, Result};
pub use log::{AppendInfo, Log, ReadSlice};
pub use manager::LogManager;
