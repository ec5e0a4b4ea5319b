//! Protocol hot paths: decoding a real captured Produce request (header + body, records stay zero-copy), and
//! validating a 1 MiB record batch (shape + CRC-32C), which every produced batch goes through.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use millrace_protocol::records::{validate_batch, BatchBuilder};
use millrace_protocol::{api_info, RequestBody};

/// The largest captured rdkafka_performance Produce frame, or a built one of similar shape when the captures are
/// not beside the checkout.
fn produce_frame() -> Bytes {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/kafka-captures/librdkafka-2.12.1-rdkafka_performance"
    );
    let captured = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("Produce_"))
            })
            .filter_map(|p| std::fs::read(p).ok())
            .max_by_key(|b| b.len())
    });
    if let Some(frame) = captured {
        return Bytes::from(frame);
    }
    let mut b = BatchBuilder::new(0);
    for i in 0..200 {
        b.push(i, Some(b"key"), Some(&[7u8; 1000]), &[]);
    }
    let req = ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        topic_data: vec![TopicProduceData {
            name: "bench".into(),
            partition_data: vec![PartitionProduceData {
                index: 0,
                records: Some(b.finish()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut w = Writer::new();
    RequestHeader {
        api_key: 0,
        api_version: 10,
        correlation_id: 1,
        client_id: Some("bench".into()),
        ..Default::default()
    }
    .encode(&mut w, true);
    req.encode(&mut w, 10).expect("encode");
    w.into_bytes()
}

fn decode_produce(c: &mut Criterion) {
    let frame = produce_frame();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("produce_request", |b| {
        b.iter(|| {
            let mut r = Reader::new(frame.clone());
            let mut h = RequestHeader::decode_prefix(&mut r).expect("header");
            let flexible = api_info(h.api_key).is_some_and(|a| a.is_flexible(h.api_version));
            h.decode_rest(&mut r, flexible).expect("header");
            RequestBody::decode(h.api_key, h.api_version, &mut r).expect("body")
        })
    });
    g.finish();
}

fn validate_1mib(c: &mut Criterion) {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    while b.size() < (1 << 20) - 1100 {
        b.push(1_700_000_000_000, Some(b"key"), Some(&[42u8; 1024]), &[]);
    }
    let batch = b.finish();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.bench_function("batch_1mib", |bench| {
        bench.iter(|| validate_batch(&batch).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, decode_produce, validate_1mib);
criterion_main!(benches);
