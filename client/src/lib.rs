//! A small async Kafka client built on [`millrace_protocol`]: it speaks to any Kafka-compatible broker.
//!
//! - [`connection`]: one TCP connection with framing, correlation ids, pipelining and the ApiVersions handshake;
//! - [`cluster`]: metadata (partition leaders), topic creation and ListOffsets.
//!
//! `millrace bench` measures brokers with it, and pipelines read and write remote clusters through it. It is
//! deliberately not a full producer or consumer: callers build their requests from the protocol crate's
//! generated messages, so nothing here hides what goes on the wire.

pub mod cluster;
pub mod connection;
pub mod error;

pub use connection::{Connection, Receiver, Sender, Versions};
pub use error::{Error, Result};
