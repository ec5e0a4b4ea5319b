//! Request and response headers.
//!
//! Request header v1: api_key, api_version, correlation_id, client_id (nullable classic string); v2 adds a
//! tagged-field section and is used exactly for flexible API versions. Response header v0 is the correlation id;
//! v1 adds tagged fields, for flexible versions, except that ApiVersions responses always use v0 because the client
//! cannot yet know what the broker speaks.

use crate::codec::{RawTaggedField, Reader, Writer};
use crate::error::Result;

pub const API_VERSIONS_KEY: i16 = 18;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub unknown_tagged_fields: Vec<RawTaggedField>,
}

impl RequestHeader {
    /// Reads the fixed part every header version shares; enough to answer even a request we cannot decode.
    pub fn decode_prefix(r: &mut Reader) -> Result<RequestHeader> {
        Ok(RequestHeader {
            api_key: r.i16()?,
            api_version: r.i16()?,
            correlation_id: r.i32()?,
            ..RequestHeader::default()
        })
    }

    /// Reads the rest of the header once the API's flexibility at this version is known.
    pub fn decode_rest(&mut self, r: &mut Reader, flexible: bool) -> Result<()> {
        // client_id stays a classic (non-compact) string even in header v2.
        self.client_id = r.nullable_string(false)?;
        if flexible {
            r.tagged_fields(&mut self.unknown_tagged_fields, |_, _| Ok(false))?;
        }
        Ok(())
    }

    pub fn encode(&self, w: &mut Writer, flexible: bool) {
        w.put_i16(self.api_key);
        w.put_i16(self.api_version);
        w.put_i32(self.correlation_id);
        w.put_nullable_string(self.client_id.as_deref(), false);
        if flexible {
            w.put_tagged_fields(&mut [], &self.unknown_tagged_fields);
        }
    }
}

/// Whether the response to `api_key` at `version` carries header v1 (tagged fields).
pub fn response_header_flexible(api_key: i16, version: i16) -> bool {
    api_key != API_VERSIONS_KEY && crate::api_info(api_key).is_some_and(|a| a.is_flexible(version))
}

/// Writes a response header.
pub fn encode_response_header(w: &mut Writer, correlation_id: i32, flexible: bool) {
    w.put_i32(correlation_id);
    if flexible {
        w.put_uvarint(0);
    }
}

/// Reads a response header (for our own client, `millrace bench`).
pub fn decode_response_header(r: &mut Reader, flexible: bool) -> Result<i32> {
    let id = r.i32()?;
    if flexible {
        r.tagged_fields(&mut Vec::new(), |_, _| Ok(false))?;
    }
    Ok(id)
}
