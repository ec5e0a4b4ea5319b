//! Graceful shutdown, as in mini-redis: a broadcast tells every task to stop; each holds a clone of `done` (an
//! mpsc sender) and the server knows all have finished when the channel closes.

use tokio::sync::{broadcast, mpsc};

/// Listens for the shutdown signal. Invariant: once `is_shutdown` is true it stays true.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
    _done: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn new(notify: broadcast::Receiver<()>, done: mpsc::Sender<()>) -> Shutdown {
        Shutdown {
            is_shutdown: false,
            notify,
            _done: done,
        }
    }

    /// Another listener for the same signal (for a task spawned by the holder of this one).
    pub fn clone_receiver(&self) -> Shutdown {
        Shutdown {
            is_shutdown: self.is_shutdown,
            notify: self.notify.resubscribe(),
            _done: self._done.clone(),
        }
    }

    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Resolves when shutdown is signalled (or the sender is gone, which means the same).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
