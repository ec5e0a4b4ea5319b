//! A bounded pipeline as a batch job: `millrace pipeline run FILE --data-dir DIR` over a stopped broker's
//! data reads every source to its end, fires every window (the last ones too: the end of input is the end
//! of time), commits, and exits 0; a client reading the output after a restart sees exact results.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use millrace_tests::{binary, Broker};

const BASE: i64 = 1_767_225_600_000;

const FILE: &str = r#"
name = "daily_totals"

[[sources]]
topic = "sales"
partitions = 2
event_time = { field = "ts" }
end = "end"

[[steps]]
name = "per_shop"
type = "window"
input = "sales"
key = { field = "shop" }
window = { type = "tumbling", size_ms = 60000 }
aggregates = [{ op = "sum", field = "amount", as = "total" }, { op = "count", as = "sales" }]
late = { topic = "daily_totals.late" }

[[sinks]]
input = "per_shop"
topic = "daily_totals"
partitions = 1
"#;

#[test]
fn a_batch_pipeline_runs_to_the_end_and_exits_0() {
    let mut b = Broker::start().unwrap();
    create_topic(&b.bootstrap(), "sales", 2, &[]);
    let mut recs = Vec::new();
    let mut want: BTreeMap<(String, i64), (i64, u64)> = BTreeMap::new();
    for i in 0..500i64 {
        let shop = format!("s{}", i % 7);
        let ts = BASE + i * 1_000;
        let amount = i % 13;
        let e = want
            .entry((shop.clone(), ts / 60_000 * 60_000))
            .or_default();
        e.0 += amount;
        e.1 += 1;
        recs.push(Rec {
            partition: (i % 2) as i32,
            offset: 0,
            key: Some(shop.clone().into_bytes()),
            value: Some(format!(r#"{{"shop":"{shop}","amount":{amount},"ts":{ts}}}"#).into_bytes()),
            headers: Vec::new(),
            timestamp: Some(ts),
        });
    }
    produce_all(&producer(&b.bootstrap(), &[]), "sales", &recs);
    b.stop().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daily_totals.toml");
    std::fs::write(&file, FILE).unwrap();
    let data = b.data.path().to_string_lossy().to_string();
    let run = |file: &std::path::Path| {
        Command::new(binary().unwrap())
            .args(["pipeline", "run"])
            .arg(file)
            .args(["--data-dir", &data])
            .output()
            .unwrap()
    };
    let out = run(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read 500"), "{stdout}");

    // An unbounded pipeline is refused with the reason.
    let unbounded = dir.path().join("unbounded.toml");
    std::fs::write(&unbounded, FILE.replace("end = \"end\"\n", "")).unwrap();
    let out = run(&unbounded);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unbounded"),
        "{:?}",
        out
    );

    b.restart().unwrap();
    let got: BTreeMap<(String, i64), (i64, u64)> =
        consume(&b.bootstrap(), "daily_totals", &[0], want.len())
            .into_iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                (
                    (
                        v["shop"].as_str().unwrap().to_string(),
                        v["window_start"].as_i64().unwrap(),
                    ),
                    (v["total"].as_i64().unwrap(), v["sales"].as_u64().unwrap()),
                )
            })
            .collect();
    assert_eq!(got, want);
}
