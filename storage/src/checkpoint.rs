//! Small per-partition files that make recovery cheap: the recovery point, the log start offset, the
//! clean-shutdown marker, the active segment's recovery point, and the atomic write they share.
//!
//! Format: an offset checkpoint is the offset in decimal ASCII (`4096\n`), readable with `cat`. Every file is
//! written to `<name>.tmp`, fsynced, renamed over the old one and the folder fsynced, so a reader sees the old
//! value or the new one, never a torn one. A file that does not parse is treated as absent, which is always safe:
//! a missing recovery point means "scan everything", a missing log start means "the first segment's base".

use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::names::{tmp_file, ACTIVE_RECOVERY_POINT, CLEAN_MARKER};

/// How much of the active segment an fsync covered: its first `position` bytes, whole batches ending with
/// offset `next_offset - 1`, were durable when the point was recorded.
///
/// Recovery trusts such a prefix without reading its batches (it follows the chain of batch headers instead,
/// and only if that chain lands exactly on `position` and `next_offset`), so after a crash it validates only what
/// was appended since the last fsync. The file is written without an fsync of its own: it is written only after
/// the fsync it describes, so if it reaches the disk at all, the bytes it vouches for did first; a torn or empty
/// file does not parse and means "validate everything". What must be durable is its *removal* before the prefix
/// it names changes (a truncation), see [`remove_active_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePoint {
    pub base_offset: i64,
    pub position: u64,
    pub next_offset: i64,
}

/// The active segment's recovery point stored in `dir`, if present and well formed.
pub fn read_active_point(dir: &Path) -> Option<ActivePoint> {
    let text = std::fs::read_to_string(dir.join(ACTIVE_RECOVERY_POINT)).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let point = ActivePoint {
        base_offset: parts.next()?.parse().ok()?,
        position: parts.next()?.parse().ok()?,
        next_offset: parts.next()?.parse().ok()?,
    };
    let sane =
        parts.next().is_none() && point.base_offset >= 0 && point.next_offset >= point.base_offset;
    sane.then_some(point)
}

/// Replaces the active segment's recovery point (through a temporary file and a rename, without fsyncs: see
/// [`ActivePoint`]).
pub fn write_active_point(dir: &Path, point: &ActivePoint) -> Result<()> {
    let path = dir.join(ACTIVE_RECOVERY_POINT);
    let tmp = tmp_file(&path);
    std::fs::write(
        &tmp,
        format!(
            "{} {} {}\n",
            point.base_offset, point.position, point.next_offset
        ),
    )?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Removes the active segment's recovery point durably: before bytes it vouches for are cut or rewritten.
pub fn remove_active_point(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(ACTIVE_RECOVERY_POINT)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The offset stored in `dir/name`, if the file exists and parses.
pub fn read_offset(dir: &Path, name: &str) -> Option<i64> {
    std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Atomically replaces `dir/name` with `value`.
pub fn write_offset(dir: &Path, name: &str, value: i64) -> Result<()> {
    write_atomically(&dir.join(name), format!("{value}\n").as_bytes())
}

/// Writes `path` through a fsynced temporary file and a rename, then fsyncs the folder so the rename is durable.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_file(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a folder, making file creations, renames and deletions in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Whether the log in `dir` was closed cleanly (and not written since).
pub fn is_clean(dir: &Path) -> bool {
    dir.join(CLEAN_MARKER).exists()
}

/// Marks the log in `dir` cleanly closed: every segment sealed, indexes and producer snapshot on disk.
pub fn mark_clean(dir: &Path) -> Result<()> {
    std::fs::File::create(dir.join(CLEAN_MARKER))?.sync_all()?;
    sync_dir(dir)
}

/// Removes the clean marker durably, before anything is written: a crash from here on must not look clean.
pub fn clear_clean(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(CLEAN_MARKER)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_garbage_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_offset(dir.path(), "cp"), None);
        write_offset(dir.path(), "cp", 4096).unwrap();
        assert_eq!(read_offset(dir.path(), "cp"), Some(4096));
        write_offset(dir.path(), "cp", 5).unwrap();
        assert_eq!(read_offset(dir.path(), "cp"), Some(5));
        std::fs::write(dir.path().join("cp"), b"12x").unwrap();
        assert_eq!(read_offset(dir.path(), "cp"), None);
        assert!(!is_clean(dir.path()));
        mark_clean(dir.path()).unwrap();
        assert!(is_clean(dir.path()));
        clear_clean(dir.path()).unwrap();
        clear_clean(dir.path()).unwrap();
        assert!(!is_clean(dir.path()));
    }
}
