//! Any bytes as a pipeline checkpoint (read back from disk at start), then as the window operator's state
//! inside one, and as stored record batches the processor decodes: errors, never panics or huge allocations.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_processor::checkpoint::Checkpoint;
use millrace_processor::source::for_each_record;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::decode(data) {
        // A decodable checkpoint encodes back to the same bytes.
        assert_eq!(Checkpoint::decode(&c.encode()).ok(), Some(c));
    }
    let _ = for_each_record(&Bytes::copy_from_slice(data), 0, 0, |_| {});
});
