//! Any bytes as a run of record batches: iteration, validation and reading records must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_protocol::records::{validate_batch, BatchIter, RecordIter, BATCH_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let all = Bytes::copy_from_slice(data);
    for item in BatchIter::new(data) {
        let Ok((header, slice)) = item else { break };
        let _ = validate_batch(slice);
        if header.compression().ok() == Some(millrace_protocol::records::Compression::None) {
            let start = slice.as_ptr() as usize - data.as_ptr() as usize;
            let body = all.slice(start + BATCH_HEADER_LEN..start + slice.len());
            for rec in RecordIter::new(
                body,
                header.base_offset,
                header.base_timestamp,
                header.records_count,
            ) {
                if rec.is_err() {
                    break;
                }
            }
        }
    }
});
