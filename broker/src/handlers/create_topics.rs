//! CreateTopics: partition count (or the broker default for -1), replication factor 1 (or -1), an optional
//! explicit assignment that may only name this node, topic settings, and validate_only.

use std::collections::BTreeMap;

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use millrace_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};

use super::respond;
use crate::config::defs::TOPIC;
use crate::error::Error;
use crate::state::Broker;

fn create_one(
    broker: &Broker,
    t: &CreatableTopic,
    validate_only: bool,
) -> Result<CreatableTopicResult, Error> {
    let node = broker.node_id;
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err(Error::InvalidReplicationFactor(t.replication_factor));
    }
    let partitions = if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(Error::Config(
                "both numPartitions or replicationFactor and replicasAssignments were set".into(),
            ));
        }
        let mut seen: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
        seen.sort_unstable();
        if seen.iter().enumerate().any(|(i, &p)| p != i as i32)
            || t.assignments.iter().any(|a| a.broker_ids != [node])
        {
            return Err(Error::InvalidPartitions(
                "replica assignment must name partitions 0..n on this node".into(),
            ));
        }
        t.assignments.len() as i32
    } else if t.num_partitions == -1 {
        broker.config.get_i64("num.partitions").clamp(1, 100_000) as i32
    } else {
        t.num_partitions
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        if let Some(v) = &c.value {
            configs.insert(c.name.clone(), v.clone());
        }
    }
    let topic_id = if validate_only {
        broker.topics.check_create(&t.name, partitions, &configs)?;
        [0u8; 16]
    } else {
        broker
            .topics
            .create(&broker.config, &t.name, partitions, configs.clone())?
            .id
    };
    Ok(CreatableTopicResult {
        name: t.name.clone(),
        topic_id,
        error_code: error_code::NONE,
        num_partitions: partitions,
        replication_factor: 1,
        configs: Some(
            TOPIC
                .iter()
                .filter_map(|d| {
                    let (value, source) = broker.config.topic_value(&configs, d.name)?;
                    Some(CreatableTopicConfigs {
                        name: d.name.to_string(),
                        value: Some(value),
                        read_only: false,
                        config_source: source as i8,
                        is_sensitive: false,
                        ..Default::default()
                    })
                })
                .collect(),
        ),
        ..Default::default()
    })
}

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: CreateTopicsRequest,
) -> Result<Vec<Bytes>, String> {
    let mut seen = std::collections::HashSet::new();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            if !seen.insert(t.name.clone()) {
                return CreatableTopicResult {
                    name: t.name.clone(),
                    error_code: error_code::INVALID_REQUEST,
                    error_message: Some("topic named more than once in the request".into()),
                    num_partitions: -1,
                    replication_factor: -1,
                    ..Default::default()
                };
            }
            create_one(broker, t, req.validate_only).unwrap_or_else(|e| CreatableTopicResult {
                name: t.name.clone(),
                error_code: e.code(),
                error_message: Some(e.to_string()),
                num_partitions: -1,
                replication_factor: -1,
                ..Default::default()
            })
        })
        .collect();
    let resp = CreateTopicsResponse {
        topics,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
