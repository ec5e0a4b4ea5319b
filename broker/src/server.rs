//! The accept loop: one task per connection, a semaphore capping connections (`max.connections`: accepting
//! waits for a free slot), a cap per client address (`max.connections.per.ip`: a connection over it is closed
//! at once, so one address cannot take every slot), and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
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
    let per_ip_max = broker
        .config
        .get_i64("max.connections.per.ip")
        .clamp(1, i64::from(u32::MAX)) as usize;
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
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
            let ip = peer.ip();
            {
                let mut counts = per_ip.lock();
                let n = counts.entry(ip).or_insert(0);
                if *n >= per_ip_max {
                    tracing::debug!(%peer, per_ip_max, "too many connections from this address; closing");
                    drop(stream);
                    continue;
                }
                *n += 1;
            }
            let broker = broker.clone();
            let shutdown = Shutdown::new(notify_tx.subscribe(), done_tx.clone());
            let per_ip = per_ip.clone();
            tokio::spawn(async move {
                connection::serve(stream, peer, broker, shutdown).await;
                let mut counts = per_ip.lock();
                if let Some(n) = counts.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&ip);
                    }
                }
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
