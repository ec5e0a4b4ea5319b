//! File and folder names, built and parsed only here.
//!
//! Segments are named by their base offset, zero-padded to 20 digits so that `ls` sorts them numerically.

use std::path::{Path, PathBuf};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// A compacted copy of a segment, written beside it (`<name>.log.cleaned`) before it replaces it.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Idempotent-producer state as of the file's offset (written at roll and clean close).
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
/// Written on clean close, removed on the first append after open: its presence means no torn tail.
pub const CLEAN_MARKER: &str = ".clean-shutdown";
/// Holds the base offset of the active segment when every older segment was fsynced (written at roll).
pub const RECOVERY_CHECKPOINT: &str = "recovery-point-checkpoint";
/// The log start offset, when DeleteRecords moved it inside a segment.
pub const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";

pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

pub fn segment_file(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// The base offset of a `.log` file name, or `None` for anything else.
pub fn parse_log_file(name: &str) -> Option<i64> {
    parse_offset_file(name, LOG_SUFFIX)
}

/// The offset of a `<20 digits>.<suffix>` file name.
pub fn parse_offset_file(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_file(Path::new("/d"), 42, LOG_SUFFIX);
        assert_eq!(p, Path::new("/d/00000000000000000042.log"));
        assert_eq!(parse_log_file("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file("42.log"), None);
        assert_eq!(parse_log_file("00000000000000000042.index"), None);
    }
}
