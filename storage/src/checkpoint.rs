//! Small per-partition files that make recovery cheap: the recovery point, the log start offset, the
//! clean-shutdown marker, and the atomic write they all share.
//!
//! Format: an offset checkpoint is the offset in decimal ASCII (`4096\n`), readable with `cat`. Every file is
//! written to `<name>.tmp`, fsynced, renamed over the old one and the folder fsynced, so a reader sees the old
//! value or the new one, never a torn one. A file that does not parse is treated as absent, which is always safe:
//! a missing recovery point means "scan everything", a missing log start means "the first segment's base".

use std::io::Write;
use std::path::Path;

use crate::error::Result;
use crate::names::{tmp_file, CLEAN_MARKER};

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
