//! `millrace bench` against the real broker binary: exact record counts, parseable `--json`, and clear failures
//! (non-zero exit, a message naming the cause) when the broker is unreachable or refuses a request.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use millrace_tests::{binary, Broker};

fn bench(args: &[&str]) -> Result<Output> {
    Command::new(binary()?)
        .arg("bench")
        .args(args)
        .output()
        .context("running millrace bench")
}

/// Runs a bench that must succeed; returns its JSON summary.
fn bench_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet"]);
    let out = bench(&all)?;
    if !out.status.success() {
        bail!(
            "millrace bench {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("summary is not one JSON object: {stdout:?}"))
}

fn records(v: &serde_json::Value, side: &str) -> u64 {
    v[side]["records"].as_u64().unwrap()
}

#[test]
fn produce_consume_e2e_counts_are_exact() -> Result<()> {
    let broker = Broker::start()?;
    let b = broker.bootstrap();

    let p = bench_json(&[
        "produce",
        "--brokers",
        &b,
        "--topic",
        "bench",
        "--partitions",
        "3",
        "--count",
        "20000",
        "--record-size",
        "200",
        "--connections",
        "2",
        "--in-flight",
        "3",
        "--batch-size",
        "16384",
        "--key-distribution",
        "uniform:100",
    ])?;
    assert_eq!(p["mode"], "produce");
    assert_eq!(records(&p, "produce"), 20_000);
    // Values of 200 bytes and keys "0".."99" (one or two digits).
    let bytes = p["produce"]["bytes"].as_u64().unwrap();
    assert!((20_000 * 201..=20_000 * 202).contains(&bytes), "{bytes}");
    assert!(p["latency"]["count"].as_u64().unwrap() > 0);
    assert!(p["latency"]["p99_ms"].as_f64().unwrap() >= p["latency"]["p50_ms"].as_f64().unwrap());

    // Everything, counted from batch headers; by count, then by time (which must not overcount).
    let c = bench_json(&[
        "consume",
        "--brokers",
        &b,
        "--topic",
        "bench",
        "--count",
        "20000",
        "--consumers",
        "2",
    ])?;
    assert_eq!(records(&c, "consume"), 20_000);
    let c = bench_json(&[
        "consume",
        "--brokers",
        &b,
        "--topic",
        "bench",
        "--duration",
        "1500ms",
    ])?;
    assert_eq!(records(&c, "consume"), 20_000);
    let c = bench_json(&[
        "consume",
        "--brokers",
        &b,
        "--topic",
        "bench",
        "--count",
        "12345",
    ])?;
    assert_eq!(records(&c, "consume"), 12_345);

    let e = bench_json(&[
        "e2e",
        "--brokers",
        &b,
        "--topic",
        "bench-e2e",
        "--rate",
        "10000",
        "--count",
        "20000",
    ])?;
    assert_eq!(records(&e, "produce"), 20_000);
    assert_eq!(records(&e, "consume"), 20_000);
    assert_eq!(e["missing_records"].as_u64(), Some(0));
    assert_eq!(e["latency_kind"], "end_to_end");
    assert_eq!(e["latency"]["count"].as_u64(), Some(20_000));
    Ok(())
}

#[test]
fn every_codec_and_acks_setting_round_trips() -> Result<()> {
    let broker = Broker::start()?;
    let b = broker.bootstrap();
    let mut total = 0;
    for (codec, acks) in [
        ("none", "all"),
        ("gzip", "1"),
        ("snappy", "all"),
        ("lz4", "1"),
        ("zstd", "-1"),
    ] {
        let p = bench_json(&[
            "produce",
            "--brokers",
            &b,
            "--topic",
            "codecs",
            "--count",
            "3000",
            "--compression",
            codec,
            "--acks",
            acks,
            "--batch-size",
            "65536",
            "--key-distribution",
            "sequential",
        ])?;
        assert_eq!(records(&p, "produce"), 3000, "{codec}");
        total += 3000;
    }
    // acks=0: no responses; the consumer below proves the records arrived.
    let p = bench_json(&[
        "produce",
        "--brokers",
        &b,
        "--topic",
        "codecs",
        "--count",
        "3000",
        "--acks",
        "0",
    ])?;
    assert_eq!(records(&p, "produce"), 3000);
    total += 3000;
    let c = bench_json(&[
        "consume",
        "--brokers",
        &b,
        "--topic",
        "codecs",
        "--count",
        &total.to_string(),
        "--duration",
        "20s",
    ])?;
    assert_eq!(records(&c, "consume"), total);
    Ok(())
}

#[test]
fn unreachable_broker_fails_clearly() -> Result<()> {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    for sub in ["produce", "consume", "e2e"] {
        let out = bench(&[sub, "--brokers", &addr, "--count", "10"])?;
        assert!(!out.status.success(), "{sub} succeeded against {addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot connect to broker {addr}")),
            "{sub}: {err}"
        );
        assert!(
            err.lines().count() <= 2,
            "one clear line, not a backtrace: {err}"
        );
    }
    Ok(())
}

#[test]
fn refused_requests_name_the_kafka_error() -> Result<()> {
    let broker = Broker::start()?;
    let b = broker.bootstrap();
    let out = bench(&[
        "consume",
        "--brokers",
        &b,
        "--topic",
        "no-such-topic",
        "--count",
        "1",
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 UNKNOWN_TOPIC_OR_PARTITION"), "{err}");

    // A batch above message.max.bytes (1048588).
    let out = bench(&[
        "produce",
        "--brokers",
        &b,
        "--topic",
        "big",
        "--count",
        "1",
        "--record-size",
        "1200000",
        "--batch-size",
        "2000000",
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10 MESSAGE_TOO_LARGE"), "{err}");
    Ok(())
}

#[test]
fn pipeline_throughput_runs_both_pipelines_to_completion() -> Result<()> {
    let v = bench_json(&[
        "pipeline",
        "--kind",
        "both",
        "--events",
        "40000",
        "--bidders",
        "100",
        "--window-ms",
        "1000",
    ])?;
    assert_eq!(v["workload"], "pipeline");
    assert_eq!(v["events"], 40_000);
    assert!(
        v["baseline"]["events_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{v}"
    );
    let pipes = v["pipelines"].as_array().cloned().unwrap_or_default();
    assert_eq!(pipes.len(), 2, "{v}");
    // 3 in 4 bids pass the stateless filter (the closer at offset 40,000 too); the keyed count writes one result
    // per (bidder, window): 100 bidders over 4 one-second windows.
    assert_eq!(pipes[0]["name"], "stateless_map_filter");
    assert_eq!(pipes[0]["outputs"], 30_001);
    assert_eq!(pipes[1]["name"], "keyed_tumbling_count");
    assert_eq!(pipes[1]["outputs"], 400);
    Ok(())
}
