//! One connection to a Kafka-compatible broker: framing, correlation ids, pipelined requests and the ApiVersions
//! handshake that picks, for every API, the highest version both sides speak.
//!
//! A [`Connection`] is used whole for request/response calls (metadata, topic creation, fetches) and split with
//! [`Connection::split`] into a [`Sender`] and a [`Receiver`] when a producer keeps several requests in flight:
//! Kafka answers the requests of one connection in the order they were sent, so the receiver only checks that
//! each response carries the correlation id it expects.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::frame::{check_frame, FrameCheck};
use millrace_protocol::header::{decode_response_header, response_header_flexible, RequestHeader};
use millrace_protocol::messages::api_versions_request::ApiVersionsRequest;
use millrace_protocol::messages::api_versions_response::ApiVersionsResponse;
use millrace_protocol::{api_info, error_code, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for any one response (a Fetch long poll is far shorter).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response frame accepted: above any sane fetch.max.bytes, below what a garbage size prefix could claim.
const MAX_RESPONSE: usize = 512 * 1024 * 1024;

/// The version of each API this client will use with this broker.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    chosen: HashMap<i16, i16>,
}

impl Versions {
    /// The highest version of `api_key` both sides support; an error naming the API when there is none.
    pub fn get(&self, api_key: i16) -> Result<i16> {
        self.chosen.get(&api_key).copied().ok_or_else(|| {
            let name = api_info(api_key).map_or("?", |a| a.name);
            Error::Broker(format!(
                "the broker supports no version of {name} (API {api_key}) that millrace speaks"
            ))
        })
    }

    /// Intersects the broker's ranges with ours.
    fn negotiate(resp: &ApiVersionsResponse) -> Versions {
        let mut chosen = HashMap::new();
        for theirs in &resp.api_keys {
            if let Some(ours) = api_info(theirs.api_key) {
                let max = ours.max_version.min(theirs.max_version);
                if max >= ours.min_version.max(theirs.min_version) {
                    chosen.insert(theirs.api_key, max);
                }
            }
        }
        Versions { chosen }
    }
}

/// Encodes one request frame (size prefix, header, body) as chunks ready for a vectored write; large record
/// batches stay separate chunks, so they are not copied.
fn encode_request(
    client_id: &str,
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: impl FnOnce(&mut Writer) -> millrace_protocol::Result<()>,
) -> Result<Vec<Bytes>> {
    let flexible = api_info(api_key).is_some_and(|a| a.is_flexible(version));
    let mut w = Writer::with_capacity(256);
    RequestHeader {
        api_key,
        api_version: version,
        correlation_id,
        client_id: Some(client_id.to_string()),
        ..Default::default()
    }
    .encode(&mut w, flexible);
    body(&mut w).map_err(Error::codec(format!(
        "encoding a request of API {api_key} v{version}"
    )))?;
    Ok(w.finish_frame())
}

/// The writing half: assigns correlation ids and writes whole frames.
pub struct Sender {
    stream: OwnedWriteHalf,
    next_id: i32,
    client_id: Arc<str>,
    pub versions: Arc<Versions>,
    pub peer: String,
}

impl Sender {
    /// Writes one request; returns its correlation id.
    pub async fn send(&mut self, body: &RequestBody, version: i16) -> Result<i32> {
        self.send_with(body.api_key(), version, |w| body.encode(w, version))
            .await
    }

    /// Writes one request whose body `encode` writes (so a caller can keep its own typed request).
    pub async fn send_with(
        &mut self,
        api_key: i16,
        version: i16,
        encode: impl FnOnce(&mut Writer) -> millrace_protocol::Result<()>,
    ) -> Result<i32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let chunks = encode_request(&self.client_id, api_key, version, id, encode)?;
        write_all_vectored(&mut self.stream, &chunks)
            .await
            .map_err(Error::io(format!("writing to broker {}", self.peer)))?;
        Ok(id)
    }
}

/// Writes every chunk, with as few system calls as the socket allows.
async fn write_all_vectored(stream: &mut OwnedWriteHalf, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut idx = 0; // first chunk not fully written
    let mut off = 0; // bytes of chunks[idx] already written
    while idx < chunks.len() {
        let mut slices: [IoSlice<'_>; 16] = [IoSlice::new(&[]); 16];
        let mut n = 0;
        for (i, c) in chunks[idx..].iter().take(16).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &c[off..] } else { &c[..] });
            n += 1;
        }
        let mut written = stream.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while idx < chunks.len() && written > 0 {
            let left = chunks[idx].len() - off;
            if written >= left {
                written -= left;
                idx += 1;
                off = 0;
            } else {
                off += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// The reading half: cuts whole frames out of a receive buffer.
pub struct Receiver {
    stream: OwnedReadHalf,
    buf: BytesMut,
    pub peer: String,
}

impl Receiver {
    /// Reads the next response frame and checks it answers `expected_id`; returns a reader over its body.
    pub async fn recv(&mut self, expected_id: i32, api_key: i16, version: i16) -> Result<Reader> {
        let frame = tokio::time::timeout(RESPONSE_TIMEOUT, self.next_frame())
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "no response from broker {} within {} s",
                    self.peer,
                    RESPONSE_TIMEOUT.as_secs()
                ))
            })??;
        let mut r = Reader::new(frame);
        let id =
            decode_response_header(&mut r, response_header_flexible(api_key, version)).map_err(
                Error::codec(format!("malformed response header from {}", self.peer)),
            )?;
        if id != expected_id {
            return Err(Error::Broker(format!(
                "broker {} answered correlation id {id} where {expected_id} was expected (responses out of order)",
                self.peer
            )));
        }
        Ok(r)
    }

    /// Waits for a whole frame; "not enough bytes yet" just means read more.
    async fn next_frame(&mut self) -> Result<Bytes> {
        loop {
            match check_frame(&self.buf, MAX_RESPONSE) {
                FrameCheck::Complete { body_len } => {
                    let mut frame = self.buf.split_to(4 + body_len);
                    let _ = frame.split_to(4);
                    return Ok(frame.freeze());
                }
                FrameCheck::TooLarge { declared } => {
                    return Err(Error::Broker(format!(
                        "broker {} sent a frame of {declared} bytes (not a Kafka response?)",
                        self.peer
                    )))
                }
                FrameCheck::Incomplete(total) => {
                    // Reserve the whole frame at once when its size is known, so a large fetch response is read
                    // into one buffer without repeated growth.
                    let want = total.unwrap_or(4).max(64 * 1024);
                    if self.buf.capacity() - self.buf.len() < want - self.buf.len().min(want) {
                        self.buf.reserve(want - self.buf.len().min(want));
                    }
                    if self.buf.capacity() == self.buf.len() {
                        self.buf.reserve(64 * 1024);
                    }
                    let n = self
                        .stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(Error::io(format!("reading from broker {}", self.peer)))?;
                    if n == 0 {
                        return Err(Error::Broker(format!(
                            "broker {} closed the connection",
                            self.peer
                        )));
                    }
                }
            }
        }
    }

    /// Waits until the broker closes the connection or sends something (for acks=0, where nothing is expected).
    pub async fn expect_silence(&mut self) -> Result<()> {
        let frame = self.next_frame().await?;
        Err(Error::Broker(format!(
            "broker {} sent an unexpected {}-byte frame on an acks=0 connection",
            self.peer,
            frame.len()
        )))
    }
}

/// A connection after the ApiVersions handshake.
pub struct Connection {
    pub sender: Sender,
    pub receiver: Receiver,
}

impl Connection {
    /// Connects to `addr` and negotiates API versions; `client_id` goes in every request header.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Connection> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "cannot connect to broker {addr}: timed out after 10 s"
                ))
            })?
            .map_err(Error::io(format!("cannot connect to broker {addr}")))?;
        stream
            .set_nodelay(true)
            .map_err(Error::io(format!("setting TCP_NODELAY to {addr}")))?;
        let (read, write) = stream.into_split();
        let mut conn = Connection {
            sender: Sender {
                stream: write,
                next_id: 1,
                client_id: client_id.into(),
                versions: Arc::new(Versions::default()),
                peer: addr.to_string(),
            },
            receiver: Receiver {
                stream: read,
                buf: BytesMut::with_capacity(64 * 1024),
                peer: addr.to_string(),
            },
        };
        let versions = conn.handshake().await?;
        conn.sender.versions = Arc::new(versions);
        Ok(conn)
    }

    /// ApiVersions at our highest version; a broker that does not know it answers in the v0 layout with
    /// UNSUPPORTED_VERSION and its own range, and we ask again at the highest version both know.
    async fn handshake(&mut self) -> Result<Versions> {
        let peer = self.sender.peer.clone();
        let ours = api_info(millrace_protocol::header::API_VERSIONS_KEY)
            .ok_or_else(|| Error::Broker("ApiVersions missing from the protocol table".into()))?;
        let mut version = ours.max_version;
        for _ in 0..2 {
            let req = RequestBody::ApiVersions(ApiVersionsRequest {
                client_software_name: "millrace".into(),
                client_software_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            });
            let r = self.call(&req, version).await?;
            // The error code leads every version's body; UNSUPPORTED_VERSION comes in the v0 layout.
            let code = r.clone().i16().map_err(Error::codec(format!(
                "malformed ApiVersions response from {peer}"
            )))?;
            let layout = if code == error_code::UNSUPPORTED_VERSION {
                0
            } else {
                version
            };
            let resp = ApiVersionsResponse::decode(&mut r.clone(), layout).map_err(
                Error::codec(format!("malformed ApiVersions response from {peer}")),
            )?;
            if resp.error_code == error_code::UNSUPPORTED_VERSION {
                let theirs = resp
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ours.key)
                    .ok_or_else(|| {
                        Error::Broker(format!("broker {peer} lists no ApiVersions range"))
                    })?;
                let next = ours.max_version.min(theirs.max_version);
                if next >= version || next < ours.min_version.max(theirs.min_version) {
                    return Err(Error::Broker(format!(
                        "no ApiVersions version in common with broker {peer}"
                    )));
                }
                version = next;
                continue;
            }
            if resp.error_code != error_code::NONE {
                return Err(Error::kafka(
                    format!("ApiVersions refused by {peer}"),
                    resp.error_code,
                ));
            }
            return Ok(Versions::negotiate(&resp));
        }
        Err(Error::Broker(format!(
            "ApiVersions negotiation with {peer} did not converge"
        )))
    }

    pub fn versions(&self) -> &Versions {
        &self.sender.versions
    }

    /// Sends one request and waits for its response.
    pub async fn call(&mut self, body: &RequestBody, version: i16) -> Result<Reader> {
        let id = self.sender.send(body, version).await?;
        self.receiver.recv(id, body.api_key(), version).await
    }

    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}
