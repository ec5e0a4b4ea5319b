//! Window shapes and how an event time is assigned to windows.
//!
//! Windows are aligned to the epoch, as Flink and Kafka Streams align them: a tumbling window of size `s`
//! covers `[k*s, (k+1)*s)`, a hopping window of size `s` advancing by `a` covers `[k*a, k*a + s)`. Session
//! windows are per key: an event at `t` opens `[t, t + gap)` and sessions that overlap merge.

use std::time::Duration;

/// The window shape of a windowed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Tumbling { size_ms: i64 },
    Hopping { size_ms: i64, advance_ms: i64 },
    Session { gap_ms: i64 },
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
            _ => Ok(()),
        }
    }

    /// Calls `f(start, end)` for every fixed window containing `ts`, latest first. Session windows have no
    /// fixed assignment (the operator merges them) and call nothing.
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
            Window::Session { .. } => {}
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
    }
}
