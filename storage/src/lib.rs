//! Durable partition logs on disk, laid out as Kafka lays them out.
//!
//! # Components
//!
//! ```text
//! LogManager (manager.rs)          the data directory; opens/creates/removes partitions; retention task; shutdown
//!  └─ Log (log/)                   one partition, Send + Sync, shared as Arc<Log>
//!      ├─ open.rs                  recovery: checkpoint, clean marker, tail validation, truncation
//!      ├─ append.rs                offsets, idempotence checks, LogAppendTime, roll
//!      ├─ durability.rs            flush, flush policy, group-committed fsync (wait_durable), clean close
//!      ├─ sealer.rs                background fsync of rolled segments, then snapshot + recovery checkpoint
//!      ├─ retention.rs             retention by time and size, DeleteRecords, truncate_to, delete
//!      ├─ compact.rs               swapping in segments cleaned by cleaner.rs
//!      ├─ ProducerStates (producer_state.rs)   epochs and last 5 batches per producer; snapshots
//!      └─ Segment (segment.rs)     one .log file of whole batches, preallocated and mapped
//!          └─ OffsetIndex, TimeIndex (index.rs)   sparse, mapped, rebuildable
//! names.rs       every file name, built and parsed in one place
//! checkpoint.rs  recovery point, log start offset, clean marker; atomic small-file writes
//! mmap.rs        the only `unsafe`: the mappings, and the rule that makes them sound
//! config.rs      LogConfig: the per-partition settings the broker resolves from Kafka's names
//! error.rs       Error, the crate's one error type
//! ```
//!
//! On disk: `<data_dir>/<topic>-<partition>/00000000000000000000.{log,index,timeindex}` and so on (see
//! [`names`]). A partition keeps one file descriptor open, its active segment's `.log`: sealed segments and all
//! indexes are reached through their mappings alone and reopened by path for the rare operation that needs the
//! file (see [`segment`], [`index`]).
//!
//! # API (what the broker and the processor call)
//!
//! ```text
//! LogManager::open(dir) -> Result<LogManager>
//!   .open_all(|topic, partition| Option<LogConfig>) -> Result<Vec<Arc<Log>>>   recover every folder, in parallel
//!   .open_partition(topic, partition, LogConfig) / .create_partition(..) -> Result<Arc<Log>>
//!   .create_partitions(topic, range, LogConfig) -> Result<Vec<Arc<Log>>>   all or none, ~one journal commit
//!   .get(topic, partition) -> Option<Arc<Log>>      .all() -> Vec<Arc<Log>>
//!   .remove_topic(topic, partitions) / .remove_partition(topic, partition) -> Result<()>
//!   .spawn_maintenance(&Arc<Self>, retention_check_interval) -> JoinHandle<()>   retention + flush.ms
//!   .shutdown() -> Result<()>                       flush, seal, snapshot, clean marker
//!
//! Log::open(dir, topic, partition, LogConfig) -> Result<Log>              recovers
//!   .append(&mut [u8], now_ms) / .append_slice(&[u8], now_ms) -> Result<AppendInfo>
//!   .read(offset, max_bytes, min_one_batch) -> Result<ReadSlice>          zero-copy Bytes of the mapping
//!   .appended() -> &tokio::sync::Notify                                   fetch long-polls wait on it
//!   .wait_durable(offset).await -> Result<()>                             acks=all, group commit
//!   .log_start_offset() / .log_end_offset() / .high_watermark() -> i64
//!   .offset_for_timestamp(ts) -> Option<(offset, timestamp)>    .max_timestamp() -> Option<(timestamp, offset)>
//!   .delete_records_before(offset) -> Result<i64>    .truncate_to(offset)    .apply_retention(now_ms)
//!   .roll() / .flush() / .close() / .delete() / .compact(now_ms)
//! ```
//!
//! Storage knows nothing of requests or sockets: it takes batches already CRC-checked by the caller, returns
//! typed [`Error`]s, and the broker picks the Kafka error codes. Record batches are stored as received, with
//! only their base offset rewritten (and, for LogAppendTime topics, their max timestamp and CRC).
//!
//! # Durability in one paragraph
//!
//! Appends `pwrite` into the page cache (acks=1 is answered then). [`Log::wait_durable`] resolves after an
//! fsync that covers the offset, one fsync serving every concurrent waiter (acks=all). A rolled segment is
//! fsynced in the background, and only then does the recovery checkpoint move past it, so after a crash only the
//! segments above the checkpoint (normally just the active one) are validated (CRC-32C, batch by batch) and cut
//! at the first torn batch. Producer state is snapshotted at roll and at clean close and rebuilt from batch
//! headers after the snapshot.

pub mod checkpoint;
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
pub use log::{AppendInfo, Log, ReadSlice, RecoveryReport};
pub use manager::{LogManager, DEFAULT_RETENTION_CHECK_INTERVAL};

#[cfg(test)]
mod tests {
    /// `Log` and `LogManager` are shared across tasks and threads.
    #[test]
    fn shared_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Log>();
        check::<crate::LogManager>();
        check::<crate::ReadSlice>();
        check::<crate::Error>();
    }
}
