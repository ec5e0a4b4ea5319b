//! Event-time watermarks: one per input partition (the largest event time seen, less the allowed
//! out-of-orderness), combined as the minimum over the partitions that are not idle.
//!
//! A partition is idle when it has been caught up (nothing left to read) for `idle_timeout` of processing time:
//! it then stops holding the pipeline's watermark back, so a quiet partition does not stall windows. When every
//! partition is idle the watermark is the largest of theirs (the data that exists has all been seen). A
//! partition that was idle and receives data is active again at once; its elements older than the watermark
//! are late.
//!
//! Thread safety: one writer per partition (the task that reads it), any number of readers. A task publishes
//! its partition's watermark (Release) only after it has handed on every element below it, and a reader loads
//! the watermarks (Acquire) before it drains its inbox, so no element can be overtaken by the watermark that
//! covers it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::task::SourceWatermark;

#[derive(Debug)]
pub struct WatermarkBoard {
    max_ts: Vec<AtomicI64>,
    /// 0: active; else idle since `epoch + 1` was current. An idle mark counts only in its own epoch.
    idle: Vec<AtomicU64>,
    /// Bumped by [`WatermarkBoard::wake`]: when input resumes after every partition went quiet, all their
    /// idle marks lapse at once, so none stops holding the watermark back before it has had `idle_timeout`
    /// to show its records (a burst after a pause reaches the partitions of one produce request a little
    /// apart, and a partition must not be skipped because its task has not seen its part yet).
    epoch: AtomicU64,
    out_of_orderness: i64,
}

impl WatermarkBoard {
    pub fn new(partitions: usize, out_of_orderness_ms: i64) -> Self {
        WatermarkBoard {
            max_ts: (0..partitions).map(|_| AtomicI64::new(i64::MIN)).collect(),
            idle: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            out_of_orderness: out_of_orderness_ms.max(0),
        }
    }

    /// Raises partition `p`'s largest event time (never lowers it).
    pub fn observe(&self, p: usize, max_ts: i64) {
        if let Some(a) = self.max_ts.get(p) {
            a.fetch_max(max_ts, Ordering::Release);
        }
    }

    pub fn set_idle(&self, p: usize, idle: bool) {
        if let Some(a) = self.idle.get(p) {
            let mark = if idle {
                self.epoch.load(Ordering::Acquire) + 1
            } else {
                0
            };
            a.store(mark, Ordering::Release);
        }
    }

    pub fn max_ts(&self, p: usize) -> i64 {
        self.max_ts
            .get(p)
            .map_or(i64::MIN, |a| a.load(Ordering::Acquire))
    }

    /// The pipeline's watermark now.
    pub fn current(&self) -> i64 {
        self.source(0..self.max_ts.len()).watermark
    }

    /// Marks partition `p` idle on the strength of what its task saw in `epoch`: if the board has woken since
    /// (input resumed elsewhere while the task was deciding), the mark is stale at once and the partition still
    /// counts.
    pub fn mark_idle(&self, p: usize, epoch: u64) {
        if let Some(a) = self.idle.get(p) {
            a.store(epoch + 1, Ordering::Release);
        }
    }

    fn is_idle(&self, p: usize) -> bool {
        self.idle.get(p).is_some_and(|a| {
            let mark = a.load(Ordering::Acquire);
            mark != 0 && mark == self.epoch.load(Ordering::Acquire) + 1
        })
    }

    /// Whether partition `p` is marked idle (in the current epoch).
    pub fn idle(&self, p: usize) -> bool {
        self.is_idle(p)
    }

    /// Whether every partition is idle.
    pub fn all_idle(&self) -> bool {
        (0..self.idle.len()).all(|p| self.is_idle(p))
    }

    /// Input resumed after every partition went quiet: every idle mark lapses (see `epoch`). Tasks notice
    /// the new epoch ([`WatermarkBoard::epoch`]) and start their partitions' idle timers afresh.
    pub fn wake(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The watermark of the partitions `range` (one source's), and whether all of them are idle.
    pub fn source(&self, range: std::ops::Range<usize>) -> SourceWatermark {
        self.source_with(range, |_| false)
    }

    /// As [`WatermarkBoard::source`], with a partition marked idle counted as active while `pending(p)` says
    /// it has records its task has not read yet: a partition is idle only while it is caught up, so records
    /// that arrive after a quiet spell hold the watermark back from the moment they are appended, not from
    /// the moment their task gets round to reading them.
    pub fn source_with(
        &self,
        range: std::ops::Range<usize>,
        pending: impl Fn(usize) -> bool,
    ) -> SourceWatermark {
        let mut active_min: Option<i64> = None;
        let mut all_max = i64::MIN;
        let end = range.end.min(self.max_ts.len());
        let start = range.start.min(end);
        for (p, ts) in self.max_ts[start..end]
            .iter()
            .enumerate()
            .map(|(i, x)| (start + i, x))
        {
            let ts = ts.load(Ordering::Acquire);
            // i64::MAX: a bounded partition read to its end (nothing more will come: the end of time).
            let wm = if ts == i64::MIN || ts == i64::MAX {
                ts
            } else {
                ts.saturating_sub(self.out_of_orderness)
            };
            all_max = all_max.max(wm);
            if !self.is_idle(p) || pending(p) {
                active_min = Some(active_min.map_or(wm, |m| m.min(wm)));
            }
        }
        SourceWatermark {
            watermark: active_min.unwrap_or(all_max),
            idle: active_min.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_of_active_partitions() {
        let b = WatermarkBoard::new(3, 0);
        assert_eq!(b.current(), i64::MIN);
        b.observe(0, 100);
        b.observe(1, 50);
        assert_eq!(
            b.current(),
            i64::MIN,
            "partition 2 has no data and is not idle"
        );
        b.set_idle(2, true);
        assert_eq!(b.current(), 50);
        b.observe(1, 40);
        assert_eq!(b.current(), 50, "never lowered");
        b.set_idle(1, true);
        assert_eq!(b.current(), 100);
        b.set_idle(0, true);
        assert_eq!(b.current(), 100, "all idle: the largest");
        b.wake();
        assert_eq!(
            b.current(),
            i64::MIN,
            "woken: every partition counts again, the empty one too"
        );
        b.set_idle(2, true);
        b.set_idle(1, true);
        assert_eq!(b.current(), 100);
    }

    #[test]
    fn out_of_orderness_holds_back() {
        let b = WatermarkBoard::new(1, 30);
        b.observe(0, 100);
        assert_eq!(b.current(), 70);
    }
}
