//! FindCoordinator: this node coordinates every consumer group. Transaction coordinators (key type 1) are not
//! available until transactions are built.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use millrace_protocol::messages::find_coordinator_response::{
    Coordinator, FindCoordinatorResponse,
};

use super::respond;
use crate::state::Broker;

const GROUP_KEY: i8 = 0;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: FindCoordinatorRequest,
) -> Result<Vec<Bytes>, String> {
    let answer = |key: &str| {
        let code = if req.key_type != GROUP_KEY {
            error_code::COORDINATOR_NOT_AVAILABLE
        } else if key.is_empty() {
            error_code::INVALID_GROUP_ID
        } else {
            error_code::NONE
        };
        let ok = code == error_code::NONE;
        Coordinator {
            key: key.to_string(),
            node_id: if ok { broker.node_id } else { -1 },
            host: if ok {
                broker.advertised_host.clone()
            } else {
                String::new()
            },
            port: if ok { broker.advertised_port } else { -1 },
            error_code: code,
            error_message: None,
            ..Default::default()
        }
    };
    let mut resp = FindCoordinatorResponse::default();
    if header.api_version >= 4 {
        resp.coordinators = req.coordinator_keys.iter().map(|k| answer(k)).collect();
    } else {
        let c = answer(&req.key);
        resp.error_code = c.error_code;
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
    }
    respond(header, |w, v| resp.encode(w, v))
}
