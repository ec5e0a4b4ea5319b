//! Per-partition log settings. The broker resolves them from Kafka's topic and broker settings (by Kafka's
//! names: `segment.bytes`, `retention.ms`, ...) and hands one to each partition; storage never reads settings
//! itself. A changed config applies from the next append, roll or retention pass.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Roll the active segment when an append would take it past this size (capped at i32::MAX, as in Kafka:
    /// index entries hold 4-byte positions). A single batch larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Roll the active segment when it spans more than this: measured as Kafka does, from the first batch's
    /// timestamp to the incoming batch's, or by wall clock when either has no timestamp.
    pub segment_ms: i64,
    /// Delete segments whose newest record is older than this; -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest segments while the log stays at least this large without them; -1 means no limit.
    pub retention_bytes: i64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Size each index file is preallocated to (sparse); a full index rolls the segment.
    pub segment_index_bytes: u64,
    /// Largest batch accepted (whole batch, header included).
    pub max_message_bytes: u64,
    /// CreateTime keeps the producer's timestamps; LogAppendTime stamps each batch with the broker's clock.
    pub message_timestamp_type: TimestampType,
    /// fsync after this many appended records (Kafka's `flush.messages`); i64::MAX (the default, as in Kafka):
    /// never on count. Independent of acks=all, which always waits for an fsync.
    pub flush_messages: i64,
    /// fsync when the oldest unflushed append is older than this (`flush.ms`); i64::MAX (the default): never.
    /// Checked on append and by [`crate::LogManager::spawn_maintenance`].
    pub flush_ms: i64,
    /// `cleanup.policy` contains `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`: the cleaner keeps the latest record per key.
    pub cleanup_compact: bool,
    /// How long tombstones survive compaction (`delete.retention.ms`).
    pub delete_retention_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}
