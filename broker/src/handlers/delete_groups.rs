//! DeleteGroups: removes empty groups and their committed offsets (NON_EMPTY_GROUP while members remain,
//! GROUP_ID_NOT_FOUND for unknown groups).

use std::sync::Arc;

use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use millrace_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};

use super::{respond_later, Reply};
use crate::state::{now_ms, Broker};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: DeleteGroupsRequest,
) -> Result<Reply, String> {
    let broker = broker.clone();
    let header = header.clone();
    Ok(Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for group_id in req.groups_names {
            let error_code = broker.groups.delete(&group_id, now_ms()).await;
            results.push(DeletableGroupResult {
                group_id,
                error_code,
                ..Default::default()
            });
        }
        let resp = DeleteGroupsResponse {
            results,
            ..Default::default()
        };
        respond_later(&header, |w, v| resp.encode(w, v))
    })))
}
