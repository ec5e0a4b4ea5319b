//! Window shapes and how an event time is assigned to windows.
//!
//! Windows are aligned to the epoch, as Flink and Kafka Streams align them: a tumbling window of size `s`
//! covers `[k*s, (k+1)*s)`, a hopping window of size `s` advancing by `a` covers `[k*a, k*a + s)`. Session
//! windows are per key: an event at `t` opens `[t, t + gap)` and sessions that overlap merge.
//!
//! Cumulative windows (Flink's `CUMULATE`) of step `p` and maximum size `m` (a multiple of `p`) cover
//! `[k*m, k*m + j*p)` for `j = 1 ..= m/p`: windows that share their start and grow by a step, each emitted when
//! the watermark passes its end (plus the allowed lateness). An element at `t` belongs to every one of them
//! whose end is above `t`, and is added to each (up to `m/p` accumulators per element: keep `m/p` modest).
//!
//! Sliding windows (Kafka Streams' `SlidingWindows`, KIP-450) of time difference `d` are defined by the
//! records of each key: see [`crate::ops::sliding_window`] for exactly which windows exist. In results they
//! appear as `window_start = s`, `window_end = s + d + 1` (Kafka's inclusive `[s, s + d]`).
//!
//! Global windows have one window per key that never ends; a [`Trigger`] says when its aggregate is emitted
//! (see [`crate::trigger`] and [`crate::ops::global_window`]).

use std::time::Duration;

pub use crate::trigger::Trigger;

/// The window shape of a windowed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Tumbling { size_ms: i64 },
    Hopping { size_ms: i64, advance_ms: i64 },
    Session { gap_ms: i64 },
    Cumulative { step_ms: i64, max_size_ms: i64 },
    Sliding { difference_ms: i64 },
    Global { trigger: Trigger },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Window {
    pub fn tumbling(size: Duration) -> Window {
        Window::Tumbling { size_ms: ms(size) }
    }
    pub fn hopping(size: Duration, advance: Duration) -> Window {
        Window::Hopping {
            size_ms: ms(size),
            advance_ms: ms(advance),
        }
    }
    pub fn session(gap: Duration) -> Window {
        Window::Session { gap_ms: ms(gap) }
    }
    /// Windows `[k*max_size, k*max_size + j*step)`, `j = 1 ..= max_size/step` (Flink's CUMULATE).
    pub fn cumulative(step: Duration, max_size: Duration) -> Window {
        Window::Cumulative {
            step_ms: ms(step),
            max_size_ms: ms(max_size),
        }
    }
    /// Windows of `time_difference` defined by the records of each key (Kafka Streams' SlidingWindows).
    pub fn sliding(time_difference: Duration) -> Window {
        Window::Sliding {
            difference_ms: ms(time_difference),
        }
    }
    /// One never-ending window per key, emitted whenever `trigger` fires.
    pub fn global(trigger: Trigger) -> Window {
        Window::Global { trigger }
    }

    /// Checks the sizes: positive, and a hop no larger than the window (else events would fall between windows).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Window::Tumbling { size_ms } if size_ms <= 0 => {
                Err("a tumbling window needs a positive size".into())
            }
            Window::Hopping {
                size_ms,
                advance_ms,
            } if size_ms <= 0 || advance_ms <= 0 || advance_ms > size_ms => {
                Err("a hopping window needs 0 < advance <= size".into())
            }
            Window::Session { gap_ms } if gap_ms <= 0 => {
                Err("a session window needs a positive gap".into())
            }
            Window::Cumulative {
                step_ms,
                max_size_ms,
            } if step_ms <= 0 || max_size_ms <= 0 || max_size_ms % step_ms != 0 => Err(
                "a cumulative window needs a positive step and a max size that is a multiple of it"
                    .into(),
            ),
            Window::Sliding { difference_ms } if difference_ms <= 0 => {
                Err("a sliding window needs a positive time difference".into())
            }
            Window::Global { trigger } => trigger.validate(),
            _ => Ok(()),
        }
    }

    /// Calls `f(start, end)` for every fixed window containing `ts`, latest end first. Session, sliding and
    /// global windows have no fixed assignment (the operator keeps them per key) and call nothing.
    pub fn assign(&self, ts: i64, mut f: impl FnMut(i64, i64)) {
        match *self {
            Window::Tumbling { size_ms } => {
                let start = ts.div_euclid(size_ms).saturating_mul(size_ms);
                f(start, start.saturating_add(size_ms));
            }
            Window::Hopping {
                size_ms,
                advance_ms,
            } => {
                let mut start = ts.div_euclid(advance_ms).saturating_mul(advance_ms);
                while start > ts.saturating_sub(size_ms) {
                    f(start, start.saturating_add(size_ms));
                    start = start.saturating_sub(advance_ms);
                }
            }
            Window::Cumulative {
                step_ms,
                max_size_ms,
            } => {
                let start = ts.div_euclid(max_size_ms).saturating_mul(max_size_ms);
                let mut end = start.saturating_add(max_size_ms);
                while end > ts {
                    f(start, end);
                    end = end.saturating_sub(step_ms);
                }
            }
            Window::Session { .. } | Window::Sliding { .. } | Window::Global { .. } => {}
        }
    }

    /// The start of the fixed window (tumbling, hopping, cumulative) ending at `end`: within one kind every
    /// fixed window has a distinct end, so the operator keys them by end alone.
    pub fn fixed_start(&self, end: i64) -> i64 {
        match *self {
            Window::Tumbling { size_ms } | Window::Hopping { size_ms, .. } => {
                end.saturating_sub(size_ms)
            }
            // Ends lie in (start, start + max]: end - 1 is in the window's period.
            Window::Cumulative { max_size_ms, .. } => end
                .saturating_sub(1)
                .div_euclid(max_size_ms)
                .saturating_mul(max_size_ms),
            Window::Session { .. } | Window::Sliding { .. } | Window::Global { .. } => end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(w: Window, ts: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        w.assign(ts, |s, e| v.push((s, e)));
        v
    }

    #[test]
    fn tumbling_aligns_to_epoch() {
        let w = Window::tumbling(Duration::from_secs(10));
        assert_eq!(windows(w, 0), vec![(0, 10_000)]);
        assert_eq!(windows(w, 9_999), vec![(0, 10_000)]);
        assert_eq!(windows(w, 10_000), vec![(10_000, 20_000)]);
        assert_eq!(windows(w, -1), vec![(-10_000, 0)]);
    }

    #[test]
    fn hopping_covers_every_window_once() {
        let w = Window::hopping(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(windows(w, 12_000), vec![(10_000, 20_000), (5_000, 15_000)]);
        assert_eq!(windows(w, 10_000), vec![(10_000, 20_000), (5_000, 15_000)]);
        assert_eq!(windows(w, 9_999), vec![(5_000, 15_000), (0, 10_000)]);
        let w = Window::hopping(Duration::from_secs(10), Duration::from_secs(3));
        for ts in 0..100i64 {
            for (s, e) in windows(w, ts * 137) {
                assert!(s <= ts * 137 && ts * 137 < e && s % 3000 == 0);
            }
            assert!(!windows(w, ts * 137).is_empty());
        }
    }

    #[test]
    fn validation() {
        assert!(Window::Hopping {
            size_ms: 5,
            advance_ms: 10
        }
        .validate()
        .is_err());
        assert!(Window::Tumbling { size_ms: 0 }.validate().is_err());
        assert!(Window::Session { gap_ms: 1 }.validate().is_ok());
        let c =
            |step, max| Window::cumulative(Duration::from_millis(step), Duration::from_millis(max));
        assert!(c(10, 30).validate().is_ok());
        assert!(c(10, 35).validate().is_err());
        assert!(c(0, 30).validate().is_err());
        assert!(Window::sliding(Duration::ZERO).validate().is_err());
        assert!(Window::global(Trigger::count(0)).validate().is_err());
        assert!(Window::global(Trigger::count(1)).validate().is_ok());
    }

    #[test]
    fn cumulative_windows_share_a_start_and_grow_by_a_step() {
        let w = Window::cumulative(Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(windows(w, 0), vec![(0, 30_000), (0, 20_000), (0, 10_000)]);
        assert_eq!(windows(w, 15_000), vec![(0, 30_000), (0, 20_000)]);
        assert_eq!(windows(w, 29_999), vec![(0, 30_000)]);
        assert_eq!(
            windows(w, -1),
            vec![(-30_000, 0)],
            "negative times align as well"
        );
        for ts in -50..50i64 {
            for (s, e) in windows(w, ts * 997) {
                assert!(s <= ts * 997 && ts * 997 < e);
                assert_eq!(w.fixed_start(e), s);
            }
        }
    }
}
