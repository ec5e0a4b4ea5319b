//! The Rust examples embed the broker: `cargo run --example orders_enriched -- serve ...` takes the arguments
//! of `millrace serve`, runs the example's pipeline inside it, and a real client (librdkafka) reads its
//! output; SIGTERM stops it cleanly. (What the examples' pipelines compute is tested in the root crate,
//! `src/example_tests.rs`, against the references and the pipeline files.)
//!
//! The example binary is `$MILLRACE_EXAMPLES_DIR/orders_enriched`, else the one cargo built next to this test
//! (`cargo test --workspace` builds the examples first). A missing binary skips the test, or fails it in CI.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::*;
use millrace_tests::{in_ci, workspace_root, Broker};

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

/// `<target>/<profile>/examples/<name>`, from this test's own path (`<target>/<profile>/deps/examples-*`).
fn example_binary(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("MILLRACE_EXAMPLES_DIR") {
        Some(d) => workspace_root().join(d),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .join("examples"),
    };
    let path = dir.join(name);
    path.is_file().then_some(path)
}

fn rec(key: &str, value: Option<String>) -> Rec {
    Rec {
        partition: -1,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        value: value.map(String::into_bytes),
        headers: Vec::new(),
        timestamp: None,
    }
}

#[test]
fn orders_enriched_example_serves_its_pipeline() {
    let Some(bin) = example_binary("orders_enriched") else {
        assert!(
            !in_ci(),
            "no orders_enriched example binary: cargo build --example orders_enriched"
        );
        eprintln!(
            "skipping: no orders_enriched example binary (cargo build --example orders_enriched)"
        );
        return;
    };
    // The harness starts `$MILLRACE_BIN serve --listen 127.0.0.1:0 --data-dir <tmp>`: here, the example.
    std::env::set_var("MILLRACE_BIN", &bin);
    let mut broker = Broker::start().unwrap();
    let bootstrap = broker.bootstrap();
    let p = producer(&bootstrap, &[]);
    // The pipeline created its topics when it started, before the broker listened.
    let user = format!(
        r#"{{"user_id":"u1","name":"Ada","country":"FR","ts":{}}}"#,
        T0 - 1_000
    );
    produce_all(&p, "users", &[rec("u1", Some(user))]);
    let order = |id: &str, user: &str, ts: i64| {
        let v = format!(r#"{{"order_id":"{id}","user_id":"{user}","amount":10,"ts":{ts}}}"#);
        rec(id, Some(v))
    };
    produce_all(
        &p,
        "orders",
        &[
            order("o1", "u1", T0),
            order("o2", "nobody", T0 + 1),
            // Far in the future: once the other partitions go idle (2 s), the watermark passes the two orders.
            order("flush", "nobody", T0 + 100_000_000),
        ],
    );
    let mut out = consume(&bootstrap, "orders_enriched", &[0, 1, 2], 2);
    out.sort_by(|a, b| a.key.cmp(&b.key));
    let values: Vec<serde_json::Value> = out
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(out[0].key.as_deref(), Some(&b"o1"[..]));
    assert_eq!(values[0]["name"], "Ada");
    assert_eq!(values[0]["country"], "FR");
    assert_eq!(values[0]["amount"], 10);
    assert_eq!(out[0].timestamp, Some(T0), "the order's event time");
    assert_eq!(out[1].key.as_deref(), Some(&b"o2"[..]));
    assert!(values[1]["name"].is_null() && values[1]["country"].is_null());
    broker.stop().unwrap();
}
