//! One client connection: frames in, responses out, in request order.
//!
//! The reader half decodes and handles requests one at a time, in order, so that appends from one producer keep
//! their order. A handler may answer at once or hand back a future (an acks=all produce waiting for its fsync, a
//! fetch long-poll); those futures queue in order to the writer half, which awaits each and writes its response.
//! So a connection keeps pipelining while earlier requests wait, and responses still leave in request order, as
//! Kafka requires. The queue is bounded: a client that never reads its responses stops being read.
//!
//! A connection with no request for `connections.max.idle.ms` and nothing in flight is closed (Kafka's idle
//! timeout); one that has sent part of a request and not the rest within `socket.request.read.timeout.ms` is
//! closed too, so stalled clients do not hold connection slots.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use millrace_protocol::frame::{check_frame, FrameCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::handlers::{self, Reply};
use crate::shutdown::Shutdown;
use crate::state::Broker;

/// Responses that may be outstanding on one connection before we stop reading from it.
const MAX_IN_FLIGHT: usize = 64;

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx));
    let max_frame = broker
        .config
        .get_i64("socket.request.max.bytes")
        .clamp(1024, i32::MAX as i64) as usize;
    let ms = |name: &str| Duration::from_millis(broker.config.get_i64(name).max(1) as u64);
    let idle = ms("connections.max.idle.ms");
    let read_timeout = ms("socket.request.read.timeout.ms");
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // When the first bytes of the request being read arrived (None: between requests).
    let mut partial_since: Option<Instant> = None;
    let mut last_request = Instant::now();
    'conn: loop {
        // Take every whole frame already buffered before reading more.
        loop {
            match check_frame(&buf, max_frame) {
                FrameCheck::Complete { body_len } => {
                    last_request = Instant::now();
                    let mut frame = buf.split_to(4 + body_len);
                    let body: Bytes = frame.split_off(4).freeze();
                    match handlers::handle(&broker, body, peer).await {
                        Ok(Reply::None) => {}
                        Ok(reply) => {
                            if tx.send(reply).await.is_err() {
                                break 'conn;
                            }
                        }
                        Err(reason) => {
                            tracing::debug!(%peer, %reason, "closing connection");
                            break 'conn;
                        }
                    }
                }
                FrameCheck::Incomplete(need) => {
                    if let Some(n) = need {
                        buf.reserve(n.saturating_sub(buf.len()));
                    } else if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(64 * 1024);
                    }
                    break;
                }
                FrameCheck::TooLarge { declared } => {
                    tracing::warn!(%peer, declared, max_frame, "request frame too large; closing connection");
                    break 'conn;
                }
            }
        }
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        let deadline = match partial_since {
            Some(since) => since + read_timeout,
            None => last_request + idle,
        };
        tokio::select! {
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if partial_since.is_some() {
                    tracing::debug!(%peer, ?read_timeout, "a request was not read in time; closing connection");
                    break;
                }
                if tx.capacity() < MAX_IN_FLIGHT {
                    // Responses still in flight (a long poll): not idle.
                    last_request = Instant::now();
                    continue;
                }
                tracing::debug!(%peer, ?idle, "idle connection closed");
                break;
            }
            _ = shutdown.recv() => break,
        }
    }
    // Let queued responses (in-flight requests) finish, then close.
    drop(tx);
    let _ = writer.await;
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Reply>) {
    while let Some(reply) = rx.recv().await {
        let chunks = match reply {
            Reply::Ready(c) => c,
            Reply::Later(fut) => fut.await,
            Reply::None => continue,
        };
        if write_chunks(&mut wr, chunks).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes every chunk with vectored I/O (fetch responses are mostly slices of mapped segments).
async fn write_chunks(wr: &mut OwnedWriteHalf, mut chunks: Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                let rest = chunks[first].split_off(n);
                chunks[first] = rest;
                n = 0;
            }
        }
    }
    Ok(())
}
