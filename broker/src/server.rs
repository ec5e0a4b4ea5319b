//! The accept loop: one task per connection, a semaphore capping connections, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::connection;
use crate::shutdown::Shutdown;
use crate::state::Broker;

/// Serves `listener` until `signal` resolves, then stops accepting, lets connections finish their in-flight
/// requests (up to `grace`), and flushes every log.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, signal: impl Future, grace: Duration) {
    let (notify_tx, _) = broadcast::channel::<()>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let max = broker.config.get_i64("max.connections").clamp(1, 1_000_000) as usize;
    let limit = Arc::new(Semaphore::new(max));
    let background = broker.start_background(Shutdown::new(notify_tx.subscribe(), done_tx.clone()));

    let accept = async {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let broker = broker.clone();
            let shutdown = Shutdown::new(notify_tx.subscribe(), done_tx.clone());
            tokio::spawn(async move {
                connection::serve(stream, peer, broker, shutdown).await;
                drop(permit);
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = signal => tracing::info!("shutting down"),
    }
    drop(listener);
    let _ = notify_tx.send(());
    drop(done_tx);
    drop(background);
    if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
        tracing::warn!("connections still busy after {grace:?}; closing anyway");
    }
    if let Err(e) = broker.close() {
        tracing::error!(error = %e, "flush on shutdown failed");
    }
}
