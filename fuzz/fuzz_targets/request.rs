//! Any bytes as a request frame body: header, then the body of whatever API and version the header names.
//! Decoding must never panic, and whatever decodes must encode again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::{api_info, RequestBody};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(Bytes::copy_from_slice(data));
    let Ok(mut header) = RequestHeader::decode_prefix(&mut r) else {
        return;
    };
    let Some(api) = api_info(header.api_key) else {
        return;
    };
    if header.api_version < api.min_version || header.api_version > api.max_version {
        return;
    }
    let flexible = api.is_flexible(header.api_version);
    if header.decode_rest(&mut r, flexible).is_err() {
        return;
    }
    if let Ok(body) = RequestBody::decode(header.api_key, header.api_version, &mut r) {
        let mut w = Writer::new();
        header.encode(&mut w, flexible);
        // Values decoded from the wire are representable at the version they came in.
        body.encode(&mut w, header.api_version)
            .expect("re-encode of a decoded request");
    }
});
