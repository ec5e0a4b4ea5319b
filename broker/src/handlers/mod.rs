//! Request dispatch: one handler file per API. A handler decodes nothing itself (the protocol crate did), calls
//! storage or the registry, and encodes its reply; Kafka error codes are chosen here, at the edge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::header::{
    encode_response_header, response_header_flexible, RequestHeader, API_VERSIONS_KEY,
};
use millrace_protocol::{api_info, ApiInfo, RequestBody};

use crate::state::Broker;

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;

/// What a request gets back.
pub enum Reply {
    /// No response at all (Produce with acks=0).
    None,
    /// A response frame, ready to write.
    Ready(Vec<Bytes>),
    /// A response that needs waiting for (an fsync, a long-poll); the writer awaits it in request order.
    Later(Pin<Box<dyn Future<Output = Vec<Bytes>> + Send>>),
}

/// The APIs this broker answers, by key. Versions are the protocol crate's ranges for them.
const HANDLED: &[i16] = &[
    0,  // Produce
    1,  // Fetch
    2,  // ListOffsets
    3,  // Metadata
    8,  // OffsetCommit
    9,  // OffsetFetch
    10, // FindCoordinator
    11, // JoinGroup
    12, // Heartbeat
    13, // LeaveGroup
    14, // SyncGroup
    15, // DescribeGroups
    16, // ListGroups
    18, // ApiVersions
    19, // CreateTopics
    20, // DeleteTopics
    21, // DeleteRecords
    22, // InitProducerId
    23, // OffsetForLeaderEpoch
    32, // DescribeConfigs
    33, // AlterConfigs
    37, // CreatePartitions
    42, // DeleteGroups
    44, // IncrementalAlterConfigs
    47, // OffsetDelete
    60, // DescribeCluster
];

/// The APIs and versions we advertise in ApiVersions.
pub fn supported_apis() -> impl Iterator<Item = &'static ApiInfo> {
    HANDLED.iter().filter_map(|&k| api_info(k))
}

/// Encodes a response frame: header (v0 or v1 as the API and version require) then the body.
pub fn respond(
    header: &RequestHeader,
    encode: impl FnOnce(&mut Writer, i16) -> millrace_protocol::Result<()>,
) -> Result<Vec<Bytes>, String> {
    let mut w = Writer::with_capacity(256);
    encode_response_header(
        &mut w,
        header.correlation_id,
        response_header_flexible(header.api_key, header.api_version),
    );
    encode(&mut w, header.api_version).map_err(|e| format!("cannot encode response: {e}"))?;
    Ok(w.finish_frame())
}

/// [`respond`] for deferred replies: an encoding failure (a bug: a value this version cannot carry) is logged,
/// and the client gets no answer for that request rather than a corrupt one.
pub fn respond_later(
    header: &RequestHeader,
    encode: impl FnOnce(&mut Writer, i16) -> millrace_protocol::Result<()>,
) -> Vec<Bytes> {
    respond(header, encode).unwrap_or_else(|e| {
        tracing::error!(api_key = header.api_key, version = header.api_version, error = %e, "response not sent");
        Vec::new()
    })
}

/// Handles one request frame (without its size prefix). `Err` means: close the connection (malformed frame,
/// unknown API, unsupported version), as Kafka does.
pub async fn handle(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: std::net::SocketAddr,
) -> Result<Reply, String> {
    let mut r = Reader::new(frame);
    let mut header =
        RequestHeader::decode_prefix(&mut r).map_err(|e| format!("bad request header: {e}"))?;
    let info = supported_apis()
        .find(|a| a.key == header.api_key)
        .ok_or_else(|| format!("unknown API key {}", header.api_key))?;
    if header.api_version < info.min_version || header.api_version > info.max_version {
        if header.api_key == API_VERSIONS_KEY {
            // Answered in the v0 layout so that any client can read our ranges and retry (KIP-511).
            return Ok(Reply::Ready(api_versions::unsupported_version(
                broker, &header,
            )?));
        }
        return Err(format!(
            "API {} does not support version {}",
            info.name, header.api_version
        ));
    }
    header
        .decode_rest(&mut r, info.is_flexible(header.api_version))
        .map_err(|e| format!("bad request header: {e}"))?;
    // Trailing bytes after a well-formed body are ignored, as Kafka does (librdkafka 2.16 sends some).
    let body = RequestBody::decode(header.api_key, header.api_version, &mut r).map_err(|e| {
        format!(
            "malformed {} v{} request: {e}",
            info.name, header.api_version
        )
    })?;
    let ready = |frame| Ok(Reply::Ready(frame));
    match body {
        RequestBody::ApiVersions(req) => ready(api_versions::handle(broker, &header, req)?),
        RequestBody::Metadata(req) => ready(metadata::handle(broker, &header, req)?),
        RequestBody::Produce(req) => produce::handle(broker, &header, req),
        RequestBody::Fetch(req) => fetch::handle(broker, &header, req),
        RequestBody::ListOffsets(req) => ready(list_offsets::handle(broker, &header, req)?),
        RequestBody::InitProducerId(req) => ready(init_producer_id::handle(broker, &header, req)?),
        RequestBody::CreateTopics(req) => ready(create_topics::handle(broker, &header, req)?),
        RequestBody::DeleteTopics(req) => ready(delete_topics::handle(broker, &header, req)?),
        RequestBody::CreatePartitions(req) => {
            ready(create_partitions::handle(broker, &header, req)?)
        }
        RequestBody::DeleteRecords(req) => ready(delete_records::handle(broker, &header, req)?),
        RequestBody::DescribeConfigs(req) => ready(describe_configs::handle(broker, &header, req)?),
        RequestBody::AlterConfigs(req) => ready(alter_configs::handle(broker, &header, req)?),
        RequestBody::IncrementalAlterConfigs(req) => {
            ready(incremental_alter_configs::handle(broker, &header, req)?)
        }
        RequestBody::DescribeCluster(req) => ready(describe_cluster::handle(broker, &header, req)?),
        RequestBody::FindCoordinator(req) => ready(find_coordinator::handle(broker, &header, req)?),
        RequestBody::JoinGroup(req) => join_group::handle(broker, &header, req, peer.to_string()),
        RequestBody::SyncGroup(req) => sync_group::handle(broker, &header, req),
        RequestBody::Heartbeat(req) => ready(heartbeat::handle(broker, &header, req)?),
        RequestBody::LeaveGroup(req) => ready(leave_group::handle(broker, &header, req)?),
        RequestBody::OffsetCommit(req) => offset_commit::handle(broker, &header, req),
        RequestBody::OffsetFetch(req) => ready(offset_fetch::handle(broker, &header, req)?),
        RequestBody::DescribeGroups(req) => ready(describe_groups::handle(broker, &header, req)?),
        RequestBody::ListGroups(req) => ready(list_groups::handle(broker, &header, req)?),
        RequestBody::DeleteGroups(req) => delete_groups::handle(broker, &header, req),
        RequestBody::OffsetDelete(req) => offset_delete::handle(broker, &header, req),
        RequestBody::OffsetForLeaderEpoch(req) => {
            ready(offset_for_leader_epoch::handle(broker, &header, req)?)
        }
        #[allow(unreachable_patterns)]
        other => Err(format!("API {} is not handled", other.api_key())),
    }
}
