//! `bench metadata`: the latency of Metadata requests for one (typically large) topic, one request at a time.

use std::time::Instant;

use anyhow::{Context, Result};
use millrace_protocol::messages::metadata_request::{self, MetadataRequest, MetadataRequestTopic};
use millrace_protocol::messages::metadata_response::MetadataResponse;
use millrace_protocol::RequestBody;
use serde_json::json;

use super::cluster;
use super::report::{Latency, Summary};
use super::MetadataArgs;
use super::CLIENT_ID;

pub async fn run(args: MetadataArgs) -> Result<()> {
    let mut conn = cluster::bootstrap(&args.brokers, CLIENT_ID).await?;
    let started = Instant::now();
    let (topic, created) = cluster::topic(&mut conn, &args.topic, Some(args.partitions)).await?;
    let setup = started.elapsed();
    let version = conn.versions().get(metadata_request::API_KEY)?;
    let req = RequestBody::Metadata(MetadataRequest {
        topics: Some(vec![MetadataRequestTopic {
            name: Some(args.topic.clone()),
            ..Default::default()
        }]),
        allow_auto_topic_creation: false,
        ..Default::default()
    });
    let mut latency = Latency::new()?;
    let mut response_bytes = 0;
    for _ in 0..args.count {
        let t = Instant::now();
        let mut r = conn.call(&req, version).await?;
        response_bytes = r.remaining();
        let resp =
            MetadataResponse::decode(&mut r, version).context("malformed Metadata response")?;
        latency.record(t.elapsed());
        std::hint::black_box(resp);
    }
    let summary = Summary {
        mode: "metadata",
        sides: Vec::new(),
        latency: Some(("metadata_request", latency)),
        extra: [
            ("partitions".to_string(), json!(topic.partitions.len())),
            ("created".to_string(), json!(created)),
            ("setup_s".to_string(), json!(setup.as_secs_f64())),
            ("response_bytes".to_string(), json!(response_bytes)),
            ("metadata_version".to_string(), json!(version)),
        ]
        .into_iter()
        .collect(),
    };
    summary.print(args.json);
    Ok(())
}
