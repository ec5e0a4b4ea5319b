//! JoinGroup: the join phase of a rebalance. The answer waits until the phase ends (every member rejoined, or
//! the rebalance timeout), so it is a deferred reply.

use std::sync::Arc;

use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::join_group_request::JoinGroupRequest;
use millrace_protocol::messages::join_group_response::{
    JoinGroupResponse, JoinGroupResponseMember,
};

use super::{respond_later, Reply};
use crate::groups::JoinRequest;
use crate::state::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: JoinGroupRequest,
    peer: String,
) -> Result<Reply, String> {
    let join = JoinRequest {
        group_id: req.group_id,
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if req.rebalance_timeout_ms < 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        member_id: req.member_id,
        instance_id: req.group_instance_id,
        protocol_type: req.protocol_type,
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name, p.metadata))
            .collect(),
        client_id: header.client_id.clone().unwrap_or_default(),
        client_host: peer,
        require_known_member_id: header.api_version >= 4,
    };
    let broker = broker.clone();
    let header = header.clone();
    // The group transition runs as its own task: it happens even if this connection closes or an earlier
    // reply on it fails to be written; the reply waits for it.
    let task = tokio::spawn(async move {
        let out = broker.groups.join(join).await;
        let resp = JoinGroupResponse {
            error_code: out.error_code,
            generation_id: out.generation,
            protocol_type: out.protocol_type,
            // Before v7 the name is not nullable: an error answer carries an empty one, as Kafka's does.
            protocol_name: Some(out.protocol_name.unwrap_or_default()),
            leader: out.leader,
            member_id: out.member_id,
            members: out
                .members
                .into_iter()
                .map(
                    |(member_id, group_instance_id, metadata)| JoinGroupResponseMember {
                        member_id,
                        group_instance_id,
                        metadata,
                        ..Default::default()
                    },
                )
                .collect(),
            ..Default::default()
        };
        respond_later(&header, |w, v| resp.encode(w, v))
    });
    Ok(Reply::Later(Box::pin(async move {
        task.await.unwrap_or_default()
    })))
}
