//! DescribeGroups: state, protocol, and every member with its metadata and assignment.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use millrace_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: DescribeGroupsRequest,
) -> Result<Vec<Bytes>, String> {
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let s = broker.groups.describe(id);
            DescribedGroup {
                error_code: 0,
                group_id: s.id,
                group_state: s.state.to_string(),
                protocol_type: s.protocol_type,
                protocol_data: s.protocol,
                members: s
                    .members
                    .into_iter()
                    .map(
                        |(
                            member_id,
                            group_instance_id,
                            client_id,
                            client_host,
                            member_metadata,
                            member_assignment,
                        )| {
                            DescribedGroupMember {
                                member_id,
                                group_instance_id,
                                client_id,
                                client_host,
                                member_metadata,
                                member_assignment,
                                ..Default::default()
                            }
                        },
                    )
                    .collect(),
                authorized_operations: i32::MIN,
                ..Default::default()
            }
        })
        .collect();
    let resp = DescribeGroupsResponse {
        groups,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
