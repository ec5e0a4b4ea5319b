//! Helpers for unit tests of state that is bound to a backend: a backend over a store in a folder, the task
//! info of one operator instance, and a checkpoint's commit as the runtime does it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::keyed_state::{BackendKind, StateBackend, StateHandle};
use crate::operator::TaskInfo;
use crate::store::Store;

pub fn backend(dir: &Path, kind: BackendKind, budget: usize) -> StateHandle {
    StateBackend::new(Arc::new(Store::open(dir).unwrap()), kind, budget)
}

/// The task info of operator `operator`'s instance for key group `group`, bound to `h`.
pub fn task(h: &StateHandle, group: u16, operator: &str) -> TaskInfo {
    TaskInfo {
        key_group: Some(group),
        operator: operator.into(),
        state: Some(h.clone()),
        ..TaskInfo::default()
    }
}

/// What the runtime does at a checkpoint once every task has staged: seal, make durable, apply. Returns the
/// bytes of the change sets.
pub fn commit(h: &StateHandle, id: u64) -> usize {
    let (epoch, sets) = h.seal();
    let n = sets.iter().map(Bytes::len).sum();
    h.store().apply(id, &sets).unwrap();
    h.mark_applied(epoch);
    n
}
