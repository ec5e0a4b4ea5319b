//! File and folder names, built and parsed only here.
//!
//! ```text
//! <data_dir>/<topic>-<partition>/
//!     00000000000000000000.log          batches, as received (offsets rewritten)
//!     00000000000000000000.index        sparse offset index (8-byte entries)
//!     00000000000000000000.timeindex    sparse time index (12-byte entries)
//!     00000000000000004096.snapshot     idempotent-producer state as of offset 4096
//!     recovery-point-checkpoint         segments below this offset were sealed and fsynced
//!     active-recovery-point             how much of the active segment an fsync covered
//!     log-start-offset-checkpoint       the log start offset (DeleteRecords may move it inside a segment)
//!     .clean-shutdown                   present only between a clean close and the next open
//! ```
//!
//! Segments are named by their base offset, zero-padded to 20 digits so that `ls` sorts them numerically.
//! Files being written are first written as `<name>.tmp` and renamed into place; a `.log.cleaned` file is a
//! compacted (or truncated) copy of a segment about to replace it. Both are debris after a crash and are deleted
//! on open.

use std::io;
use std::path::{Path, PathBuf};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Idempotent-producer state as of the file's offset (written at roll and clean close).
pub const SNAPSHOT_SUFFIX: &str = "snapshot";
/// A rewritten copy of a segment, written beside it (`<name>.log.cleaned`) before it replaces it.
const CLEANED_SUFFIX: &str = ".cleaned";
/// A file being written, renamed into place once fsynced.
const TMP_SUFFIX: &str = ".tmp";
/// Written on clean close, removed on open: its presence means no torn tail.
pub const CLEAN_MARKER: &str = ".clean-shutdown";
/// Holds the base offset of the active segment when every older segment was fsynced (written at roll).
pub const RECOVERY_CHECKPOINT: &str = "recovery-point-checkpoint";
/// The prefix of the active segment an fsync covered: `<base offset> <bytes> <next offset>`.
pub const ACTIVE_RECOVERY_POINT: &str = "active-recovery-point";
/// The log start offset, when DeleteRecords or retention moved it.
pub const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";

/// `<data_dir>/<topic>-<partition>`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The (topic, partition) of a partition folder name. Topic names may contain `-` (and digits), but never end in
/// `-<digits>` ambiguously: the partition is always what follows the last `-`.
pub fn parse_partition_dir(name: &str) -> Option<(String, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic.to_string(), partition.parse().ok()?))
}

/// `<dir>/<20-digit offset>.<suffix>`.
pub fn segment_file(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Where a rewritten copy of the segment at `base_offset` is written before it replaces the segment.
pub fn cleaned_file(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.{LOG_SUFFIX}{CLEANED_SUFFIX}"))
}

/// Where `path` is written before it is renamed into place.
pub fn tmp_file(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Debris of an interrupted write or rewrite, deleted on open.
pub fn is_debris(name: &str) -> bool {
    name.ends_with(CLEANED_SUFFIX) || name.ends_with(TMP_SUFFIX)
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

/// The offsets of every `<20 digits>.<suffix>` file in `dir`, sorted.
pub fn offsets_in(dir: &Path, suffix: &str) -> io::Result<Vec<i64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        if let Some(o) = parse_offset_file(&e?.file_name().to_string_lossy(), suffix) {
            out.push(o);
        }
    }
    out.sort_unstable();
    Ok(out)
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
        assert_eq!(parse_log_file("00000000000000000042.log.cleaned"), None);
        let c = cleaned_file(Path::new("/d"), 42);
        assert!(is_debris(&c.to_string_lossy()));
        assert!(is_debris(&tmp_file(&p).to_string_lossy()));
        assert!(!is_debris(&p.to_string_lossy()));
    }

    #[test]
    fn partition_dirs_round_trip() {
        for (topic, p) in [
            ("orders", 0),
            ("a-1", 7),
            ("x-y-z", 12),
            ("__consumer_offsets", 49),
        ] {
            let dir = partition_dir(Path::new("/d"), topic, p);
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            assert_eq!(parse_partition_dir(&name), Some((topic.to_string(), p)));
        }
        assert_eq!(parse_partition_dir("orders"), None);
        assert_eq!(parse_partition_dir("orders-"), None);
        assert_eq!(parse_partition_dir("-3"), None);
        assert_eq!(parse_partition_dir("orders-x"), None);
    }
}
