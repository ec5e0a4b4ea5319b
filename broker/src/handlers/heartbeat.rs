//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::heartbeat_request::HeartbeatRequest;
use millrace_protocol::messages::heartbeat_response::HeartbeatResponse;

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: HeartbeatRequest,
) -> Result<Vec<Bytes>, String> {
    let error_code = broker.groups.heartbeat(
        &req.group_id,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    let resp = HeartbeatResponse {
        error_code,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
