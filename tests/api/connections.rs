//! The HTTP server under clients that hold connections: slow headers and bodies are cut, readers
//! that stop reading are dropped, the connection caps refuse or evict, `/healthz` answers while a
//! half-open flood exceeds the process's descriptor limit, `accept` survives running out of
//! descriptors; `/metrics` and the playground are served only where allowed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use voicegraph::startup::{Application, Roles};

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_voicegraph");

const SERVE_ONLY: Roles = Roles {
    serve: true,
    worker: false,
    relay: false,
};

/// A TCP connection to `addr` from the loopback address `127.0.0.<last>` (Linux routes all of
/// 127/8 to the loopback), so that tests can stand for several client addresses.
pub async fn connect_from(last: u8, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
        .unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset) or `within` passes; returns what
/// was read and whether the connection was closed.
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// One request on a fresh connection from `127.0.0.<from>`; the status and the whole response.
pub async fn raw_request(addr: &str, from: u8, request: &[u8]) -> (Option<u16>, String) {
    let mut s = connect_from(from, addr).await;
    s.write_all(request).await.unwrap();
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    (
        status_of(&bytes),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: voicegraph\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Waits (up to 20 s) until `check` holds.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(app: &TestApp, name: &str, label: &str) -> u64 {
    let m = &app.state.metrics;
    match name {
        "timeouts" => m.http_timeouts.with_label_values(&[label]).get(),
        "refused" => m.http_connections_refused.with_label_values(&[label]).get(),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_must_arrive_within_the_header_timeout_but_idle_keep_alives_stay() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("header_read_timeout_secs", "1");
    })
    .await;

    // Headers trickled a line at a time: cut after the timeout, without an answer.
    let s = connect_from(1, &app.addr).await;
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        if w.write_all(b"GET /healthz HTTP/1.1\r\n").await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got)).await;
    writer.abort();
    let took = started.elapsed();
    assert!(closed.is_ok(), "the connection stays open");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");

    // A connection that sends nothing at all.
    let mut silent = connect_from(1, &app.addr).await;
    let started = Instant::now();
    let (got, closed) = read_until_closed(&mut silent, Duration::from_secs(20)).await;
    assert!(closed && got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(counter(&app, "timeouts", "headers"), 2);

    // Between requests the keep-alive timeout (75 s) applies, not the header timeout.
    let mut kept = connect_from(1, &app.addr).await;
    let one = b"GET /healthz HTTP/1.1\r\nHost: voicegraph\r\n\r\n";
    for _ in 0..2 {
        kept.write_all(one).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), kept.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(status_of(&buf[..n]), Some(200));
        // Idle for twice the header timeout.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(counter(&app, "timeouts", "headers"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_with_408_but_a_slow_fair_one_passes() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("body_read_timeout_secs", "2")
            .set("body_min_bytes_per_sec", "1024");
    })
    .await;

    // 1 byte every 50 ms of a 5,000-byte body: at most 40 bytes of the 2,048 due per window.
    let s = connect_from(1, &app.addr).await;
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let head = "POST /graphql HTTP/1.1\r\nHost: voicegraph\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n";
        if w.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got)).await;
    writer.abort();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(done.is_ok(), "the connection stays open: {text}");
    assert_eq!(status_of(&got), Some(408), "{text}");
    assert!(text.contains("too slowly"), "{text}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(counter(&app, "timeouts", "body"), 1);

    // 12,000 bytes in four parts 700 ms apart: longer than a window, but at ~4 KB/s.
    let mut body = br#"{"query": "{ __typename }""#.to_vec();
    body.resize(11_999, b' ');
    body.push(b'}');
    let mut s = connect_from(1, &app.addr).await;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: voicegraph\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(3000) {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&got), Some(200), "{text}");
    assert!(text.contains(r#""__typename":"Query""#), "{text}");
    assert_eq!(counter(&app, "timeouts", "body"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_response_is_dropped() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("write_timeout_secs", "1");
    })
    .await;
    // Larger than every socket buffer between the two ends.
    let size = 32 * 1024 * 1024;
    app.state
        .blobs
        .put(
            "big.bin",
            bytes::Bytes::from(vec![7u8; size]),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let url = app
        .state
        .blobs
        .presign_get(
            "big.bin",
            Duration::from_secs(300),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let path = url.strip_prefix(&format!("http://{}", app.addr)).unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(app.addr.parse().unwrap()).await.unwrap();
    s.write_all(&get_request(path)).await.unwrap();
    // Read nothing until the server gave up writing.
    wait_until("the write timeout cuts the connection", || {
        counter(&app, "timeouts", "write") == 1
    })
    .await;
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed);
    assert_eq!(status_of(&got), Some(200));
    assert!(
        got.len() < size,
        "the whole body arrived ({} bytes)",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_or_evict_and_healthz_answers_on_a_fresh_connection() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("max_connections", "20")
            .set("max_connections_per_ip", "5");
    })
    .await;
    let m = app.state.metrics.clone();

    // Per address: five half-open connections from 127.0.0.2 are held, the sixth is refused.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(2, &app.addr).await);
        let n = held.len() as i64;
        wait_until("the connection is admitted", || {
            m.http_connections.get() == n
        })
        .await;
    }
    let mut sixth = connect_from(2, &app.addr).await;
    let (got, closed) = read_until_closed(&mut sixth, Duration::from_secs(10)).await;
    assert!(closed, "the sixth connection is held");
    assert!(
        got.is_empty() || status_of(&got) == Some(429),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(counter(&app, "refused", "per_address"), 1);
    let (status, _) = raw_request(&app.addr, 1, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));

    // In total: fifteen requests in flight from three more addresses (bodies never finished)
    // fill the cap with the five half-open ones.
    let post = b"POST /graphql HTTP/1.1\r\nHost: voicegraph\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    let mut busy = Vec::new();
    for last in 3..=5 {
        for _ in 0..5 {
            let mut s = connect_from(last, &app.addr).await;
            s.write_all(post).await.unwrap();
            busy.push(s);
        }
    }
    wait_until("fifteen requests are in flight", || {
        m.http_connections_active.get() == 15 && m.http_connections.get() == 20
    })
    .await;
    // Full: a new connection evicts the longest half-open one, never a request in flight.
    let (status, _) = raw_request(&app.addr, 1, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));
    assert_eq!(m.http_connections_evicted.get(), 1);
    let (_, closed) = read_until_closed(&mut held[0], Duration::from_secs(10)).await;
    assert!(closed, "the oldest half-open connection was evicted");

    // Nothing left to evict: the four other half-open ones become requests too.
    for s in &mut held[1..] {
        s.write_all(post).await.unwrap();
    }
    wait_until("nineteen requests are in flight", || {
        m.http_connections_active.get() == 19
    })
    .await;
    let mut last = connect_from(6, &app.addr).await;
    last.write_all(post).await.unwrap();
    wait_until("twenty requests are in flight", || {
        m.http_connections_active.get() == 20
    })
    .await;
    let (status, text) = raw_request(&app.addr, 1, &get_request("/healthz")).await;
    assert!(
        status == Some(503) || text.is_empty(),
        "a connection beyond the cap is served: {text}"
    );
    assert_eq!(counter(&app, "refused", "total"), 1);
    // One request ends (its client goes away): there is room again.
    drop(busy.pop());
    wait_until("a place is free", || m.http_connections.get() == 19).await;
    let (status, _) = raw_request(&app.addr, 1, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));
    // Every request in flight is still there.
    assert_eq!(m.http_connections_evicted.get(), 1);
    assert_eq!(m.http_connections_active.get(), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_no_per_address_cap_applies() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("max_connections_per_ip", "2")
            .set("trusted_proxy_hops", "1");
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(2, &app.addr).await);
    }
    let m = app.state.metrics.clone();
    wait_until("five connections from one address are admitted", || {
        m.http_connections.get() == 5
    })
    .await;
    let (status, _) = raw_request(&app.addr, 2, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));
    assert_eq!(counter(&app, "refused", "per_address"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once_and_lets_requests_finish() {
    let app = TestApp::spawn_with(SERVE_ONLY, |_| {}).await;
    let m = app.state.metrics.clone();
    let mut half_open = connect_from(1, &app.addr).await;
    half_open
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let body = br#"{"query": "{ __typename }"}"#;
    let mut in_flight = connect_from(1, &app.addr).await;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: voicegraph\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..5]).await.unwrap();
    wait_until(
        "a request is in flight beside a half-open connection",
        || m.http_connections.get() == 2 && m.http_connections_active.get() == 1,
    )
    .await;

    app.token.cancel();
    let (got, closed) = read_until_closed(&mut half_open, Duration::from_secs(10)).await;
    assert!(closed && got.is_empty(), "the half-open connection stays");
    // No new connections.
    wait_until("the listener is closed", || {
        std::net::TcpStream::connect(&app.addr).is_err()
    })
    .await;
    // The request in flight is answered, and then its connection closed.
    in_flight.write_all(&body[5..]).await.unwrap();
    let (got, closed) = read_until_closed(&mut in_flight, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "{text}");
    assert_eq!(status_of(&got), Some(200), "{text}");
    assert!(text.contains(r#""__typename":"Query""#), "{text}");
}

/// A voicegraph process of the real binary (`dev`: every role) on its own data dir and database,
/// optionally under a lower descriptor limit; its output goes to `voicegraph.log` in the dir.
pub struct ServerProcess {
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl ServerProcess {
    pub async fn start(fd_limit: Option<u64>, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        ensure_database(dir.path()).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("voicegraph.log")).unwrap();
        // `ulimit` in a shell that then becomes voicegraph: the limit applies to it alone.
        let script = match fd_limit {
            Some(n) => format!("ulimit -n {n} && exec \"$0\" dev"),
            None => "exec \"$0\" dev".to_string(),
        };
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script, BIN])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        let mut env: Vec<(String, String)> = vec![
            ("data_dir".into(), dir.path().to_string_lossy().into_owned()),
            ("listen".into(), addr.clone()),
            ("bootstrap_admin_key".into(), ADMIN_KEY.into()),
            ("log_format".into(), "text".into()),
        ];
        for (k, v) in postgres_settings(dir.path()) {
            env.push((k.into(), v));
        }
        for (k, v) in vars {
            env.push((k.to_string(), v.to_string()));
        }
        for (k, v) in env {
            cmd.env(format!("VOICEGRAPH_{}", k.to_uppercase()), v);
        }
        let child = cmd.spawn().expect("spawn voicegraph");
        let server = Self { addr, dir, child };
        server.wait_healthy().await;
        server
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("voicegraph.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Lines of the log that report a panic.
    pub fn panics(&self) -> usize {
        count_panics(&self.log_path())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(&self.addr).await {
                if s.write_all(&get_request("/healthz")).await.is_ok() {
                    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
                    if status_of(&got) == Some(200) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "voicegraph did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A metric's value from `/metrics` (the sum of its series whose labels contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = raw_request(&self.addr, 1, &get_request("/metrics")).await;
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b' ')
                        || l.as_bytes().get(name.len()) == Some(&b'{'))
                    && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn count_panics(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("panicked at"))
        .count()
}

/// Opens `n` connections spread over the loopback addresses `127.0.0.<first>..`, `per_address`
/// each, each sending half a request line and then nothing. Connections the server refuses or
/// evicts are closed by it; the rest stay open as long as the returned streams live.
pub async fn half_open(addr: &str, n: usize, first: u8, per_address: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = connect_from(first + (i / per_address) as u8, addr).await;
        let _ = s.write_all(b"GET /graphql?query=").await;
        out.push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_half_open_connections_exceed_the_descriptor_limit() {
    // 512 descriptors: 256 connections by default, 256 kept for the process itself. The flood
    // is 600 connections (1.17 times the limit, as 20,081 would be against 20,000) from six
    // addresses of 100 (at the per-address cap, not over it), so the total cap is what holds.
    let server = ServerProcess::start(Some(512), &[("max_connections_per_ip", "100")]).await;
    let flood = half_open(&server.addr, 600, 10, 100).await;
    for _ in 0..20 {
        let started = Instant::now();
        let (status, text) = raw_request(&server.addr, 1, &get_request("/healthz")).await;
        assert_eq!(status, Some(200), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The flood came first (the accept queue is in order), so all of it was seen by now.
    let open = server.metric("voicegraph_http_connections", "").await;
    assert!(open <= 256.0, "{open} connections open");
    assert!(
        server
            .metric("voicegraph_http_connections_evicted_total", "")
            .await
            >= 344.0
    );
    // The reserve kept descriptors for the database, the queue and the blob store.
    let (status, text) = raw_request(&server.addr, 1, &get_request("/readyz")).await;
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(
        server
            .metric("voicegraph_http_accept_errors_total", "")
            .await,
        0.0
    );
    drop(flood);

    // From one address, the per-address cap holds first: 100 held, 500 refused (what is left of
    // the first flood is older, so evicted before any of these).
    let flood = half_open(&server.addr, 600, 30, 600).await;
    let (status, _) = raw_request(&server.addr, 1, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));
    let refused = server
        .metric("voicegraph_http_connections_refused_total", "per_address")
        .await;
    assert_eq!(refused, 500.0);
    drop(flood);
    assert_eq!(server.panics(), 0, "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_descriptors() {
    // A cap far above the descriptor limit: `accept` itself fails (EMFILE).
    let mut server = ServerProcess::start(Some(128), &[("max_connections", "1000")]).await;
    let flood = half_open(&server.addr, 200, 40, 200).await;
    wait_until("accept fails for want of descriptors", || {
        server.log().contains("accept failed")
    })
    .await;
    // The connections it could not accept wait in the backlog; once descriptors free up, the
    // loop takes them, and new ones, again.
    drop(flood);
    assert!(server.is_running());
    let (status, _) = raw_request(&server.addr, 1, &get_request("/healthz")).await;
    assert_eq!(status, Some(200));
    assert!(
        server
            .metric("voicegraph_http_accept_errors_total", "")
            .await
            > 0.0
    );
    assert!(server.is_running());
    assert_eq!(server.panics(), 0, "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_on_the_main_listener() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("metrics_token", "scrape-me");
    })
    .await;
    let get = |token: Option<&'static str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let none = get(None).await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(get(Some("scrape-me-not")).await.unwrap().status(), 401);
    let ok = get(Some("scrape-me")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok
        .text()
        .await
        .unwrap()
        .contains("voicegraph_http_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener_leave_the_main_one() {
    let dir = tempfile::tempdir().unwrap();
    ensure_database(dir.path()).await;
    let mut l = layers(dir.path());
    l.set("metrics_listen", "127.0.0.1:0");
    let app = Application::build(l.settings().unwrap(), SERVE_ONLY)
        .await
        .unwrap();
    let main = format!("http://127.0.0.1:{}", app.port());
    let metrics = format!("http://{}", app.metrics_addr().expect("a metrics listener"));
    let token = app.shutdown_token();
    let running = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{main}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{main}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let scrape = client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape
        .text()
        .await
        .unwrap()
        .contains("voicegraph_http_requests_total"));
    // Nothing else is served there.
    assert_eq!(
        client
            .get(format!("{metrics}/graphql"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_can_be_turned_off() {
    let app = TestApp::spawn_with(SERVE_ONLY, |l| {
        l.set("playground", "false");
    })
    .await;
    for path in ["/", "/playground/examples.json"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // The API itself is unaffected.
    app.gql_ok("{ viewer { role } }", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_hides_the_playground_and_metrics_unless_enabled() {
    let stack = crate::require!(crate::backends::ProductionStack::create(None, 3, 10).await);
    {
        let settings = {
            let mut l = voicegraph::config::Layers::default();
            for (k, v) in stack.vars() {
                l.set(k, v);
            }
            l.settings().unwrap()
        };
        let metrics = voicegraph::http::metrics::Metrics::new();
        voicegraph::wiring::migrate_as_owner(&settings, &metrics)
            .await
            .unwrap();
    }
    let production = |extra: &'static [(&'static str, &'static str)]| {
        let vars = stack.vars();
        TestApp::spawn_with(SERVE_ONLY, move |l| {
            for (k, v) in vars {
                l.set(k, v);
            }
            for (k, v) in extra {
                l.set(k, *v);
            }
        })
    };
    let app = production(&[]).await;
    for path in ["/", "/playground/examples.json", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(app);

    let app = production(&[("playground", "true"), ("metrics_token", "scrape-me")]).await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    let m = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 401);
    let m = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
}
