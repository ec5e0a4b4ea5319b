//! LeaveGroup: one member (v0-2) or a batch of members (v3+, static members by instance id) leave at once,
//! which starts a rebalance for the rest immediately.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::leave_group_request::LeaveGroupRequest;
use millrace_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: LeaveGroupRequest,
) -> Result<Vec<Bytes>, String> {
    let members: Vec<(String, Option<String>)> = if header.api_version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
            .collect()
    } else {
        vec![(req.member_id.clone(), None)]
    };
    let (error_code, codes) = broker.groups.leave(&req.group_id, &members);
    let resp = LeaveGroupResponse {
        error_code,
        members: members
            .into_iter()
            .zip(codes)
            .map(
                |((member_id, group_instance_id), error_code)| MemberResponse {
                    member_id,
                    group_instance_id,
                    error_code,
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
