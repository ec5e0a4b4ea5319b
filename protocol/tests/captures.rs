//! Every captured client request in ../shared/kafka-captures must decode with our codecs and encode back to the
//! same bytes (Kafka tolerates trailing bytes after a well-formed body, so they are allowed and ignored).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use bytes::Bytes;
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::{api_info, RequestBody};

fn captures_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kafka-captures");
    dir.is_dir().then_some(dir)
}

#[test]
fn captured_requests_round_trip() {
    let Some(dir) = captures_dir() else {
        eprintln!("no captures beside the checkout; skipping");
        return;
    };
    let mut checked = 0;
    let mut skipped = Vec::new();
    for client in std::fs::read_dir(&dir).unwrap() {
        let client = client.unwrap().path();
        if !client.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&client).unwrap() {
            let path = f.unwrap().path();
            let frame = Bytes::from(std::fs::read(&path).unwrap());
            let mut r = Reader::new(frame.clone());
            let mut header = RequestHeader::decode_prefix(&mut r).unwrap();
            let Some(api) = api_info(header.api_key) else {
                skipped.push(path.display().to_string());
                continue;
            };
            if header.api_version < api.min_version || header.api_version > api.max_version {
                skipped.push(path.display().to_string());
                continue;
            }
            let flexible = api.is_flexible(header.api_version);
            header.decode_rest(&mut r, flexible).unwrap();
            let body = RequestBody::decode(header.api_key, header.api_version, &mut r)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let consumed = r.position();
            let mut w = Writer::new();
            header.encode(&mut w, flexible);
            body.encode(&mut w, header.api_version).unwrap();
            let again = w.into_bytes();
            assert_eq!(
                &again[..],
                &frame[..consumed],
                "{} does not round trip",
                path.display()
            );
            // librdkafka 2.16's all-topics Metadata v12 carries 3 stray bytes (librdkafka #5049); Kafka ignores
            // trailing bytes, and so do we, but nothing larger should ever be left over.
            assert!(
                frame.len() - consumed <= 3,
                "{}: {} trailing bytes",
                path.display(),
                frame.len() - consumed
            );
            checked += 1;
        }
    }
    eprintln!(
        "checked {checked} captures; skipped {} of APIs we do not decode",
        skipped.len()
    );
    assert!(checked > 0);
}
