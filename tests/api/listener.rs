//! The listener under hostile clients: slowloris, silent sockets, floods from one address,
//! oversized headers and trickled bodies. Attackers connect from 127.0.0.2, so `/health` from
//! 127.0.0.1 shows whether anyone else is still served (in under 100 ms).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use super::helpers::spawn_app_with;

pub const ATTACKER: &str = "127.0.0.2";

/// A TCP connection to `server` from `from` (a loopback address).
pub async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// `/health` on a fresh connection from 127.0.0.1 answers 200; returns how long it took.
pub async fn health_took(base: &str) -> Duration {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(5), http.get(format!("{base}/health")).send())
        .await
        .expect("/health answered within 5 s")
        .expect("/health reachable");
    assert_eq!(res.status(), 200);
    started.elapsed()
}

/// Several `/health` probes: none slow, the typical one under 100 ms.
pub async fn assert_health_is_fast(base: &str) {
    let mut took = Vec::new();
    for _ in 0..5 {
        took.push(health_took(base).await);
    }
    took.sort();
    assert!(took[2] < Duration::from_millis(100), "/health was slow while under attack: {took:?}");
}

/// Wait until the server closes `conn` (EOF or reset); returns what it sent first, and when.
async fn closed_by_server(conn: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), conn.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = Duration::from_millis(400)).await;
    let server = addr(&app.base);
    let mut drips = Vec::new();
    for _ in 0..20 {
        let mut conn = connect_from(ATTACKER, server).await;
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        drips.push(conn);
    }
    // Keep dripping a header byte at a time: the connection is never idle, the headers never end.
    let dripper = tokio::spawn(async move {
        for round in 0..40 {
            for conn in drips.iter_mut() {
                let _ = conn.write_all(if round % 2 == 0 { b"X" } else { b"y" }).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Each one must have been closed by now (2 s of dripping against a 400 ms timeout).
        for mut conn in drips {
            closed_by_server(&mut conn, Duration::from_millis(500)).await;
        }
    });
    assert_health_is_fast(&app.base).await;
    dripper.await.expect("every slowloris connection was closed");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout() {
    let app = spawn_app_with(|c| {
        c.server.idle_timeout = Duration::from_millis(300);
        c.server.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let started = Instant::now();
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    let (_, _) = closed_by_server(&mut conn, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "closed before the idle timeout: {took:?}");
    // A client that talks is not idle: a full request still gets its answer.
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = closed_by_server(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_per_address_cap_get_503_and_other_addresses_are_still_served() {
    let app = spawn_app_with(|c| c.server.max_connections_per_address = 4).await;
    let server = addr(&app.base);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(ATTACKER, server).await);
    }
    // Accepted connections are counted as the server accepts them: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A real client sends its request at once: it must still read the 503, not a reset.
    let mut extra = connect_from(ATTACKER, server).await;
    extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, took) = closed_by_server(&mut extra, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "over the cap: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("retry-after"), "{answer}");
    assert!(took < Duration::from_secs(1), "refused at once, not after a timeout: {took:?}");
    assert_health_is_fast(&app.base).await;
    // A slot is given back when its connection closes.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from(ATTACKER, server).await;
    again.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = closed_by_server(&mut again, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_oversized_header_block_is_refused_instead_of_buffered() {
    let app = spawn_app_with(|c| c.server.max_header_bytes = 16 * 1024).await;
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n", "a".repeat(200 * 1024));
    // The server may stop reading (and close) before the whole block is sent.
    let _ = conn.write_all(big.as_bytes()).await;
    let (answer, _) = closed_by_server(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_health_is_fast(&app.base).await;
}

#[tokio::test]
async fn a_header_block_between_the_limit_and_the_read_buffer_is_refused_at_the_limit() {
    let app = spawn_app_with(|c| c.server.max_header_bytes = 16 * 1024).await;
    // ~19 KiB in headers of 1 KiB each: within what hyper buffers, over the limit.
    let mut block = String::from("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..19 {
        block += &format!("X-Pad-{i}: {}\r\n", "a".repeat(1000));
    }
    block += "\r\n";
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    conn.write_all(block.as_bytes()).await.unwrap();
    let (answer, _) = closed_by_server(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains("SERVER_MAX_HEADER_BYTES"), "says which bound: {answer}");
    // Just under the limit passes.
    let mut block = String::from("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..14 {
        block += &format!("X-Pad-{i}: {}\r\n", "a".repeat(1000));
    }
    block += "\r\n";
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    conn.write_all(block.as_bytes()).await.unwrap();
    let (answer, _) = closed_by_server(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_trickled_body_gets_a_503_outcome_at_the_request_timeout() {
    let app = spawn_app_with(|c| c.server.request_timeout = Duration::from_millis(500)).await;
    let mut conn = connect_from(ATTACKER, addr(&app.base)).await;
    conn.write_all(
        b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // One byte every 50 ms: never idle, never done. Bounded: 100 rounds = 5 s.
    for _ in 0..100 {
        let _ = conn.write_all(b"a").await;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("SERVER_REQUEST_TIMEOUT") && answer.contains("OperationOutcome"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app_with(|_| {}).await;
    for path in ["/", "/health", "/app.css", "/job/unknown", "/no-such-page"] {
        let res = app.http.get(format!("{}{path}", app.base)).send().await.unwrap();
        let h = res.headers();
        let csp = h.get("content-security-policy").map(|v| v.to_str().unwrap().to_string());
        assert!(csp.as_deref().is_some_and(|c| c.contains("frame-ancestors 'none'")), "{path}: {csp:?}");
        assert_eq!(h.get("x-frame-options").unwrap(), "DENY", "{path}");
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff", "{path}");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer", "{path}");
    }
}
