//! IncrementalAlterConfigs: SET (0), DELETE (1), APPEND (2) and SUBTRACT (3) on list settings, applied to the
//! current overrides and installed through the same path as AlterConfigs.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use millrace_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};

use super::alter_configs::{apply, current};
use super::describe_configs::TOPIC_RESOURCE;
use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: IncrementalAlterConfigsRequest,
) -> Result<Vec<Bytes>, String> {
    let responses = req
        .resources
        .into_iter()
        .map(|res| {
            let result =
                current(broker, res.resource_type, &res.resource_name).and_then(|mut cfg| {
                    for c in &res.configs {
                        match (c.config_operation, &c.value) {
                            (0, Some(v)) => {
                                cfg.insert(c.name.clone(), v.clone());
                            }
                            (1, _) => {
                                cfg.remove(&c.name);
                            }
                            (2, Some(v)) | (3, Some(v)) => {
                                // Lists grow from the value in force (override, else broker setting, else default),
                                // as Kafka does.
                                let now = match cfg.get(&c.name) {
                                    Some(v) => v.clone(),
                                    None if res.resource_type == TOPIC_RESOURCE => broker
                                        .config
                                        .topic_value(&cfg, &c.name)
                                        .map(|(v, _)| v)
                                        .unwrap_or_default(),
                                    None => broker.config.get(&c.name),
                                };
                                let mut items: Vec<String> = now
                                    .split(',')
                                    .filter(|s| !s.is_empty())
                                    .map(str::to_string)
                                    .collect();
                                for x in v.split(',').filter(|s| !s.is_empty()) {
                                    if c.config_operation == 2 && !items.iter().any(|i| i == x) {
                                        items.push(x.to_string());
                                    } else if c.config_operation == 3 {
                                        items.retain(|i| i != x);
                                    }
                                }
                                cfg.insert(c.name.clone(), items.join(","));
                            }
                            (op, _) => {
                                return Err((
                                    error_code::INVALID_REQUEST,
                                    format!("bad operation {op} on {}", c.name),
                                ));
                            }
                        }
                    }
                    apply(
                        broker,
                        res.resource_type,
                        &res.resource_name,
                        cfg,
                        req.validate_only,
                    )
                });
            let (error_code, error_message) = match result {
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
    let resp = IncrementalAlterConfigsResponse {
        responses,
        ..Default::default()
    };
    respond(header, |w, v| resp.encode(w, v))
}
