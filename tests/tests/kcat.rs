//! kcat (librdkafka's command-line client, as a separate program) against the real binary: metadata listing,
//! producing keyed records with headers under every compression, and consuming them back from the beginning.
//!
//! A missing kcat fails the test in CI (`CI=true`) and skips it elsewhere.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use millrace_tests::{in_ci, Broker};

/// Runs kcat with `input` on stdin; panics with both outputs (and the broker's log) when it fails.
fn kcat(b: &Broker, args: &[&str], input: &str) -> String {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(b.bootstrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kcat {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nbroker stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        b.stderr()
    );
    stdout
}

fn have_kcat() -> bool {
    match Command::new("kcat").arg("-V").output() {
        Ok(o) if o.status.success() => true,
        other => {
            assert!(!in_ci(), "kcat is required in CI: {other:?}");
            eprintln!("skipping: kcat is not installed");
            false
        }
    }
}

#[test]
fn kcat_lists_metadata() {
    if !have_kcat() {
        return;
    }
    let b = Broker::start().unwrap();
    let out = kcat(&b, &["-L", "-m", "10"], "");
    assert!(out.contains("1 brokers:"), "{out}");
    assert!(
        out.contains(&format!("broker 1 at {}", b.bootstrap())),
        "{out}"
    );

    // After a produce (auto-creating the topic) the listing shows it with its partition.
    kcat(&b, &["-P", "-t", "listed", "-p", "0"], "one\n");
    let out = kcat(&b, &["-L", "-t", "listed", "-m", "10"], "");
    assert!(out.contains("topic \"listed\" with 1 partitions"), "{out}");
    assert!(out.contains("partition 0, leader 1"), "{out}");
}

#[test]
fn kcat_produce_and_consume_every_codec() {
    if !have_kcat() {
        return;
    }
    let b = Broker::start().unwrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let lines: Vec<String> = (0..300)
            .map(|i| format!("key-{i}:value {i} {}", "x".repeat(i % 50)))
            .collect();
        let input = lines.join("\n") + "\n";
        let compression = format!("compression.codec={codec}");
        kcat(
            &b,
            &[
                "-P",
                "-t",
                &topic,
                "-p",
                "0",
                "-K",
                ":",
                "-H",
                "origin=kcat",
                "-X",
                &compression,
                "-X",
                "linger.ms=20",
            ],
            &input,
        );
        let out = kcat(
            &b,
            &[
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%p|%o|%k|%s|%h\n",
            ],
            "",
        );
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(
            got.len(),
            lines.len(),
            "{codec}: consumed {} of {} records",
            got.len(),
            lines.len()
        );
        for (i, (g, line)) in got.iter().zip(&lines).enumerate() {
            let (k, v) = line.split_once(':').unwrap();
            assert_eq!(
                *g,
                format!("0|{i}|{k}|{v}|origin=kcat"),
                "{codec}: record {i}"
            );
        }
    }
}

#[test]
fn kcat_consumes_across_partitions() {
    if !have_kcat() {
        return;
    }
    let b = Broker::start_with_env(&[("MILLRACE_NUM_PARTITIONS", "3")]).unwrap();
    // Keyed records spread over the auto-created topic's 3 partitions by the partitioner.
    let input: String = (0..90).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat(&b, &["-P", "-t", "spread", "-K", ":"], &input);
    std::thread::sleep(Duration::from_millis(100));
    let out = kcat(
        &b,
        &[
            "-C",
            "-t",
            "spread",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p|%o|%k|%s\n",
        ],
        "",
    );
    let mut per_partition: [Vec<i64>; 3] = Default::default();
    let mut values = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 4, "{line}");
        let p: usize = f[0].parse().unwrap();
        per_partition[p].push(f[1].parse().unwrap());
        assert_eq!(
            f[2][1..],
            f[3][1..],
            "key and value belong together: {line}"
        );
        values.push(f[3].to_string());
    }
    values.sort();
    let mut want: Vec<String> = (0..90).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(values, want);
    for (p, offsets) in per_partition.iter().enumerate() {
        let expect: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expect,
            "partition {p} offsets are consecutive from 0"
        );
    }
    assert!(
        per_partition.iter().filter(|o| !o.is_empty()).count() >= 2,
        "the partitioner used several partitions"
    );
}
