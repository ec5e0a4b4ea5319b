//! ApiVersions: which APIs and versions we speak.

use bytes::Bytes;
use millrace_protocol::error_code;
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::api_versions_request::ApiVersionsRequest;
use millrace_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

use super::{respond, supported_apis};
use crate::state::Broker;

fn body(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code,
        api_keys: supported_apis()
            .map(|a| ApiVersion {
                api_key: a.key,
                min_version: a.min_version,
                max_version: a.max_version,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub fn handle(
    _broker: &Broker,
    header: &RequestHeader,
    _req: ApiVersionsRequest,
) -> Result<Vec<Bytes>, String> {
    respond(header, |w, v| body(error_code::NONE).encode(w, v))
}

/// The answer to an ApiVersions version we do not know: UNSUPPORTED_VERSION with our ranges, in the v0 layout.
pub fn unsupported_version(_broker: &Broker, header: &RequestHeader) -> Result<Vec<Bytes>, String> {
    let mut h = header.clone();
    h.api_version = 0;
    respond(&h, |w, _| {
        body(error_code::UNSUPPORTED_VERSION).encode(w, 0)
    })
}
