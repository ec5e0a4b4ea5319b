//! DeleteTopics by name (v1-5) or by name or topic id (v6+).

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use millrace_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: DeleteTopicsRequest,
) -> Result<Vec<Bytes>, String> {
    let mut targets: Vec<(Option<String>, [u8; 16])> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), [0; 16]))
        .collect();
    targets.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    let responses = targets
        .into_iter()
        .map(|(name, id)| {
            let mut out = DeletableTopicResult {
                name: name.clone(),
                topic_id: id,
                ..Default::default()
            };
            if !broker.config.get_bool("delete.topic.enable") {
                out.error_code = error_code::TOPIC_DELETION_DISABLED;
                return out;
            }
            let topic = match &name {
                Some(n) => broker.topics.get(n),
                None => broker.topics.get_by_id(&id),
            };
            let Some(topic) = topic else {
                out.error_code = if name.is_none() {
                    error_code::UNKNOWN_TOPIC_ID
                } else {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                };
                return out;
            };
            out.name = Some(topic.name.clone());
            out.topic_id = topic.id;
            if topic.internal {
                out.error_code = error_code::INVALID_TOPIC_EXCEPTION;
                out.error_message = Some("internal topics cannot be deleted".into());
                return out;
            }
            if let Err(e) = broker.topics.delete(&broker.config, &topic.name) {
                out.error_code = e.code();
                out.error_message = Some(e.to_string());
            }
            out
        })
        .collect();
    let resp = DeleteTopicsResponse {
        responses,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
