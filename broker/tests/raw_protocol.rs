//! The broker in-process on a free port, driven with raw frames built by the protocol crate: checks the wire
//! behaviour that real clients depend on (ApiVersions fallback, request ordering, error codes, bad frames).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use millrace_broker::{Broker, BrokerConfig};
use millrace_protocol::codec::{Reader, Writer};
use millrace_protocol::header::{decode_response_header, RequestHeader};
use millrace_protocol::messages::api_versions_request::ApiVersionsRequest;
use millrace_protocol::messages::api_versions_response::ApiVersionsResponse;
use millrace_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use millrace_protocol::messages::create_topics_response::CreateTopicsResponse;
use millrace_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use millrace_protocol::messages::describe_configs_response::DescribeConfigsResponse;
use millrace_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use millrace_protocol::messages::fetch_response::FetchResponse;
use millrace_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use millrace_protocol::messages::incremental_alter_configs_response::IncrementalAlterConfigsResponse;
use millrace_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use millrace_protocol::messages::list_offsets_response::ListOffsetsResponse;
use millrace_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use millrace_protocol::messages::produce_response::ProduceResponse;
use millrace_protocol::records::BatchBuilder;
use millrace_protocol::{api_info, error_code, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct TestBroker {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::load(
        None,
        vec![],
        vec![("data.dir".to_string(), dir.path().display().to_string())],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broker: Arc<Broker> = Broker::open(config, "127.0.0.1".into(), addr.port() as i32).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(millrace_broker::server::run(
        listener,
        broker,
        rx,
        Duration::from_secs(1),
    ));
    TestBroker {
        addr,
        _dir: dir,
        stop: Some(tx),
    }
}

fn frame(api_key: i16, version: i16, correlation_id: i32, body: &RequestBody) -> Vec<u8> {
    let flexible = api_info(api_key).is_some_and(|a| a.is_flexible(version));
    let mut w = Writer::new();
    RequestHeader {
        api_key,
        api_version: version,
        correlation_id,
        client_id: Some("raw".into()),
        ..Default::default()
    }
    .encode(&mut w, flexible);
    body.encode(&mut w, version).unwrap();
    let b = w.into_bytes();
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

async fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

async fn call(s: &mut TcpStream, api_key: i16, version: i16, body: RequestBody) -> Reader {
    s.write_all(&frame(api_key, version, 7, &body))
        .await
        .unwrap();
    let mut r = Reader::new(read_frame(s).await.expect("response"));
    let flexible = api_key != 18 && api_info(api_key).is_some_and(|a| a.is_flexible(version));
    assert_eq!(decode_response_header(&mut r, flexible).unwrap(), 7);
    r
}

#[tokio::test]
async fn api_versions_unknown_version_gets_v0_answer_with_ranges() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&frame(
        18,
        99,
        1,
        &RequestBody::ApiVersions(ApiVersionsRequest::default()),
    ))
    .await
    .unwrap();
    let mut r = Reader::new(read_frame(&mut s).await.unwrap());
    assert_eq!(decode_response_header(&mut r, false).unwrap(), 1);
    let resp = ApiVersionsResponse::decode(&mut r, 0).unwrap();
    assert_eq!(resp.error_code, error_code::UNSUPPORTED_VERSION);
    assert!(resp
        .api_keys
        .iter()
        .any(|k| k.api_key == 0 && k.min_version == 0 && k.max_version >= 11));
    // And the connection still works for a version we know.
    let mut r = call(
        &mut s,
        18,
        3,
        RequestBody::ApiVersions(ApiVersionsRequest::default()),
    )
    .await;
    assert_eq!(
        ApiVersionsResponse::decode(&mut r, 3).unwrap().error_code,
        0
    );
}

#[tokio::test]
async fn oversized_and_garbage_frames_close_the_connection() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).await.unwrap();
    assert!(
        read_frame(&mut s).await.is_none(),
        "oversized frame must close"
    );

    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 10, 0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff])
        .await
        .unwrap();
    assert!(
        read_frame(&mut s).await.is_none(),
        "malformed Metadata must close"
    );

    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1])
        .await
        .unwrap();
    assert!(
        read_frame(&mut s).await.is_none(),
        "unknown API key must close"
    );

    // The broker is still fine.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut r = call(
        &mut s,
        18,
        3,
        RequestBody::ApiVersions(ApiVersionsRequest::default()),
    )
    .await;
    assert_eq!(
        ApiVersionsResponse::decode(&mut r, 3).unwrap().error_code,
        0
    );
}

fn produce(topic: &str, batch: Bytes, acks: i16) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks,
        timeout_ms: 5000,
        topic_data: vec![TopicProduceData {
            name: topic.into(),
            partition_data: vec![PartitionProduceData {
                index: 0,
                records: Some(batch),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[tokio::test]
async fn produce_fetch_and_error_codes() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let create = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: "t".into(),
            num_partitions: 1,
            replication_factor: 1,
            ..Default::default()
        }],
        timeout_ms: 1000,
        ..Default::default()
    });
    let mut r = call(&mut s, 19, 7, create).await;
    assert_eq!(
        CreateTopicsResponse::decode(&mut r, 7).unwrap().topics[0].error_code,
        0
    );

    let mut bb = BatchBuilder::new(1000);
    bb.push(1000, Some(b"k"), Some(b"v"), &[]);
    bb.push(1001, None, None, &[]);
    let batch = bb.finish();
    for (acks, expected_offset) in [(1i16, 0i64), (-1, 2)] {
        let mut r = call(&mut s, 0, 9, produce("t", batch.clone(), acks)).await;
        let resp = ProduceResponse::decode(&mut r, 9).unwrap();
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, expected_offset));
    }

    // A flipped byte in the records: CORRUPT_MESSAGE, nothing stored.
    let mut bad = batch.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let mut r = call(&mut s, 0, 9, produce("t", Bytes::from(bad), 1)).await;
    let resp = ProduceResponse::decode(&mut r, 9).unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        error_code::CORRUPT_MESSAGE
    );

    // The internal offsets topic is listed as internal and refuses client writes.
    let mut r = call(
        &mut s,
        0,
        9,
        produce("__consumer_offsets", batch.clone(), 1),
    )
    .await;
    let resp = ProduceResponse::decode(&mut r, 9).unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        error_code::INVALID_TOPIC_EXCEPTION
    );

    // Unknown topic, and Produce v2.
    let mut r = call(&mut s, 0, 9, produce("nope", batch.clone(), 1)).await;
    let resp = ProduceResponse::decode(&mut r, 9).unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        error_code::UNKNOWN_TOPIC_OR_PARTITION
    );
    let mut r = call(&mut s, 0, 2, produce("t", batch.clone(), 1)).await;
    let resp = ProduceResponse::decode(&mut r, 2).unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        error_code::UNSUPPORTED_VERSION
    );

    // Fetch from 0 returns both batches; from 4 long-polls until max_wait, then returns nothing.
    let fetch = |offset| {
        RequestBody::Fetch(FetchRequest {
            max_wait_ms: 200,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    fetch_offset: offset,
                    partition_max_bytes: 1 << 20,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    let mut r = call(&mut s, 1, 11, fetch(0)).await;
    let resp = FetchResponse::decode(&mut r, 11).unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 4));
    assert_eq!(p.records.as_ref().unwrap().len(), 2 * batch.len());
    let started = std::time::Instant::now();
    let mut r = call(&mut s, 1, 11, fetch(4)).await;
    let resp = FetchResponse::decode(&mut r, 11).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        resp.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap()
            .len(),
        0
    );
    let mut r = call(&mut s, 1, 11, fetch(99)).await;
    let resp = FetchResponse::decode(&mut r, 11).unwrap();
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        error_code::OFFSET_OUT_OF_RANGE
    );
}

#[tokio::test]
async fn incremental_alter_configs_and_max_timestamp() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let create = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: "c".into(),
            num_partitions: 1,
            replication_factor: -1,
            ..Default::default()
        }],
        timeout_ms: 1000,
        ..Default::default()
    });
    call(&mut s, 19, 7, create).await;
    let op = |name: &str, operation: i8, value: Option<&str>| AlterableConfig {
        name: name.into(),
        config_operation: operation,
        value: value.map(str::to_string),
        ..Default::default()
    };
    let alter = |configs| {
        RequestBody::IncrementalAlterConfigs(IncrementalAlterConfigsRequest {
            resources: vec![AlterConfigsResource {
                resource_type: 2,
                resource_name: "c".into(),
                configs,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    // SET, APPEND to a list setting, then DELETE back to the default.
    let mut r = call(
        &mut s,
        44,
        1,
        alter(vec![
            op("retention.ms", 0, Some("5000")),
            op("cleanup.policy", 2, Some("compact")),
        ]),
    )
    .await;
    assert_eq!(
        IncrementalAlterConfigsResponse::decode(&mut r, 1)
            .unwrap()
            .responses[0]
            .error_code,
        0
    );
    let describe = || {
        RequestBody::DescribeConfigs(DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: 2,
                resource_name: "c".into(),
                configuration_keys: None,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    let value = |resp: &DescribeConfigsResponse, name: &str| {
        resp.results[0]
            .configs
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value.clone())
            .unwrap()
    };
    let mut r = call(&mut s, 32, 4, describe()).await;
    let d = DescribeConfigsResponse::decode(&mut r, 4).unwrap();
    assert_eq!(value(&d, "retention.ms"), "5000");
    assert_eq!(value(&d, "cleanup.policy"), "delete,compact");
    let mut r = call(
        &mut s,
        44,
        1,
        alter(vec![
            op("retention.ms", 1, None),
            op("cleanup.policy", 3, Some("delete")),
        ]),
    )
    .await;
    assert_eq!(
        IncrementalAlterConfigsResponse::decode(&mut r, 1)
            .unwrap()
            .responses[0]
            .error_code,
        0
    );
    let mut r = call(&mut s, 32, 4, describe()).await;
    let d = DescribeConfigsResponse::decode(&mut r, 4).unwrap();
    assert_eq!(value(&d, "retention.ms"), "604800000");
    assert_eq!(value(&d, "cleanup.policy"), "compact");
    // An invalid value: INVALID_CONFIG.
    let mut r = call(
        &mut s,
        44,
        1,
        alter(vec![op("segment.bytes", 0, Some("-5"))]),
    )
    .await;
    assert_eq!(
        IncrementalAlterConfigsResponse::decode(&mut r, 1)
            .unwrap()
            .responses[0]
            .error_code,
        error_code::INVALID_CONFIG
    );

    // ListOffsets -3 (max timestamp) names the record that carries it, inside a batch.
    let mut bb = BatchBuilder::new(100);
    bb.push(100, None, Some(b"a"), &[]);
    bb.push(900, None, Some(b"b"), &[]);
    bb.push(300, None, Some(b"c"), &[]);
    call(&mut s, 0, 9, produce("c", bb.finish(), 1)).await;
    let list = |ts| {
        RequestBody::ListOffsets(ListOffsetsRequest {
            replica_id: -1,
            topics: vec![ListOffsetsTopic {
                name: "c".into(),
                partitions: vec![ListOffsetsPartition {
                    partition_index: 0,
                    timestamp: ts,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    for (ts, want) in [
        (-3i64, (1i64, 900i64)),
        (-1, (3, -1)),
        (-2, (0, -1)),
        (200, (1, 900)),
        (1000, (-1, -1)),
    ] {
        let mut r = call(&mut s, 2, 8, list(ts)).await;
        let resp = ListOffsetsResponse::decode(&mut r, 8).unwrap();
        let p = &resp.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset, p.timestamp),
            (0, want.0, want.1),
            "timestamp {ts}"
        );
    }
}

fn commit(group: &str, offset: i64) -> RequestBody {
    use millrace_protocol::messages::offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    RequestBody::OffsetCommit(OffsetCommitRequest {
        group_id: group.into(),
        generation_id_or_member_epoch: -1,
        topics: vec![OffsetCommitRequestTopic {
            name: "t".into(),
            partitions: vec![OffsetCommitRequestPartition {
                partition_index: 0,
                committed_offset: offset,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn fetch_committed(group: &str) -> RequestBody {
    use millrace_protocol::messages::offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestTopic,
    };
    RequestBody::OffsetFetch(OffsetFetchRequest {
        group_id: group.into(),
        topics: Some(vec![OffsetFetchRequestTopic {
            name: "t".into(),
            partition_indexes: vec![0],
            ..Default::default()
        }]),
        ..Default::default()
    })
}

fn committed_in(body: Bytes) -> i64 {
    use millrace_protocol::messages::offset_fetch_response::OffsetFetchResponse;
    let mut r = Reader::new(body);
    decode_response_header(&mut r, false).unwrap();
    OffsetFetchResponse::decode(&mut r, 5).unwrap().topics[0].partitions[0].committed_offset
}

/// A commit takes effect in request order: an OffsetFetch pipelined right behind it on the same connection
/// sees it, and a client that closes its connection before reading the answer has still committed.
#[tokio::test]
async fn a_commit_takes_effect_before_requests_pipelined_behind_it() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let create = RequestBody::CreateTopics(CreateTopicsRequest {
        topics: vec![CreatableTopic {
            name: "t".into(),
            num_partitions: 1,
            replication_factor: 1,
            ..Default::default()
        }],
        timeout_ms: 1000,
        ..Default::default()
    });
    call(&mut s, 19, 7, create).await;
    let mut both = frame(8, 2, 1, &commit("g", 42));
    both.extend(frame(9, 5, 2, &fetch_committed("g")));
    s.write_all(&both).await.unwrap();
    read_frame(&mut s).await.expect("commit answered");
    assert_eq!(committed_in(read_frame(&mut s).await.unwrap()), 42);

    // Commit and hang up at once, without reading the answer.
    let mut gone = TcpStream::connect(b.addr).await.unwrap();
    gone.write_all(&frame(8, 2, 3, &commit("h", 7)))
        .await
        .unwrap();
    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        s.write_all(&frame(9, 5, 4, &fetch_committed("h")))
            .await
            .unwrap();
        let got = committed_in(read_frame(&mut s).await.unwrap());
        if got == 7 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the commit of a closed connection was lost"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
