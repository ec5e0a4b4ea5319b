//! A barrier for a pipeline's task threads that can be broken: when one task fails, the others stop waiting
//! for it instead of hanging at the next checkpoint.
//!
//! Invariant: `arrived < parties` between generations; `broken` never goes back to false.

use parking_lot::{Condvar, Mutex};

#[derive(Debug)]
pub struct Barrier {
    parties: usize,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug)]
struct State {
    arrived: usize,
    generation: u64,
    broken: bool,
}

/// The barrier was broken: a task failed or the pipeline is being torn down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

impl Barrier {
    pub fn new(parties: usize) -> Self {
        Barrier {
            parties: parties.max(1),
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                broken: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Waits until every party has arrived; `Ok(true)` for exactly one of them (the leader).
    pub fn wait(&self) -> Result<bool, Broken> {
        let mut s = self.state.lock();
        if s.broken {
            return Err(Broken);
        }
        s.arrived += 1;
        if s.arrived == self.parties {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(true);
        }
        let generation = s.generation;
        while s.generation == generation && !s.broken {
            self.cv.wait(&mut s);
        }
        if s.generation == generation {
            return Err(Broken);
        }
        Ok(false)
    }

    pub fn is_broken(&self) -> bool {
        self.state.lock().broken
    }

    pub fn break_it(&self) {
        self.state.lock().broken = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_leader_per_generation() {
        let b = Arc::new(Barrier::new(3));
        let leaders: usize = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10).filter(|_| b.wait() == Ok(true)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(leaders, 10);
    }

    #[test]
    fn breaking_releases_waiters() {
        let b = Arc::new(Barrier::new(2));
        let b2 = b.clone();
        let h = std::thread::spawn(move || b2.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        b.break_it();
        assert_eq!(h.join().ok(), Some(Err(Broken)));
        assert_eq!(b.wait(), Err(Broken));
    }
}
