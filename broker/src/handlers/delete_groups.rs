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
    let header = header.clone();
    // Every deletion takes effect now, in request order; the reply only waits for them to be on disk.
    let pending: Vec<_> = req
        .groups_names
        .into_iter()
        .map(|group_id| {
            let (code, durable) = broker.groups.delete_now(&group_id, now_ms());
            (group_id, code, durable)
        })
        .collect();
    Ok(Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(pending.len());
        for (group_id, mut error_code, durable) in pending {
            if let Some(d) = durable {
                if let Err(e) = d.wait().await {
                    error_code = e.code();
                }
            }
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
