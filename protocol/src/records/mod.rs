//! Record batches, magic 2 (the only format stored).
//!
//! Layout of a batch header (61 bytes), all big-endian:
//!
//! | offset | field                  | type |
//! |-------:|------------------------|------|
//! | 0      | base_offset            | i64  |
//! | 8      | batch_length           | i32  (bytes after this field) |
//! | 12     | partition_leader_epoch | i32  |
//! | 16     | magic                  | i8   (2) |
//! | 17     | crc                    | u32  CRC-32C of bytes 21.. |
//! | 21     | attributes             | i16  |
//! | 23     | last_offset_delta      | i32  |
//! | 27     | base_timestamp         | i64  |
//! | 35     | max_timestamp          | i64  |
//! | 43     | producer_id            | i64  |
//! | 51     | producer_epoch         | i16  |
//! | 53     | base_sequence          | i32  |
//! | 57     | records_count          | i32  |
//!
//! The broker only rewrites `base_offset` (and, for LogAppendTime topics, `max_timestamp`, which the CRC covers),
//! so stored batches are the client's bytes.

mod batch;
mod builder;
pub mod compression;
mod record;

pub use batch::{
    attributes, set_base_offset, set_producer, validate_batch, BatchHeader, BatchIter, Compression,
    BATCH_HEADER_LEN, CRC_START, LOG_OVERHEAD,
};
pub use builder::BatchBuilder;
pub use record::{Header, Record, RecordIter};
