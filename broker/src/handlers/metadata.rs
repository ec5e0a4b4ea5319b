//! Metadata: brokers (just us), the cluster id, and topics with their partitions, all led by this node.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::metadata_request::MetadataRequest;
use millrace_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};

use super::respond;
use crate::state::Broker;
use crate::topics::{validate_topic_name, Topic};

/// "No authorized operations reported", Kafka's sentinel.
const NO_OPERATIONS: i32 = i32::MIN;

fn topic_entry(broker: &Broker, t: &Topic) -> MetadataResponseTopic {
    let node = broker.node_id;
    MetadataResponseTopic {
        error_code: error_code::NONE,
        name: Some(t.name.clone()),
        topic_id: t.id,
        is_internal: t.internal,
        partitions: (0..t.partitions.len() as i32)
            .map(|p| MetadataResponsePartition {
                error_code: error_code::NONE,
                partition_index: p,
                leader_id: node,
                leader_epoch: 0,
                replica_nodes: vec![node],
                isr_nodes: vec![node],
                offline_replicas: vec![],
                ..Default::default()
            })
            .collect(),
        topic_authorized_operations: NO_OPERATIONS,
        ..Default::default()
    }
}

fn error_entry(name: Option<String>, topic_id: [u8; 16], code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic {
        error_code: code,
        name,
        topic_id,
        topic_authorized_operations: NO_OPERATIONS,
        ..Default::default()
    }
}

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: MetadataRequest,
) -> Result<Vec<Bytes>, String> {
    let version = header.api_version;
    // v0: an empty list means all topics; v1+: a null list means all topics, an empty one none.
    let wanted = match req.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list),
    };
    // Before v4 the request had no flag and Kafka auto-created on Metadata.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    let topics = match wanted {
        None => broker
            .topics
            .all()
            .iter()
            .map(|t| topic_entry(broker, t))
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|want| match want.name {
                Some(name) => {
                    if validate_topic_name(&name).is_err() {
                        return error_entry(
                            Some(name),
                            [0; 16],
                            error_code::INVALID_TOPIC_EXCEPTION,
                        );
                    }
                    match broker.topic_or_create(&name, allow_create) {
                        Ok(Some(t)) => topic_entry(broker, &t),
                        Ok(None) => {
                            error_entry(Some(name), [0; 16], error_code::UNKNOWN_TOPIC_OR_PARTITION)
                        }
                        Err(e) => error_entry(Some(name), [0; 16], e.code()),
                    }
                }
                None => match broker.topics.get_by_id(&want.topic_id) {
                    Some(t) => topic_entry(broker, &t),
                    None => error_entry(None, want.topic_id, error_code::UNKNOWN_TOPIC_ID),
                },
            })
            .collect(),
    };
    let resp = MetadataResponse {
        brokers: vec![MetadataResponseBroker {
            node_id: broker.node_id,
            host: broker.advertised_host.clone(),
            port: broker.advertised_port,
            rack: None,
            ..Default::default()
        }],
        cluster_id: Some(broker.topics.cluster_id().to_string()),
        controller_id: broker.node_id,
        topics,
        cluster_authorized_operations: NO_OPERATIONS,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
