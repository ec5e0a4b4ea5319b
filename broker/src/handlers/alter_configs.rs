//! AlterConfigs (replace a resource's whole set of overrides) and the shared apply step that
//! IncrementalAlterConfigs also uses.

use std::collections::BTreeMap;

use bytes::Bytes;
use millrace_protocol::error_code::{self, ErrorCode};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::alter_configs_request::AlterConfigsRequest;
use millrace_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};

use super::describe_configs::{BROKER_RESOURCE, TOPIC_RESOURCE};
use super::respond;
use crate::config::defs::broker_def;
use crate::config::validate_topic_setting;
use crate::error::Error;
use crate::state::Broker;

/// The current overrides of a resource: a topic's own settings, or the broker's dynamic ones.
pub fn current(
    broker: &Broker,
    resource_type: i8,
    name: &str,
) -> Result<BTreeMap<String, String>, (ErrorCode, String)> {
    match resource_type {
        TOPIC_RESOURCE => broker.topics.get(name).map(|t| t.configs.clone()).ok_or((
            error_code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("topic {name} does not exist"),
        )),
        BROKER_RESOURCE if name.is_empty() || name == broker.node_id.to_string() => {
            Ok(broker.config.dynamic_values())
        }
        BROKER_RESOURCE => Err((
            error_code::INVALID_REQUEST,
            format!("unknown broker {name}"),
        )),
        other => Err((
            error_code::INVALID_REQUEST,
            format!("unsupported resource type {other}"),
        )),
    }
}

/// Validates and (unless `validate_only`) installs `wanted` as the resource's complete set of overrides.
pub fn apply(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    wanted: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), (ErrorCode, String)> {
    let fail = |e: Error| (e.code(), e.to_string());
    current(broker, resource_type, name)?;
    if resource_type == TOPIC_RESOURCE {
        for (k, v) in &wanted {
            validate_topic_setting(k, v).map_err(fail)?;
        }
        if !validate_only {
            broker
                .topics
                .set_configs(&broker.config, name, wanted)
                .map_err(fail)?;
        }
        return Ok(());
    }
    for (k, v) in &wanted {
        let def = broker_def(k).ok_or((
            error_code::INVALID_CONFIG,
            format!("unknown broker setting {k}"),
        ))?;
        if !def.dynamic {
            return Err((
                error_code::INVALID_CONFIG,
                format!("{k} cannot be updated dynamically"),
            ));
        }
        def.kind
            .validate(v)
            .map_err(|r| (error_code::INVALID_CONFIG, format!("{k}: {r}")))?;
    }
    if !validate_only {
        let old = broker.config.dynamic_values();
        for k in old.keys().filter(|k| !wanted.contains_key(*k)) {
            broker.config.set_dynamic(k, None).map_err(fail)?;
        }
        for (k, v) in &wanted {
            broker.config.set_dynamic(k, Some(v)).map_err(fail)?;
        }
        broker
            .topics
            .reapply_broker_config(&broker.config)
            .map_err(fail)?;
    }
    Ok(())
}

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: AlterConfigsRequest,
) -> Result<Vec<Bytes>, String> {
    let responses = req
        .resources
        .into_iter()
        .map(|res| {
            let wanted: BTreeMap<String, String> = res
                .configs
                .into_iter()
                .filter_map(|c| Some((c.name, c.value?)))
                .collect();
            let (error_code, error_message) = match apply(
                broker,
                res.resource_type,
                &res.resource_name,
                wanted,
                req.validate_only,
            ) {
                Ok(()) => (error_code::NONE, None),
                Err((code, msg)) => (code, Some(msg)),
            };
            AlterConfigsResourceResponse {
                error_code,
                error_message,
                resource_type: res.resource_type,
                resource_name: res.resource_name,
                ..Default::default()
            }
        })
        .collect();
    let resp = AlterConfigsResponse {
        responses,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
