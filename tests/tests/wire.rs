//! Raw frames against the real binary: real clients' captured requests get well-formed answers, and bad input
//! closes the connection without hurting the broker.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::codec::Reader;
use millrace_protocol::header::decode_response_header;
use millrace_protocol::messages::api_versions_response::ApiVersionsResponse;
use millrace_tests::{run_client, workspace_root, Broker};

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send(s: &mut TcpStream, frame: &[u8]) {
    s.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    s.write_all(frame).unwrap();
}

fn recv(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn bad_frames_close_the_connection_and_the_broker_survives() {
    let b = Broker::start().unwrap();
    let mut s = connect(&b);
    s.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s), "a 2 GiB frame is refused before allocation");

    let mut s = connect(&b);
    send(&mut s, &[0xde, 0xad, 0xbe, 0xef, 0x01]);
    assert!(closed(&mut s), "garbage closes");

    let mut s = connect(&b);
    send(&mut s, &[0x01, 0x2c, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert!(closed(&mut s), "an unknown API key closes");

    // ApiVersions v99: answered in the v0 layout with UNSUPPORTED_VERSION and our ranges.
    let mut s = connect(&b);
    send(&mut s, &[0, 18, 0, 99, 0, 0, 0, 42, 0, 0]);
    let mut r = Reader::new(recv(&mut s).unwrap());
    assert_eq!(decode_response_header(&mut r, false).unwrap(), 42);
    let resp = ApiVersionsResponse::decode(&mut r, 0).unwrap();
    assert_eq!(resp.error_code, 35);
    assert!(resp
        .api_keys
        .iter()
        .any(|k| k.api_key == 1 && k.min_version == 4 && k.max_version >= 16));
}

#[test]
fn captured_client_requests_get_answers() {
    let dir = workspace_root().join("../shared/kafka-captures");
    if !dir.is_dir() {
        eprintln!("skipping: no captures at {}", dir.display());
        return;
    }
    let b = Broker::start().unwrap();
    let mut answered = 0;
    for client in std::fs::read_dir(&dir).unwrap() {
        let client = client.unwrap().path();
        if !client.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&client)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if !(name.starts_with("ApiVersions_") || name.starts_with("Metadata_")) {
                continue;
            }
            let frame = std::fs::read(&f).unwrap();
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let mut s = connect(&b);
            send(&mut s, &frame);
            let resp = recv(&mut s).unwrap_or_else(|| panic!("{}: no answer", f.display()));
            assert_eq!(
                i32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]),
                correlation,
                "{}",
                f.display()
            );
            answered += 1;
        }
    }
    assert!(answered >= 10, "only {answered} captures replayed");
}

#[test]
fn kcat_lists_produces_and_consumes() {
    let b = Broker::start().unwrap();
    let bs = b.bootstrap();
    let root = workspace_root();
    let Some(list) = run_client("kcat", &["-b", &bs, "-L"], &root).unwrap() else {
        return;
    };
    assert!(list.contains(&format!("broker 1 at {bs}")), "{list}");
    let input = (0..100)
        .map(|i| format!("k{i}:v{i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let file = b.data.path().join("kcat-input.txt");
    std::fs::write(&file, input).unwrap();
    let file = file.to_string_lossy().to_string();
    run_client(
        "kcat",
        &["-b", &bs, "-P", "-t", "kc", "-K:", "-z", "lz4", "-l", &file],
        &root,
    )
    .unwrap();
    let out = run_client(
        "kcat",
        &[
            "-b",
            &bs,
            "-C",
            "-t",
            "kc",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k=%s@%o\n",
        ],
        &root,
    )
    .unwrap()
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0], "k0=v0@0");
    assert_eq!(lines[99], "k99=v99@99");
}
