//! Pipeline files: the shipped example, the JSON steps, and errors that name the line.

use millrace_processor::file::parse;
use millrace_processor::{Message, TestDriver};

fn text(b: &Option<bytes::Bytes>) -> String {
    String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
}

fn example() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipelines/clicks_per_user.toml"
    );
    std::fs::read_to_string(path).expect("the example ships with the repository")
}

#[test]
fn the_reference_example_counts_clicks_per_user() {
    let job = parse(&example(), "clicks_per_user.toml").expect("valid");
    assert_eq!(job.name(), "clicks_per_user");
    assert_eq!(job.sources()[0].name, "clicks");
    assert_eq!(job.sources()[0].partitions, Some(3));
    assert_eq!(job.sinks()[0].name, "clicks_per_user");
    assert_eq!(
        job.late_topics().first().map(|l| l.name.as_str()),
        Some("clicks_per_user.late")
    );
    let mut d = TestDriver::new(&job, 3);
    let click = |u: &str, ts| Message::new(Some(u.as_bytes()), Some(b"{}"), ts);
    d.send(0, click("alice", 1_000));
    d.send(1, click("alice", 2_000));
    d.send(2, click("bob", 9_999));
    d.send(0, click("alice", 10_000));
    d.send(1, click("x", 10_000));
    d.send(2, click("x", 10_000));
    let out = d.outputs();
    let got: Vec<(String, String)> = out.iter().map(|r| (text(&r.key), text(&r.value))).collect();
    assert_eq!(
        got,
        vec![
            (
                "alice".to_string(),
                r#"{"window_start":0,"window_end":10000,"count":2}"#.to_string()
            ),
            (
                "bob".to_string(),
                r#"{"window_start":0,"window_end":10000,"count":1}"#.to_string()
            ),
        ]
    );
    d.send(0, click("carol", 500));
    let late = d.late();
    assert_eq!(late.len(), 1);
    assert_eq!(text(&late[0].value), "{}");
    assert_eq!(late[0].timestamp, 500);
}

#[test]
fn json_filters_projection_and_keys() {
    let src = r#"
name = "big_orders"
[source]
topic = "orders"
[[filter]]
field = "amount"
op = "ge"
value = 100
[[filter]]
field = "status"
op = "ne"
value = "cancelled"
project = ["customer.id", "amount"]
[key_by]
field = "customer.id"
[sink]
topic = "big_orders"
"#;
    // `project` after [[filter]] would belong to the filter table: TOML puts top-level keys first.
    let err = parse(src, "f.toml").expect_err("project inside [[filter]]");
    assert!(err.to_string().contains("f.toml:13"), "{err}");

    let src = r#"
name = "big_orders"
project = ["customer.id", "amount"]
[source]
topic = "orders"
event_time = { field = "ts" }
[[filter]]
field = "amount"
op = "ge"
value = 100
[[filter]]
field = "status"
op = "ne"
value = "cancelled"
[key_by]
field = "customer.id"
[sink]
topic = "big_orders"
"#;
    let job = parse(src, "f.toml").expect("valid");
    let mut d = TestDriver::new(&job, 1);
    let order = |v: &str| Message::new(None, Some(v.as_bytes()), 1);
    d.send(
        0,
        order(r#"{"customer":{"id":"c1"},"amount":150,"status":"new","ts":77}"#),
    );
    d.send(
        0,
        order(r#"{"customer":{"id":"c2"},"amount":50,"status":"new"}"#),
    );
    d.send(
        0,
        order(r#"{"customer":{"id":"c3"},"amount":500,"status":"cancelled"}"#),
    );
    d.send(0, order("not json"));
    let out = d.outputs();
    assert_eq!(out.len(), 1);
    assert_eq!(text(&out[0].key), "c1");
    assert_eq!(text(&out[0].value), r#"{"amount":150,"customer.id":"c1"}"#);
    assert_eq!(d.watermark(), 77, "event time from the ts field");
}

#[test]
fn sum_of_a_json_field_per_key_field() {
    let src = r#"
name = "spend"
[source]
topic = "orders"
[key_by]
field = "user"
[window]
type = "hopping"
size_ms = 10000
advance_ms = 5000
[aggregate]
op = "sum"
field = "amount"
[sink]
topic = "spend"
[late]
topic = "spend.late"
"#;
    let job = parse(src, "s.toml").expect("valid");
    let mut d = TestDriver::new(&job, 1);
    let ev = |v: &str, ts| Message::new(None, Some(v.as_bytes()), ts);
    d.send(0, ev(r#"{"user":"u","amount":2.5}"#, 6_000));
    d.send(0, ev(r#"{"user":"u","amount":1}"#, 7_000));
    d.send(0, ev(r#"{"user":"v","amount":1}"#, 30_000));
    let got: Vec<String> = d.outputs().iter().map(|r| text(&r.value)).collect();
    assert_eq!(
        got,
        vec![
            r#"{"window_start":0,"window_end":10000,"sum":3.5}"#,
            r#"{"window_start":5000,"window_end":15000,"sum":3.5}"#,
        ]
    );
}

#[test]
fn errors_name_the_line() {
    let cases = [
        ("name = \"x\"\n[source]\ntopic = \"a\"\nbogus = 1\n[sink]\ntopic = \"b\"\n", 4, "unknown field"),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\n[key_by]\nrecord_key = true\n[window]\ntype = \"weekly\"\nsize_ms = 5\n[aggregate]\nop = \"count\"\n[sink]\ntopic = \"b\"\n[late]\ntopic = \"c\"\n",
            6,
            "unknown window type",
        ),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\n[key_by]\nrecord_key = true\n[window]\ntype = \"tumbling\"\nsize_ms = 5\n[aggregate]\nop = \"count\"\n[sink]\ntopic = \"b\"\n",
            6,
            "[late]",
        ),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\n[window]\ntype = \"tumbling\"\nsize_ms = 5\n[aggregate]\nop = \"count\"\n[sink]\ntopic = \"b\"\n",
            4,
            "[key_by]",
        ),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\npartitions = 0\n[sink]\ntopic = \"b\"\n",
            4,
            "partitions",
        ),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\n[[filter]]\nfield = \"f\"\nop = \"like\"\nvalue = 1\n[sink]\ntopic = \"b\"\n",
            6,
            "unknown filter op",
        ),
        (
            "name = \"x\"\n[source]\ntopic = \"a\"\n[key_by]\nrecord_key = true\n[window]\ntype = \"tumbling\"\nsize_ms = 5\n[aggregate]\nop = \"sum\"\n[sink]\ntopic = \"b\"\n[late]\ntopic = \"c\"\n",
            9,
            "needs the JSON field",
        ),
        ("name = \"x\"\n[source]\ntopic = \"a\"\n", 1, "missing field `sink`"),
        ("name = \"x\"\n[source\n", 2, ""),
    ];
    for (src, line, what) in cases {
        let err = parse(src, "p.toml").expect_err(src).to_string();
        assert!(
            err.starts_with(&format!("p.toml:{line}:")),
            "{err:?} should point at line {line}"
        );
        assert!(err.contains(what), "{err:?} should mention {what:?}");
    }
}

#[test]
fn a_graph_file_keeps_a_running_aggregate_per_key_on_the_disk_backend() {
    let src = r#"
name = "spend"
[settings]
state_backend = "disk"
state_memory_budget_mb = 64
[[sources]]
topic = "orders"
[[steps]]
name = "totals"
type = "aggregate"
input = "orders"
key = { field = "user" }
aggregates = [{ op = "sum", field = "amount", as = "spent" }, { op = "count" }]
[[sinks]]
input = "totals"
topic = "spend"
"#;
    let job = parse(src, "spend.toml").expect("valid");
    assert_eq!(
        job.settings().state_backend,
        millrace_processor::keyed_state::BackendKind::Disk
    );
    assert_eq!(job.settings().state_memory_budget, 64 << 20);
    let mut d = TestDriver::new(&job, 1);
    let order = |u: &str, amount: i64, ts| {
        let v = format!(r#"{{"user":"{u}","amount":{amount}}}"#);
        Message::new(None, Some(v.as_bytes()), ts)
    };
    d.send(0, order("ann", 5, 1));
    d.send(0, order("bob", 7, 2));
    d.send(0, order("ann", 10, 3));
    d.finish();
    let out: Vec<(String, String, i64)> = d
        .outputs()
        .iter()
        .map(|r| (text(&r.key), text(&r.value), r.timestamp))
        .collect();
    assert_eq!(
        out,
        [
            (
                "ann".into(),
                r#"{"count":1,"spent":5,"user":"ann"}"#.into(),
                1
            ),
            (
                "bob".into(),
                r#"{"count":1,"spent":7,"user":"bob"}"#.into(),
                2
            ),
            (
                "ann".into(),
                r#"{"count":2,"spent":15,"user":"ann"}"#.into(),
                3
            ),
        ]
    );

    let bad = src.replace(r#"state_backend = "disk""#, r#"state_backend = "tape""#);
    let e = parse(&bad, "spend.toml").err().unwrap().to_string();
    assert!(e.starts_with("spend.toml:4:"), "{e}");
    assert!(e.contains("\"memory\" or \"disk\""), "{e}");
}

#[test]
fn a_graph_file_names_remote_clusters_for_sources_and_sinks() {
    let src = r#"
name = "mirror"
[[sources]]
topic = "orders"
"bootstrap.servers" = "10.0.0.1:9092, 10.0.0.2:9092"
[[sinks]]
input = "orders"
topic = "orders_copy"
bootstrap_servers = "10.0.0.3:9092"
[[sinks]]
input = "orders"
topic = "orders_local"
"#;
    let job = parse(src, "mirror.toml").expect("valid");
    assert_eq!(
        job.sources()[0].cluster.as_deref(),
        Some("10.0.0.1:9092,10.0.0.2:9092")
    );
    let clusters: Vec<Option<&str>> = job.sinks().iter().map(|t| t.cluster.as_deref()).collect();
    assert_eq!(clusters, [Some("10.0.0.3:9092"), None]);

    for bad in ["", "nohost", "h:port", ":9092", "h:99999"] {
        let text = src.replace("10.0.0.3:9092", bad);
        let e = parse(&text, "mirror.toml").err().unwrap().to_string();
        assert!(e.starts_with("mirror.toml:9:"), "{bad:?}: {e}");
        assert!(e.contains("host:port"), "{e}");
    }
}
