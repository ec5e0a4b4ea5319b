//! How many more files this process may open, for the partition guard of CreateTopics and CreatePartitions.
//!
//! A partition keeps one file open (its active segment's `.log`, see `millrace_storage`), so a creation that
//! asks for more partitions than there are free descriptors would fail part-way (and be rolled back, see
//! [`crate::topics`]); the guard refuses it up front with a message that says what to raise. Read from
//! `/proc/self` (no `unsafe`, no syscall wrapper): where that is missing the guard is skipped, and creation still
//! fails cleanly if it runs out.

use crate::error::{Error, Result};

/// Descriptors kept free for what is not a partition: connections, and the files opened for a moment (a folder
/// to fsync, a checkpoint, the registry).
pub const RESERVED: u64 = 256;

/// Descriptors one partition keeps open.
pub const PER_PARTITION: u64 = 1;

/// The soft limit on open files (`None` when unlimited or unknown), from the text of `/proc/self/limits`.
fn parse_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (soft limit, descriptors open now), or `None` when unknown.
pub fn usage() -> Option<(u64, u64)> {
    let limit = parse_soft_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)?;
    // The directory handle `read_dir` holds is counted too: one too many, which errs on the safe side.
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some((limit, open))
}

/// Refuses (INVALID_PARTITIONS) to create `partitions` more partitions when they would not fit in the
/// descriptors left, keeping [`RESERVED`] free.
pub fn check_room(partitions: i32) -> Result<()> {
    let Some((limit, open)) = usage() else {
        return Ok(());
    };
    check(partitions, limit, open)
}

fn check(partitions: i32, limit: u64, open: u64) -> Result<()> {
    let needed = u64::try_from(partitions).unwrap_or(0) * PER_PARTITION;
    let free = limit.saturating_sub(open).saturating_sub(RESERVED);
    if needed <= free {
        return Ok(());
    }
    Err(Error::InvalidPartitions(format!(
        "{partitions} partitions need {needed} open files, but only {free} of this broker's limit of {limit} \
         are free ({open} open, {RESERVED} kept for connections); raise the open-file limit (ulimit -n, \
         LimitNOFILE) and restart the broker"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_read_from_proc_self_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(parse_soft_limit(text), Some(1024));
        assert_eq!(
            parse_soft_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        let (limit, open) = usage().expect("Linux has /proc/self");
        assert!(limit > 0 && open > 0);
    }

    #[test]
    fn partitions_beyond_the_free_descriptors_are_refused() {
        assert!(check(700, 1024, 60).is_ok());
        let err = check(900, 1024, 60).unwrap_err();
        assert!(matches!(err, Error::InvalidPartitions(_)));
        assert!(
            err.to_string()
                .contains("only 708 of this broker's limit of 1024"),
            "{err}"
        );
        assert!(check(1, 100, 200).is_err());
        assert!(check_room(1).is_ok());
    }
}
