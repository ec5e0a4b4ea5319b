//! Any bytes as the files of a pipeline's state store (read back from disk at start): a run file, the
//! manifest, and a change set (carried by a checkpoint record). Errors, never panics or huge allocations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace_processor::store::manifest::Manifest;
use millrace_processor::store::run::Run;
use millrace_processor::store::{bloom, changes, Store};

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::decode(std::path::Path::new("MANIFEST"), data);
    let _ = changes::decode(data, |_, _, _| ());
    let _ = bloom::Bloom::decode(data);

    let dir = std::env::temp_dir().join(format!("millrace-fuzz-store-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("0000000000000001.run");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(run) = Run::open(&path, 1) {
            let mut buf = Vec::new();
            let key = data.get(..data.len().min(8)).unwrap_or_default();
            let _ = run.get(key, bloom::key_hash(key), &mut buf, |v| v.map(<[u8]>::len));
            let _ = run.scan(b"", |_, _| true);
        }
    }
    // The same bytes as a store's manifest naming that run.
    let _ = std::fs::write(dir.join("MANIFEST"), data);
    if let Ok(store) = Store::open(&dir) {
        let _ = store.scan_prefix(b"", |_, _| ());
    }
    let _ = std::fs::remove_dir_all(&dir);
});
