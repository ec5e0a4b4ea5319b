//! Triggers: when a global window ([`crate::Window::global`]) emits the current aggregate of a key.
//!
//! A global window has one pane per key that never ends, so nothing closes it: its trigger decides when the
//! pane's aggregate is emitted, as Flink's `GlobalWindows` with a trigger.
//!
//! - [`Trigger::count`]`(n)`: every `n` elements of a key (Flink's `CountTrigger`).
//! - [`Trigger::event_time`]`(interval)`: when the watermark crosses a multiple of `interval`, every key whose
//!   pending pane holds an element with a timestamp below that multiple (Flink's `ContinuousEventTimeTrigger`:
//!   a key's first pending element at `ts` is due at the first multiple above `ts`).
//! - [`Trigger::processing_time`]`(interval)`: when processing time crosses a multiple of `interval`, every key
//!   with pending elements (Flink's `ContinuousProcessingTimeTrigger`).
//! - [`Trigger::custom`]: a [`CustomTrigger`] of your own.
//!
//! Purging (the default, Flink's `PurgingTrigger`): a firing emits the aggregate and forgets the key, so each
//! result covers the elements since the key's previous firing and the state of a quiet key is freed.
//! Accumulating ([`Trigger::accumulating`]): a firing emits the aggregate and keeps it, so each result covers
//! every element of the key so far; the state of every key seen is kept for the life of the pipeline.
//!
//! Either way a key fires only when it received elements since its previous firing: a time trigger never
//! repeats an unchanged result.

use std::time::Duration;

/// What a trigger knows of a key's pending pane: the elements received since the key's previous firing (or
/// since its first element). `count` is at least 1 whenever a trigger sees a pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pane {
    pub count: u64,
    /// The smallest and largest event time among the pending elements.
    pub min_ts: i64,
    pub max_ts: i64,
}

impl Pane {
    /// No pending elements.
    pub(crate) const EMPTY: Pane = Pane {
        count: 0,
        min_ts: i64::MAX,
        max_ts: i64::MIN,
    };

    pub(crate) fn add(&mut self, ts: i64) {
        self.count += 1;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
    }
}

/// A trigger of your own. It keeps no state of its own (one instance serves every key and task, hence `&self`
/// and `Sync`): what it decides on is the key's [`Pane`], which the operator keeps and checkpoints.
///
/// ```
/// use millrace_processor::{CustomTrigger, Pane, Trigger, Window};
///
/// /// Fires a key once it has 100 elements or they span a minute of event time.
/// struct BatchOrMinute;
/// impl CustomTrigger for BatchOrMinute {
///     fn on_element(&self, pane: &Pane, _ts: i64) -> bool {
///         pane.count >= 100 || pane.max_ts - pane.min_ts >= 60_000
///     }
/// }
/// static BATCH: BatchOrMinute = BatchOrMinute;
/// let w = Window::global(Trigger::custom(&BATCH));
/// assert!(w.validate().is_ok());
/// ```
pub trait CustomTrigger: Send + Sync + 'static {
    /// An element with event time `ts` joined the key's pane (`pane` includes it). True fires the key now; the
    /// result's `window_end` is `pane.max_ts` (purging) or the largest timestamp in the aggregate (accumulating).
    fn on_element(&self, pane: &Pane, ts: i64) -> bool;

    /// The watermark moved to `watermark`. True fires the key, with `window_end = watermark`. Only called when
    /// [`CustomTrigger::uses_time`] says so.
    fn on_watermark(&self, _pane: &Pane, _watermark: i64) -> bool {
        false
    }

    /// Processing time moved to `now`. True fires the key, with `window_end = now`. Only called when
    /// [`CustomTrigger::uses_time`] says so.
    fn on_processing_time(&self, _pane: &Pane, _now: i64) -> bool {
        false
    }

    /// Whether `on_watermark` and `on_processing_time` are to be called. Each call visits every key with
    /// pending elements, so a trigger that only looks at elements keeps the default (false) and costs nothing
    /// when time moves.
    fn uses_time(&self) -> bool {
        false
    }

    /// A name for the pipeline plan.
    fn name(&self) -> &str {
        "custom"
    }
}

/// What makes a global window fire. See the module documentation.
#[derive(Clone, Copy)]
pub enum TriggerKind {
    Count(u64),
    EventTime {
        interval_ms: i64,
    },
    ProcessingTime {
        interval_ms: i64,
    },
    /// A `&'static` so that [`crate::Window`] stays `Copy` (the pipeline copies it into every task): make one
    /// with a `static`, or with `Box::leak` once per pipeline.
    Custom(&'static dyn CustomTrigger),
}

impl PartialEq for TriggerKind {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TriggerKind::Count(a), TriggerKind::Count(b)) => a == b,
            (
                TriggerKind::EventTime { interval_ms: a },
                TriggerKind::EventTime { interval_ms: b },
            )
            | (
                TriggerKind::ProcessingTime { interval_ms: a },
                TriggerKind::ProcessingTime { interval_ms: b },
            ) => a == b,
            // The same trigger object (a custom trigger has no other identity).
            (TriggerKind::Custom(a), TriggerKind::Custom(b)) => std::ptr::addr_eq(*a, *b),
            _ => false,
        }
    }
}

impl Eq for TriggerKind {}

impl std::fmt::Debug for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerKind::Count(n) => write!(f, "Count({n})"),
            TriggerKind::EventTime { interval_ms } => write!(f, "EventTime({interval_ms} ms)"),
            TriggerKind::ProcessingTime { interval_ms } => {
                write!(f, "ProcessingTime({interval_ms} ms)")
            }
            TriggerKind::Custom(t) => write!(f, "Custom({})", t.name()),
        }
    }
}

/// A trigger and whether a firing purges the pane (the default) or keeps accumulating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub kind: TriggerKind,
    pub purge: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Trigger {
    /// Fires a key at every `n`-th element since its previous firing.
    pub fn count(n: u64) -> Trigger {
        Trigger {
            kind: TriggerKind::Count(n),
            purge: true,
        }
    }

    /// Fires keys when the watermark crosses a multiple of `interval`.
    pub fn event_time(interval: Duration) -> Trigger {
        Trigger {
            kind: TriggerKind::EventTime {
                interval_ms: ms(interval),
            },
            purge: true,
        }
    }

    /// Fires keys when processing time crosses a multiple of `interval`.
    pub fn processing_time(interval: Duration) -> Trigger {
        Trigger {
            kind: TriggerKind::ProcessingTime {
                interval_ms: ms(interval),
            },
            purge: true,
        }
    }

    pub fn custom(trigger: &'static dyn CustomTrigger) -> Trigger {
        Trigger {
            kind: TriggerKind::Custom(trigger),
            purge: true,
        }
    }

    /// Firings keep the aggregate: each result covers every element of the key so far.
    pub fn accumulating(self) -> Trigger {
        Trigger {
            purge: false,
            ..self
        }
    }

    /// Firings forget the aggregate (the default): each result covers the elements since the previous one.
    pub fn purging(self) -> Trigger {
        Trigger {
            purge: true,
            ..self
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self.kind {
            TriggerKind::Count(0) => Err("a count trigger needs a positive count".into()),
            TriggerKind::EventTime { interval_ms }
            | TriggerKind::ProcessingTime { interval_ms }
                if interval_ms <= 0 =>
            {
                Err("a time trigger needs a positive interval".into())
            }
            _ => Ok(()),
        }
    }

    /// Whether the operator must track the keys with pending elements for time callbacks.
    pub(crate) fn tracks_pending(&self) -> bool {
        match self.kind {
            TriggerKind::ProcessingTime { .. } => true,
            TriggerKind::Custom(t) => t.uses_time(),
            TriggerKind::Count(_) | TriggerKind::EventTime { .. } => false,
        }
    }
}

/// The largest multiple of `interval` at or below `t` (intervals are positive).
pub(crate) fn floor_to(t: i64, interval: i64) -> i64 {
    t.div_euclid(interval).saturating_mul(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not zero-sized: two zero-sized statics may share an address.
    struct Never(#[allow(dead_code)] u8);
    impl CustomTrigger for Never {
        fn on_element(&self, _: &Pane, _: i64) -> bool {
            false
        }
    }
    static NEVER: Never = Never(0);
    static NEVER2: Never = Never(1);

    #[test]
    fn constructors_validation_and_equality() {
        assert!(Trigger::count(0).validate().is_err());
        assert!(Trigger::count(3).validate().is_ok());
        assert!(Trigger::event_time(Duration::ZERO).validate().is_err());
        assert!(Trigger::processing_time(Duration::from_millis(1))
            .validate()
            .is_ok());
        assert!(Trigger::count(3).purge);
        assert!(!Trigger::count(3).accumulating().purge);
        assert!(Trigger::count(3).accumulating().purging().purge);
        assert_eq!(Trigger::custom(&NEVER), Trigger::custom(&NEVER));
        assert_ne!(Trigger::custom(&NEVER), Trigger::custom(&NEVER2));
        assert_ne!(Trigger::count(3), Trigger::count(4));
        assert_eq!(
            format!("{:?}", Trigger::custom(&NEVER).kind),
            "Custom(custom)"
        );
        assert_eq!(floor_to(-1, 10), -10);
        assert_eq!(floor_to(19, 10), 10);
    }
}
