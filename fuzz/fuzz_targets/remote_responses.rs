//! Any bytes as a response from a remote cluster, as a pipeline's remote source or sink reads it: the
//! response decoders at every version, and the read_committed filter over fetched record batches, must never
//! panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use millrace_processor::remote::source::Aborted;
use millrace_protocol::codec::Reader;
use millrace_protocol::messages::{
    api_versions_response::ApiVersionsResponse, create_topics_response::CreateTopicsResponse,
    fetch_response::FetchResponse, init_producer_id_response::InitProducerIdResponse,
    list_offsets_response::ListOffsetsResponse, metadata_response::MetadataResponse,
    produce_response::ProduceResponse,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    let version = i16::from(selector & 0x0f);
    let r = || Reader::new(body.clone());
    match selector >> 4 {
        0 => {
            let _ = ApiVersionsResponse::decode(&mut r(), version);
        }
        1 => {
            let _ = MetadataResponse::decode(&mut r(), version);
        }
        2 => {
            let _ = ListOffsetsResponse::decode(&mut r(), version);
        }
        3 => {
            let _ = ProduceResponse::decode(&mut r(), version);
        }
        4 => {
            let _ = InitProducerIdResponse::decode(&mut r(), version);
        }
        5 => {
            let _ = CreateTopicsResponse::decode(&mut r(), version);
        }
        6 => {
            if let Ok(resp) = FetchResponse::decode(&mut r(), version) {
                for p in resp.responses.iter().flat_map(|t| &t.partitions) {
                    let mut a = Aborted::default();
                    for t in p.aborted_transactions.iter().flatten() {
                        a.add(t.producer_id, t.first_offset);
                    }
                    if let Some(records) = &p.records {
                        let _ = a.committed(records, 0);
                    }
                }
            }
        }
        _ => {
            // Raw record batches with an aborted transaction per producer id seen in the first bytes.
            let mut a = Aborted::default();
            for (i, b) in rest.iter().take(4).enumerate() {
                a.add(i64::from(*b), i as i64);
            }
            let _ = a.committed(&body, i64::from(selector & 0x0f));
        }
    }
});
