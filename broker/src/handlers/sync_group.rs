//! SyncGroup: the leader hands in the assignment; every member waits for its own.

use std::sync::Arc;

use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::sync_group_request::SyncGroupRequest;
use millrace_protocol::messages::sync_group_response::SyncGroupResponse;

use super::{respond_later, Reply};
use crate::state::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: SyncGroupRequest,
) -> Result<Reply, String> {
    let broker = broker.clone();
    let header = header.clone();
    // The group transition runs as its own task: it happens even if this connection closes or an earlier
    // reply on it fails to be written; the reply waits for it.
    let task = tokio::spawn(async move {
        let assignments = req
            .assignments
            .into_iter()
            .map(|a| (a.member_id, a.assignment))
            .collect();
        let out = broker
            .groups
            .sync(
                &req.group_id,
                req.generation_id,
                &req.member_id,
                req.group_instance_id.as_deref(),
                assignments,
            )
            .await;
        let resp = SyncGroupResponse {
            error_code: out.error_code,
            protocol_type: out.protocol_type,
            protocol_name: out.protocol_name,
            assignment: out.assignment,
            ..Default::default()
        };
        respond_later(&header, |w, v| resp.encode(w, v))
    });
    Ok(Reply::Later(Box::pin(async move {
        task.await.unwrap_or_default()
    })))
}
