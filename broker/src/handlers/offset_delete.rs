//! OffsetDelete: removes committed offsets of a group, except for topics an active member subscribes to
//! (GROUP_SUBSCRIBED_TO_TOPIC), as Kafka does.

use std::sync::Arc;

use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use millrace_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};

use super::{respond_later, Reply};
use crate::state::{now_ms, Broker};

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: OffsetDeleteRequest,
) -> Result<Reply, String> {
    let header = header.clone();
    // Effects in request order, now; the reply only waits for the fsync.
    let (mut resp, durable) = {
        let mut resp = OffsetDeleteResponse::default();
        let summary = broker.groups.describe(&req.group_id);
        if summary.state == "Dead" {
            resp.error_code = error_code::GROUP_ID_NOT_FOUND;
            return Ok(Reply::Later(Box::pin(async move {
                respond_later(&header, |w, v| resp.encode(w, v))
            })));
        }
        let subscribed: Vec<String> = summary
            .members
            .iter()
            .flat_map(|m| crate::groups::subscribed_topics(&m.4))
            .collect();
        let mut deletions = Vec::new();
        for t in req.topics {
            let busy = subscribed.contains(&t.name);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if busy {
                        error_code::GROUP_SUBSCRIBED_TO_TOPIC
                    } else {
                        deletions.push(((t.name.clone(), p.partition_index), None));
                        error_code::NONE
                    };
                    OffsetDeleteResponsePartition {
                        partition_index: p.partition_index,
                        error_code: code,
                        ..Default::default()
                    }
                })
                .collect();
            resp.topics.push(OffsetDeleteResponseTopic {
                name: t.name,
                partitions,
                ..Default::default()
            });
        }
        match broker
            .groups
            .offsets
            .apply(&req.group_id, deletions, now_ms())
        {
            Ok(d) => (resp, d),
            Err(e) => {
                resp.error_code = e.code();
                (resp, None)
            }
        }
    };
    Ok(Reply::Later(Box::pin(async move {
        if let Some(d) = durable {
            if let Err(e) = d.wait().await {
                resp.error_code = e.code();
            }
        }
        respond_later(&header, |w, v| resp.encode(w, v))
    })))
}
