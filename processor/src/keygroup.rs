//! Key groups, as Flink's max parallelism: every key hashes to one of `max_parallelism` key groups, and each of
//! a pipeline's `parallelism` tasks owns a contiguous range of them. Keyed state lives per key group (one
//! operator instance per key group), so a pipeline restarted with another parallelism moves whole key groups
//! between tasks and never has to split one.
//!
//! Invariants: `1 <= parallelism <= max_parallelism <= MAX_KEY_GROUPS`; the ranges of tasks `0..parallelism`
//! partition `0..max_parallelism` in order, and none is empty.

use crate::partitioner::murmur2;

/// The default max parallelism (Flink's default for small jobs).
pub const DEFAULT_MAX_PARALLELISM: usize = 128;
/// Key groups are carried as u16 next to every element after a keyed exchange.
pub const MAX_KEY_GROUPS: usize = 32_768;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroups {
    pub max_parallelism: usize,
    pub parallelism: usize,
}

impl KeyGroups {
    /// Both are clamped into their valid ranges.
    pub fn new(parallelism: usize, max_parallelism: usize) -> KeyGroups {
        let max_parallelism = max_parallelism.clamp(1, MAX_KEY_GROUPS);
        KeyGroups {
            max_parallelism,
            parallelism: parallelism.clamp(1, max_parallelism),
        }
    }

    /// The key group of a key: murmur2 of its bytes (the hash Kafka's partitioner uses), modulo the groups.
    pub fn group_of(&self, key: &[u8]) -> u16 {
        ((murmur2(key) & 0x7fff_ffff) as usize % self.max_parallelism) as u16
    }

    /// The task that owns key group `kg` (Flink's `keyGroupId * parallelism / maxParallelism`).
    pub fn task_of(&self, kg: u16) -> usize {
        usize::from(kg) * self.parallelism / self.max_parallelism
    }

    /// The key groups task `task` owns.
    pub fn groups_of(&self, task: usize) -> std::ops::Range<usize> {
        let (p, m) = (self.parallelism, self.max_parallelism);
        let start = (task * m).div_ceil(p);
        let end = ((task + 1) * m).div_ceil(p).min(m);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranges_partition_the_groups_and_agree_with_task_of(p in 1usize..200, m in 1usize..1000) {
            let g = KeyGroups::new(p, m);
            let mut next = 0;
            for t in 0..g.parallelism {
                let r = g.groups_of(t);
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty());
                for kg in r.clone() {
                    prop_assert_eq!(g.task_of(kg as u16), t);
                }
                next = r.end;
            }
            prop_assert_eq!(next, g.max_parallelism);
        }
    }
}
