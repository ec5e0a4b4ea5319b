//! The background half of a roll: fsync the segment that was just sealed, then move the producer snapshot and
//! the recovery checkpoint past it; and the `durable` offset that every fsync advances.
//!
//! Why in the background: sealing a full segment means writing back up to `segment.bytes` of dirty pages, which
//! takes seconds. Kafka does it off the append path too (its "flush-log" task at roll). Appends and reads go on
//! meanwhile; correctness does not depend on the job: a segment whose job has not finished is simply not yet
//! below the recovery checkpoint (recovery validates it), and `wait_durable` fsyncs every segment that is not
//! yet known durable, the sealing one included.
//!
//! Invariants: jobs run one at a time, in roll order, so the recovery checkpoint only ever names an offset
//! below which every segment was fsynced. A truncation bumps `generation` (under `io`) so that a job queued
//! before it writes neither its now-stale snapshot nor its checkpoint.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::checkpoint;
use crate::error::Result;
use crate::names::{offsets_in, segment_file, RECOVERY_CHECKPOINT, SNAPSHOT_SUFFIX};
use crate::segment::SealFiles;

/// How many snapshots of producer state are kept (the newest ones).
const SNAPSHOTS_KEPT: usize = 2;

/// What a roll leaves to do.
#[derive(Debug)]
pub(super) struct SealJob {
    pub files: SealFiles,
    /// Producer state as of `next`, serialized at roll time.
    pub snapshot: Vec<u8>,
    /// The base offset of the new active segment: everything below it is in sealed segments.
    pub next: i64,
    pub generation: u64,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<SealJob>,
    running: bool,
}

#[derive(Debug)]
pub(super) struct Sealer {
    dir: PathBuf,
    queue: Mutex<Queue>,
    idle: Condvar,
    /// Held while snapshots and checkpoints are written or invalidated.
    io: Mutex<()>,
    generation: AtomicU64,
    /// Every offset below it is fsynced.
    durable: AtomicI64,
}

/// Writes the producer state as of `offset` and keeps only the newest snapshots.
pub(super) fn write_snapshot(dir: &std::path::Path, offset: i64, data: &[u8]) -> Result<()> {
    checkpoint::write_atomically(&segment_file(dir, offset, SNAPSHOT_SUFFIX), data)?;
    let snaps = offsets_in(dir, SNAPSHOT_SUFFIX)?;
    for old in snaps.iter().rev().skip(SNAPSHOTS_KEPT) {
        let _ = std::fs::remove_file(segment_file(dir, *old, SNAPSHOT_SUFFIX));
    }
    Ok(())
}

impl Sealer {
    pub fn new(dir: PathBuf, durable: i64) -> Arc<Sealer> {
        Arc::new(Sealer {
            dir,
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
            io: Mutex::new(()),
            generation: AtomicU64::new(0),
            durable: AtomicI64::new(durable),
        })
    }

    pub fn durable(&self) -> i64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Records that everything below `offset` is fsynced.
    pub fn advance(&self, offset: i64) {
        self.durable.fetch_max(offset, Ordering::AcqRel);
    }

    /// After a truncation: nothing above `offset` is durable any more (it is gone).
    pub fn retreat(&self, offset: i64) {
        self.durable.fetch_min(offset, Ordering::AcqRel);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Invalidates queued jobs' snapshots and checkpoints; hold the guard while rewriting them.
    pub fn invalidate(&self) -> MutexGuard<'_, ()> {
        let guard = self.io.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        guard
    }

    /// Queues a job, starting the worker thread if none runs (it exits when the queue is empty: rolls are rare).
    pub fn submit(self: &Arc<Self>, job: SealJob) {
        let mut q = self.queue.lock();
        q.jobs.push_back(job);
        if q.running {
            return;
        }
        q.running = true;
        drop(q);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("millrace-sealer".into())
            .spawn(move || me.drain());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no sealer thread; sealing inline");
            self.drain();
        }
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock();
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.running = false;
                        self.idle.notify_all();
                        return;
                    }
                }
            };
            let next = job.next;
            if let Err(e) = self.run(job) {
                // Nothing is lost: the checkpoint stays behind (recovery validates the segment) and a durability
                // wait fsyncs it itself.
                tracing::error!(dir = %self.dir.display(), next, error = %e, "sealing a rolled segment failed");
            }
        }
    }

    fn run(&self, job: SealJob) -> Result<()> {
        job.files.sync()?;
        let _io = self.io.lock();
        if self.generation() != job.generation {
            return Ok(());
        }
        self.advance(job.next);
        write_snapshot(&self.dir, job.next, &job.snapshot)?;
        checkpoint::write_offset(&self.dir, RECOVERY_CHECKPOINT, job.next)
    }

    /// Blocks until every queued job has run.
    pub fn wait_idle(&self) {
        let mut q = self.queue.lock();
        while q.running || !q.jobs.is_empty() {
            self.idle.wait(&mut q);
        }
    }
}
