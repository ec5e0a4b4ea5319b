//! InitProducerId for idempotent producers (no transactional id): a fresh producer id at epoch 0, or, when a
//! producer presents its current id and epoch (KIP-360, v3+), the same id with the epoch bumped so that the
//! producer can reset its sequences. Transactional ids need the transaction coordinator, which is not built yet.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use millrace_protocol::messages::init_producer_id_response::InitProducerIdResponse;

use super::respond;
use crate::state::Broker;

pub fn handle(
    broker: &Broker,
    header: &RequestHeader,
    req: InitProducerIdRequest,
) -> Result<Vec<Bytes>, String> {
    let mut resp = InitProducerIdResponse {
        producer_id: -1,
        producer_epoch: -1,
        ..Default::default()
    };
    if req.transactional_id.is_some() {
        resp.error_code = error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
    } else if req.producer_id >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
    } else {
        match broker.topics.next_producer_id(&broker.config) {
            Ok(id) => {
                resp.producer_id = id;
                resp.producer_epoch = 0;
            }
            Err(e) => resp.error_code = e.code(),
        }
    }
    respond(header, |w, v| resp.encode(w, v))
}
