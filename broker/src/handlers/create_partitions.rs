//! CreatePartitions: grow a topic to a new partition count (never shrink), optionally validate only.

use bytes::Bytes;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use millrace_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};

use super::respond;
use crate::error::Error;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: CreatePartitionsRequest,
) -> Result<Vec<Bytes>, String> {
    let node = broker.node_id;
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let bad_assignment = t
                .assignments
                .as_ref()
                .is_some_and(|a| a.iter().any(|x| x.broker_ids != [node]));
            let result = if bad_assignment {
                Err(Error::InvalidPartitions(
                    "assignments may only name this node".into(),
                ))
            } else {
                broker
                    .topics
                    .add_partitions(&broker.config, &t.name, t.count, req.validate_only)
            };
            let (error_code, error_message) = match result {
                Ok(()) => (0, None),
                Err(e) => (e.code(), Some(e.to_string())),
            };
            CreatePartitionsTopicResult {
                name: t.name,
                error_code,
                error_message,
                ..Default::default()
            }
        })
        .collect();
    let resp = CreatePartitionsResponse {
        results,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
