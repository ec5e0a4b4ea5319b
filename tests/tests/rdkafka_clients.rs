//! librdkafka (through the `rdkafka` crate) against the real binary: produce/consume round trips for every
//! compression, headers, null keys and values, 1 MiB records, 100 partitions, admin calls, ListOffsets by
//! timestamp, and the idempotent producer.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use millrace_tests::Broker;
use rdkafka::admin::{AlterConfig, ConfigResource, NewPartitions, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;

fn sample(n: usize, partition: i32, value_len: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            partition,
            offset: i as i64,
            key: if i % 7 == 3 {
                None
            } else {
                Some(format!("key-{i}").into_bytes())
            },
            value: if i % 11 == 5 {
                None
            } else {
                Some(vec![(i % 251) as u8; value_len + i % 13])
            },
            headers: if i % 2 == 0 {
                vec![
                    ("h1".into(), Some(format!("v{i}").into_bytes())),
                    ("null".into(), None),
                ]
            } else {
                vec![]
            },
            timestamp: None,
        })
        .collect()
}

fn same_content(got: &[Rec], want: &[Rec]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.offset, &g.key, &g.value, &g.headers),
            (w.offset, &w.key, &w.value, &w.headers)
        );
    }
}

#[test]
fn every_compression_round_trips_with_headers_and_nulls() {
    let b = Broker::start().unwrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&b.bootstrap(), &topic, 1, &[]);
        let want = sample(500, 0, 100);
        let p = producer(
            &b.bootstrap(),
            &[("compression.type", codec), ("batch.num.messages", "100")],
        );
        produce_all(&p, &topic, &want);
        let got = consume(&b.bootstrap(), &topic, &[0], want.len());
        same_content(&got, &want);
        assert_eq!(watermarks(&b.bootstrap(), &topic, 0), (0, 500), "{codec}");
    }
}

#[test]
fn one_mib_records() {
    let b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "big", 1, &[]);
    let p = producer(
        &b.bootstrap(),
        &[("message.max.bytes", "1048588"), ("linger.ms", "0")],
    );
    let want: Vec<Rec> = (0..5)
        .map(|i| Rec {
            partition: 0,
            offset: i,
            key: Some(vec![b'k']),
            value: Some(vec![i as u8; 1_040_000]),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&p, "big", &want);
    same_content(&consume(&b.bootstrap(), "big", &[0], 5), &want);

    // One byte over the broker's max.message.bytes is refused with MESSAGE_TOO_LARGE.
    let too_big = Rec {
        value: Some(vec![0; 1_048_600]),
        ..want[0].clone()
    };
    let p = producer(
        &b.bootstrap(),
        &[
            ("message.max.bytes", "2000000"),
            ("linger.ms", "0"),
            ("message.timeout.ms", "5000"),
        ],
    );
    let rec: rdkafka::producer::BaseRecord<'_, [u8], [u8]> =
        rdkafka::producer::BaseRecord::to("big")
            .partition(0)
            .payload(too_big.value.as_deref().unwrap());
    p.send(rec).map_err(|(e, _)| e).unwrap();
    assert!(p.flush(Duration::from_secs(10)).is_ok());
    assert_eq!(
        watermarks(&b.bootstrap(), "big", 0),
        (0, 5),
        "nothing stored for the refused record"
    );
}

#[test]
fn hundred_partitions_explicit_and_partitioned() {
    let b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "wide", 100, &[]);
    let p = producer(&b.bootstrap(), &[]);
    let mut explicit = Vec::new();
    for part in 0..100 {
        for i in 0..3 {
            explicit.push(Rec {
                partition: part,
                offset: i,
                key: None,
                value: Some(vec![part as u8; 10]),
                headers: vec![],
                timestamp: None,
            });
        }
    }
    produce_all(&p, "wide", &explicit);
    let keyed: Vec<Rec> = (0..400)
        .map(|i| Rec {
            partition: -1,
            offset: 0,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(b"x".to_vec()),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&p, "wide", &keyed);
    let mut total = 0;
    for (part, (lo, hi)) in all_watermarks(&b.bootstrap(), "wide", 100)
        .into_iter()
        .enumerate()
    {
        assert_eq!(lo, 0);
        assert!(hi >= 3, "partition {part} has {hi}");
        total += hi;
    }
    assert_eq!(total, 700);
    let all = consume(&b.bootstrap(), "wide", &(0..100).collect::<Vec<_>>(), 700);
    assert_eq!(all.iter().filter(|r| r.key.is_some()).count(), 400);
}

#[test]
fn admin_calls() {
    let b = Broker::start().unwrap();
    let bs = b.bootstrap();
    let a = admin(&bs);
    // validate_only creates nothing.
    let t = rdkafka::admin::NewTopic::new("adm", 3, rdkafka::admin::TopicReplication::Fixed(1))
        .set("retention.ms", "3600000");
    let r = block(a.create_topics(&[t], &opts().validate_only(true))).unwrap();
    assert!(r[0].is_ok());
    let md = consumer(&bs)
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap();
    assert!(md.topics().iter().all(|t| t.name() != "adm"));
    create_topic(&bs, "adm", 3, &[("retention.ms", "3600000")]);
    // A second create fails with TOPIC_ALREADY_EXISTS; replication factor 3 is refused.
    let again = rdkafka::admin::NewTopic::new("adm", 3, rdkafka::admin::TopicReplication::Fixed(1));
    let r = block(a.create_topics(&[again], &opts())).unwrap();
    assert!(
        matches!(
            r[0],
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
        ),
        "{r:?}"
    );
    let rf3 = rdkafka::admin::NewTopic::new("rf3", 1, rdkafka::admin::TopicReplication::Fixed(3));
    let r = block(a.create_topics(&[rf3], &opts())).unwrap();
    assert!(
        matches!(
            r[0],
            Err((
                _,
                rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor
            ))
        ),
        "{r:?}"
    );

    // Describe and alter topic and broker configs.
    let d = block(a.describe_configs(&[ResourceSpecifier::Topic("adm")], &opts())).unwrap();
    let res = d[0].as_ref().unwrap();
    assert_eq!(
        res.get("retention.ms").unwrap().value.as_deref(),
        Some("3600000")
    );
    assert_eq!(
        res.get("cleanup.policy").unwrap().value.as_deref(),
        Some("delete")
    );
    let alter = AlterConfig::new(ResourceSpecifier::Topic("adm"))
        .set("retention.ms", "1000")
        .set("segment.bytes", "1048576");
    let r = block(a.alter_configs(&[alter], &opts())).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let d = block(a.describe_configs(&[ResourceSpecifier::Topic("adm")], &opts())).unwrap();
    let res = d[0].as_ref().unwrap();
    assert_eq!(
        res.get("retention.ms").unwrap().value.as_deref(),
        Some("1000")
    );
    // An invalid value is refused (INVALID_CONFIG; kafka-python's test checks the code) and changes nothing.
    let bad = AlterConfig::new(ResourceSpecifier::Topic("adm")).set("cleanup.policy", "shred");
    let _ = block(a.alter_configs(&[bad], &opts())).unwrap();
    let d = block(a.describe_configs(&[ResourceSpecifier::Topic("adm")], &opts())).unwrap();
    let res = d[0].as_ref().unwrap();
    assert_eq!(
        res.get("cleanup.policy").unwrap().value.as_deref(),
        Some("delete")
    );
    assert_eq!(
        res.get("retention.ms").unwrap().value.as_deref(),
        Some("1000")
    );
    let d = block(a.describe_configs(&[ResourceSpecifier::Broker(1)], &opts())).unwrap();
    let res: &ConfigResource = d[0].as_ref().unwrap();
    assert_eq!(
        res.get("num.partitions").unwrap().value.as_deref(),
        Some("1")
    );

    // Create partitions: grow to 5; shrinking is refused.
    let r = block(a.create_partitions(&[NewPartitions::new("adm", 5)], &opts())).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let r = block(a.create_partitions(&[NewPartitions::new("adm", 2)], &opts())).unwrap();
    assert!(r[0].is_err());
    let md = consumer(&bs)
        .fetch_metadata(Some("adm"), Duration::from_secs(5))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 5);

    // Delete records moves the low watermark.
    let p = producer(&bs, &[]);
    produce_all(&p, "adm", &sample(20, 0, 10));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("adm", 0, rdkafka::Offset::Offset(12))
        .unwrap();
    block(a.delete_records(&tpl, &opts())).unwrap();
    assert_eq!(watermarks(&bs, "adm", 0), (12, 20));

    // Delete the topic; it is gone from metadata.
    let r = block(a.delete_topics(&["adm"], &opts())).unwrap();
    assert!(r[0].is_ok());
    let md = consumer(&bs)
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap();
    assert!(md.topics().iter().all(|t| t.name() != "adm"));
}

#[test]
fn list_offsets_by_timestamp() {
    let b = Broker::start().unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "times", 1, &[]);
    let p = producer(&bs, &[("linger.ms", "50")]);
    let base = 1_700_000_000_000i64;
    let recs: Vec<Rec> = (0..30)
        .map(|i| Rec {
            partition: 0,
            offset: i,
            key: None,
            value: Some(b"t".to_vec()),
            headers: vec![],
            timestamp: Some(base + i * 1000),
        })
        .collect();
    produce_all(&p, "times", &recs);
    let c = consumer(&bs);
    for (ts, want) in [
        (base, 0),
        (base + 500, 1),
        (base + 12_000, 12),
        (base + 29_000, 29),
    ] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("times", 0, rdkafka::Offset::Offset(ts))
            .unwrap();
        let got = c.offsets_for_times(tpl, Duration::from_secs(5)).unwrap();
        assert_eq!(
            got.find_partition("times", 0).unwrap().offset(),
            rdkafka::Offset::Offset(want),
            "ts {ts}"
        );
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("times", 0, rdkafka::Offset::Offset(base + 99_000))
        .unwrap();
    let got = c.offsets_for_times(tpl, Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.find_partition("times", 0).unwrap().offset(),
        rdkafka::Offset::End
    );
}

#[test]
fn idempotent_producer_writes_each_record_once_in_order() {
    let b = Broker::start().unwrap();
    let bs = b.bootstrap();
    create_topic(&bs, "idem", 1, &[]);
    let p = producer(
        &bs,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let want: Vec<Rec> = (0..10_000)
        .map(|i| Rec {
            partition: 0,
            offset: i,
            key: None,
            value: Some(i.to_string().into_bytes()),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    produce_all(&p, "idem", &want);
    let got = consume(&bs, "idem", &[0], want.len());
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.value.as_deref(), Some(i.to_string().as_bytes()));
    }
    drop(p);
}
