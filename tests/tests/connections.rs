//! Idle and stalled connections against the real binary: an idle connection is closed after
//! `connections.max.idle.ms`, one that sent part of a request after `socket.request.read.timeout.ms` (while a
//! busy one stays), and connections over `max.connections.per.ip` are closed at once, so one address cannot
//! take every slot.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use millrace_tests::Broker;

fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// An ApiVersions v0 request with correlation id `id`.
fn api_versions(id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"test");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// Sends ApiVersions and reads the answer's correlation id.
fn ask(s: &mut TcpStream, id: i32) -> Option<i32> {
    s.write_all(&api_versions(id)).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(i32::from_be_bytes(body.get(..4)?.try_into().ok()?))
}

/// How long until the broker closes `s` (reading nothing), at most `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Some(start.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
        _ => None,
    }
}

#[test]
fn idle_connections_are_closed_and_busy_ones_stay() {
    let b = Broker::start_with_env(&[("MILLRACE_CONNECTIONS_MAX_IDLE_MS", "400")]).unwrap();
    let mut idle = connect(&b);
    let mut busy = connect(&b);
    for i in 0..12 {
        assert_eq!(
            ask(&mut busy, i),
            Some(i),
            "a connection sending requests stays open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // By now (1.2 s) the idle one has been closed.
    let t = closed_within(&mut idle, Duration::from_secs(5));
    assert!(t.is_some(), "the idle connection was not closed");
}

#[test]
fn a_stalled_partial_request_is_closed_after_the_read_timeout() {
    let b = Broker::start_with_env(&[("MILLRACE_SOCKET_REQUEST_READ_TIMEOUT_MS", "300")]).unwrap();
    let mut stalled = connect(&b);
    let frame = api_versions(1);
    // Half a request, then one more byte a little later: still incomplete when the timeout passes.
    stalled.write_all(&frame[..6]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    stalled.write_all(&frame[6..7]).unwrap();
    let t = closed_within(&mut stalled, Duration::from_secs(5))
        .expect("the stalled connection stays open");
    assert!(t < Duration::from_secs(2), "{t:?}");
    // A connection that completes its requests is answered.
    let mut ok = connect(&b);
    assert_eq!(ask(&mut ok, 7), Some(7));
}

#[test]
fn connections_over_the_per_address_cap_are_closed_at_once() {
    let b = Broker::start_with_env(&[("MILLRACE_MAX_CONNECTIONS_PER_IP", "10")]).unwrap();
    let mut held: Vec<TcpStream> = (0..10).map(|_| connect(&b)).collect();
    // Every one of the ten is served.
    for (i, s) in held.iter_mut().enumerate() {
        assert_eq!(ask(s, i as i32), Some(i as i32));
    }
    let mut over = connect(&b);
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).is_some(),
        "an eleventh was kept"
    );
    // A slot freed is a slot for the next client.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut next = connect(&b);
    assert_eq!(ask(&mut next, 99), Some(99));
}
