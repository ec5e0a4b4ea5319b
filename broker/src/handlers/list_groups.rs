//! ListGroups: every group with members or committed offsets, filtered by state (v4+) and type (v5+; all our
//! groups are "classic").

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::list_groups_request::ListGroupsRequest;
use millrace_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: ListGroupsRequest,
) -> Result<Vec<Bytes>, String> {
    let state_ok = |s: &str| {
        req.states_filter.is_empty() || req.states_filter.iter().any(|f| f.eq_ignore_ascii_case(s))
    };
    let type_ok = req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|g| type_ok && state_ok(g.state))
        .map(|g| ListedGroup {
            group_id: g.id,
            protocol_type: g.protocol_type,
            group_state: g.state.to_string(),
            group_type: "classic".into(),
            ..Default::default()
        })
        .collect();
    let resp = ListGroupsResponse {
        groups,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
