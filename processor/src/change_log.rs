//! A change log of elements that an operator keeps in memory in its own structures (an interval join's
//! buffered elements): the operator says what it added and removed since the last checkpoint, and a
//! checkpoint stages only that into the pipeline's [`Store`](crate::store::Store), under the operator's
//! prefix in its key group. A restore reads the elements back from the store, which is the base plus every
//! increment. So, as for [`KeyedState`](crate::keyed_state::KeyedState), a checkpoint's cost follows the rate
//! of change, not the number of elements held; unlike it, nothing is cached or evicted here, because the
//! operator owns the elements.
//!
//! Invariants: `set` holds exactly the puts and deletions pushed since the last [`ChangeLog::stage`], in
//! order (so a later one wins for a store key, as the store applies change sets); it is `None` while the log
//! is unbound (no backend: the operator then snapshots its elements whole).

use crate::keyed_state::StateHandle;
use crate::operator::TaskInfo;
use crate::state::StateWriter;
use crate::store::changes::{self, ChangeSet};

struct Bound {
    handle: StateHandle,
    prefix: Vec<u8>,
    set: ChangeSet,
}

/// See the module documentation.
#[derive(Default)]
pub struct ChangeLog {
    bound: Option<Bound>,
}

impl ChangeLog {
    /// Binds the log to its task's backend as the operator's state `name`, and calls `f(key, value)` for
    /// every element the store holds for it (what the last checkpoint left). A step that is not keyed, or a
    /// task without a backend, leaves the log unbound and calls nothing. A store that cannot be read fails
    /// the pipeline (operators cannot return errors; the runtime checks the backend before committing).
    pub fn bind(&mut self, task: &TaskInfo, name: &str, mut f: impl FnMut(&[u8], &[u8])) {
        let (Some(handle), Some(group)) = (&task.state, task.key_group) else {
            return;
        };
        let prefix = changes::prefix(&format!("{}\u{1f}{name}", task.operator), group);
        if let Err(e) = handle.store().scan_prefix(&prefix, &mut f) {
            handle.fail(e);
        }
        self.bound = Some(Bound {
            handle: handle.clone(),
            set: ChangeSet::new(&prefix),
            prefix,
        });
    }

    pub fn is_bound(&self) -> bool {
        self.bound.is_some()
    }

    /// Records that the store key `key` now holds what `value` writes (no-op when unbound).
    pub fn put(&mut self, key: &[u8], value: impl Fn(&mut StateWriter)) {
        if let Some(b) = &mut self.bound {
            b.set.push(
                key,
                Some(&|out: &mut Vec<u8>| {
                    let mut w = StateWriter {
                        buf: std::mem::take(out),
                    };
                    value(&mut w);
                    *out = w.buf;
                }),
            );
        }
    }

    /// Records that the store key `key` is gone (no-op when unbound).
    pub fn delete(&mut self, key: &[u8]) {
        if let Some(b) = &mut self.bound {
            b.set.push(key, None);
        }
    }

    /// Changes recorded since the last checkpoint.
    pub fn pending(&self) -> usize {
        self.bound.as_ref().map_or(0, |b| b.set.len())
    }

    /// At a checkpoint: hands what changed since the last one to the backend, which applies it to the store
    /// with the checkpoint. Returns how many changes it staged.
    pub fn stage(&mut self) -> usize {
        let Some(b) = &mut self.bound else { return 0 };
        if b.set.is_empty() {
            return 0;
        }
        let set = std::mem::replace(&mut b.set, ChangeSet::new(&b.prefix));
        let n = set.len();
        b.handle.stage(set.finish());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyed_state::BackendKind;
    use crate::state::StateReader;
    use crate::test_support::{backend, commit, task};

    fn info(h: &StateHandle, group: u16) -> TaskInfo {
        task(h, group, "ij")
    }

    fn load(h: &StateHandle, group: u16) -> Vec<(Vec<u8>, u64)> {
        let mut got = Vec::new();
        let mut log = ChangeLog::default();
        log.bind(&info(h, group), "elements", |k, v| {
            got.push((k.to_vec(), StateReader::new(v).u64().unwrap()))
        });
        assert!(log.is_bound());
        got
    }

    #[test]
    fn only_changes_are_staged_and_a_restore_reads_base_plus_increments() {
        let dir = tempfile::tempdir().unwrap();
        let h = backend(dir.path(), BackendKind::Memory, 1 << 20);
        let mut log = ChangeLog::default();
        log.bind(&info(&h, 7), "elements", |_, _| panic!("empty store"));
        for i in 0..1000u64 {
            log.put(&i.to_be_bytes(), |w| w.u64(i));
        }
        assert_eq!(log.stage(), 1000);
        let full = commit(&h, 1);
        // Ten changes: five deletions and five new values.
        for i in 0..5u64 {
            log.delete(&i.to_be_bytes());
            log.put(&(500 + i).to_be_bytes(), |w| w.u64(i));
        }
        assert_eq!(log.pending(), 10);
        assert_eq!(log.stage(), 10);
        assert_eq!(log.stage(), 0, "nothing changed since");
        let small = commit(&h, 2);
        assert!(
            small * 50 < full,
            "{small} bytes for 10 changes, {full} for 1000"
        );
        let got = load(&h, 7);
        assert_eq!(got.len(), 995);
        assert_eq!(got[0], (5u64.to_be_bytes().to_vec(), 5));
        assert!(got.contains(&(502u64.to_be_bytes().to_vec(), 2)));
        assert!(
            load(&h, 8).is_empty(),
            "another key group's prefix is its own"
        );
    }

    #[test]
    fn an_unbound_log_records_nothing() {
        let mut log = ChangeLog::default();
        log.bind(&TaskInfo::default(), "elements", |_, _| {});
        assert!(!log.is_bound());
        log.put(b"k", |w| w.u64(1));
        log.delete(b"k");
        assert_eq!((log.pending(), log.stage()), (0, 0));
    }
}
