//! DescribeConfigs for topics (resource type 2) and this broker (type 4, named by its node id, or "" for the
//! cluster-wide defaults). Every known setting is listed with its value and source, as Kafka does.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use millrace_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};

use super::respond;
use crate::config::defs::{BROKER, TOPIC};
use crate::config::Source;
use crate::state::Broker;

pub const TOPIC_RESOURCE: i8 = 2;
pub const BROKER_RESOURCE: i8 = 4;
pub const BROKER_LOGGER_RESOURCE: i8 = 8;

fn entry(
    name: &str,
    value: String,
    source: Source,
    read_only: bool,
    type_code: i8,
    synonyms: bool,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult {
        name: name.to_string(),
        value: Some(value.clone()),
        read_only,
        is_default: source == Source::Default,
        config_source: source as i8,
        is_sensitive: false,
        synonyms: if synonyms {
            vec![DescribeConfigsSynonym {
                name: name.to_string(),
                value: Some(value),
                source: source as i8,
                ..Default::default()
            }]
        } else {
            vec![]
        },
        config_type: type_code,
        documentation: None,
        ..Default::default()
    }
}

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: DescribeConfigsRequest,
) -> Result<Vec<Bytes>, String> {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let wanted = |name: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k == name))
            };
            let mut out = DescribeConfigsResult {
                resource_type: res.resource_type,
                resource_name: res.resource_name.clone(),
                ..Default::default()
            };
            match res.resource_type {
                TOPIC_RESOURCE => match broker.topics.get(&res.resource_name) {
                    None => {
                        out.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                        out.error_message =
                            Some(format!("topic {} does not exist", res.resource_name));
                    }
                    Some(t) => {
                        out.configs = TOPIC
                            .iter()
                            .filter(|d| wanted(d.name))
                            .filter_map(|d| {
                                let (v, s) = broker.config.topic_value(&t.configs, d.name)?;
                                Some(entry(
                                    d.name,
                                    v,
                                    s,
                                    false,
                                    d.kind.type_code(),
                                    req.include_synonyms,
                                ))
                            })
                            .collect();
                    }
                },
                BROKER_RESOURCE
                    if res.resource_name.is_empty()
                        || res.resource_name == broker.node_id.to_string() =>
                {
                    out.configs = BROKER
                        .iter()
                        .filter(|d| wanted(d.name))
                        .map(|d| {
                            let (v, s) = broker.config.get_with_source(d.name);
                            entry(
                                d.name,
                                v,
                                s,
                                !d.dynamic,
                                d.kind.type_code(),
                                req.include_synonyms,
                            )
                        })
                        .collect();
                }
                BROKER_RESOURCE => {
                    out.error_code = error_code::INVALID_REQUEST;
                    out.error_message = Some(format!("unknown broker {}", res.resource_name));
                }
                BROKER_LOGGER_RESOURCE => {}
                _ => {
                    out.error_code = error_code::INVALID_REQUEST;
                    out.error_message =
                        Some(format!("unsupported resource type {}", res.resource_type));
                }
            }
            out
        })
        .collect();
    let resp = DescribeConfigsResponse {
        results,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
