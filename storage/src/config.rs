//! Per-partition log settings (the broker resolves them from Kafka's topic and broker settings).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Roll the active segment when an append would take it past this size.
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this (wall clock since its first append).
    pub segment_ms: i64,
    /// Delete closed segments whose newest record is older than this; -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest closed segments while the log is larger than this; -1 means no limit.
    pub retention_bytes: i64,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Size of each preallocated index file.
    pub segment_index_bytes: u64,
    /// Largest batch accepted.
    pub max_message_bytes: u64,
    pub message_timestamp_type: TimestampType,
    /// fsync after this many appended messages (Kafka's flush.messages); i64::MAX: never on count.
    pub flush_messages: i64,
    /// fsync when the oldest unflushed append is older than this; i64::MAX: never on time.
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
