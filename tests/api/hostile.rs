//! The hostile-client suite: malformed, oversized, deep, flooding, broken and trickled inputs on
//! every door (JSON, content types, documents, multipart, WebSocket, SSE, raw HTTP/1, slowloris).
//! Each must be refused with a 4xx or a GraphQL error, fast; nothing may answer 5xx or panic; a
//! well-behaved client served meanwhile must see no error and bounded latency. The server is the
//! real binary in its own process, whose log is searched for panics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::connections::{connect_from, status_of, wait_until, ServerProcess};
use crate::helpers::*;

/// Time within which a refusal must come.
const FAST: Duration = Duration::from_secs(5);
/// Inputs whose refusal depends on GraphQL-level limits (document size and tokens, directives,
/// batch size, complexity) must at least be answered, without a 5xx, within this.
const ANSWERED: Duration = Duration::from_secs(20);
/// The slowest answer the well-behaved client may see meanwhile.
const GOOD_LATENCY: Duration = Duration::from_secs(5);
/// The hostile server's header and body timeouts.
const HEADER_TIMEOUT_SECS: u64 = 2;
const BODY_TIMEOUT_SECS: u64 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 4xx, a GraphQL error, a WebSocket close or error message, or (raw protocol garbage)
    /// a closed connection; within `FAST`.
    Refused,
    /// Depends on limits built elsewhere: any answer but a 5xx, within `ANSWERED`.
    NoServerError,
}

/// What the suite saw, by input.
#[derive(Default)]
struct Tally {
    tried: usize,
    server_errors: Vec<String>,
    not_refused: Vec<String>,
    slow: Vec<String>,
    /// The longest any input took to be answered (slowloris aside), and which.
    slowest: (Duration, String),
}

impl Tally {
    fn note(&mut self, name: &str, expect: Expect, outcome: Outcome, took: Duration) {
        let bound = match expect {
            Expect::Refused => FAST,
            Expect::NoServerError => ANSWERED,
        };
        if took > self.slowest.0 {
            self.slowest = (took, name.to_string());
        }
        self.note_within(name, expect, outcome, took, bound);
    }

    fn note_within(
        &mut self,
        name: &str,
        expect: Expect,
        outcome: Outcome,
        took: Duration,
        bound: Duration,
    ) {
        self.tried += 1;
        if took > bound {
            self.slow.push(format!("{name}: {took:?}"));
        }
        match outcome {
            Outcome::ServerError(why) => self.server_errors.push(format!("{name}: {why}")),
            Outcome::Refused => {}
            Outcome::Answered(what) if expect == Expect::Refused => {
                self.not_refused.push(format!("{name}: {what}"))
            }
            Outcome::Answered(_) => {}
        }
    }
}

enum Outcome {
    Refused,
    Answered(String),
    ServerError(String),
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Judges an HTTP answer: a 5xx, a 4xx, a GraphQL response with errors (in every entry of a
/// batch), or an answer with data.
fn judge_http(status: Option<u16>, body: &str) -> Outcome {
    match status {
        None => Outcome::Refused,
        Some(s) if s >= 500 => Outcome::ServerError(format!("{s} {}", short(body))),
        Some(s) if s >= 400 => Outcome::Refused,
        Some(s) => {
            let errors = |v: &Value| v.get("errors").is_some_and(|e| !e.is_null());
            match serde_json::from_str::<Value>(body) {
                Ok(Value::Array(items)) if !items.is_empty() && items.iter().all(errors) => {
                    Outcome::Refused
                }
                Ok(v) if errors(&v) => Outcome::Refused,
                _ if body.contains("\"errors\"") => Outcome::Refused,
                _ => Outcome::Answered(format!("{s} {}", short(body))),
            }
        }
    }
}

/// A tiny deterministic generator of random bytes.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

struct Suite {
    server: ServerProcess,
    client: reqwest::Client,
    tally: Tally,
    rng: Rng,
}

impl Suite {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// Sends a request and notes how it was answered.
    async fn send(&mut self, name: &str, expect: Expect, req: reqwest::RequestBuilder) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(ANSWERED, req.send()).await {
            Err(_) => Outcome::ServerError("no answer".into()),
            // The server answered early and closed while the body was still being sent.
            Ok(Err(e)) if e.is_request() || e.is_body() => Outcome::Refused,
            Ok(Err(e)) => Outcome::ServerError(format!("request failed: {e}")),
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let body = tokio::time::timeout(ANSWERED, resp.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                judge_http(Some(status), &body)
            }
        };
        self.tally.note(name, expect, outcome, started.elapsed());
    }

    /// POSTs a body to `/graphql` as the platform admin.
    async fn post(
        &mut self,
        name: &str,
        expect: Expect,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) {
        let mut req = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.send(name, expect, req).await;
    }

    async fn json(&mut self, name: &str, expect: Expect, body: impl Into<Vec<u8>>) {
        self.post(name, expect, Some("application/json"), body.into())
            .await;
    }

    async fn query(&mut self, name: &str, expect: Expect, query: &str) {
        self.json(name, expect, json!({ "query": query }).to_string())
            .await;
    }

    async fn multipart(&mut self, name: &str, expect: Expect, boundary: &str, body: Vec<u8>) {
        let req = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .header("apollo-require-preflight", "true")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.send(name, expect, req).await;
    }

    /// Writes raw bytes on a fresh connection and reads the answer: until the server closes
    /// the connection, or a whole response has come.
    async fn raw(&mut self, name: &str, bytes: &[u8]) {
        let started = Instant::now();
        let mut s = TcpStream::connect(&self.server.addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + ANSWERED;
        let answered = loop {
            if let Some(body) = whole_response(&got) {
                break Some(body);
            }
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(String::new()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        };
        let outcome = match answered {
            None => Outcome::ServerError("no answer".into()),
            Some(body) => judge_http(status_of(&got), &body),
        };
        self.tally
            .note(name, Expect::Refused, outcome, started.elapsed());
    }
}

/// The body of a whole HTTP/1.1 response with a `Content-Length`, once all of it has come.
fn whole_response(got: &[u8]) -> Option<String> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (got.len() >= end + length)
        .then(|| String::from_utf8_lossy(&got[end..end + length]).into_owned())
}

/// A multipart part: its name, its file name (for files) and its content.
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart body of these parts, closed or not.
fn multipart_body(boundary: &str, parts: &[Part], close: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, content) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    }
    out
}

const SUBMIT: &str = r#"{"query":"mutation($r: Upload!) { submitCall(input: {recording: $r}) { call { id } } }","variables":{"r":null}}"#;

/// The well-behaved client: one query after another until stopped; its errors and latencies.
#[derive(Default)]
struct Good {
    requests: AtomicU64,
    errors: Mutex<Vec<String>>,
    slowest: Mutex<Duration>,
}

async fn well_behaved(addr: String, good: Arc<Good>, stop: CancellationToken) {
    let client = reqwest::Client::new();
    let body = json!({ "query": "{ viewer { role } calls(first: 3) { totalCount edges { node { id status } } } }" });
    while !stop.is_cancelled() {
        let started = Instant::now();
        let r = client
            .post(format!("http://{addr}/graphql"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let outcome = match r {
            Err(e) => Err(format!("request failed: {e}")),
            Ok(r) => {
                let status = r.status();
                match r.json::<Value>().await {
                    Ok(v) if status == 200 && v.get("errors").is_none() => Ok(()),
                    Ok(v) => Err(format!("{status} {v}")),
                    Err(e) => Err(format!("{status} unreadable: {e}")),
                }
            }
        };
        let took = started.elapsed();
        good.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = outcome {
            good.errors.lock().unwrap().push(e);
        }
        {
            let mut slowest = good.slowest.lock().unwrap();
            *slowest = (*slowest).max(took);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_fast_and_others_keep_being_served() {
    let server = ServerProcess::start(
        None,
        &[
            ("header_read_timeout_secs", &HEADER_TIMEOUT_SECS.to_string()),
            ("body_read_timeout_secs", &BODY_TIMEOUT_SECS.to_string()),
            ("max_recording_bytes", "1048576"),
        ],
    )
    .await;
    let mut suite = Suite {
        server,
        client: reqwest::Client::new(),
        tally: Tally::default(),
        rng: Rng(0x9E37_79B9_7F4A_7C15),
    };
    // A call to aim at, analysed by the worker.
    let call_id = {
        let body = multipart_body(
            "b0",
            &[
                ("operations", None, SUBMIT.as_bytes()),
                ("map", None, br#"{"0":["variables.r"]}"#),
                ("0", Some("call.wav"), &short_call()),
            ],
            true,
        );
        let r = suite
            .client
            .post(suite.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .header("apollo-require-preflight", "true")
            .header("content-type", "multipart/form-data; boundary=b0")
            .body(body)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["data"]["submitCall"]["call"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string()
    };

    let good = Arc::new(Good::default());
    let stop = CancellationToken::new();
    let good_task = tokio::spawn(well_behaved(
        suite.server.addr.clone(),
        good.clone(),
        stop.clone(),
    ));
    wait_until("the well-behaved client is running", || {
        good.requests.load(Ordering::Relaxed) > 0
    })
    .await;

    let mut sections: Vec<(&str, usize)> = Vec::new();
    fn mark(name: &'static str, suite: &Suite, sections: &mut Vec<(&'static str, usize)>) {
        let before: usize = sections.iter().map(|(_, n)| n).sum();
        sections.push((name, suite.tally.tried - before));
    }

    json_bodies(&mut suite).await;
    mark("malformed JSON", &suite, &mut sections);
    content_types(&mut suite).await;
    mark("content types", &suite, &mut sections);
    documents(&mut suite, &call_id).await;
    mark("documents and floods", &suite, &mut sections);
    multipart(&mut suite).await;
    mark("multipart", &suite, &mut sections);
    websockets(&mut suite).await;
    mark("WebSocket", &suite, &mut sections);
    sse(&mut suite).await;
    mark("SSE", &suite, &mut sections);
    raw_http(&mut suite).await;
    mark("raw HTTP", &suite, &mut sections);
    slowloris(&mut suite).await;
    mark("slowloris", &suite, &mut sections);

    stop.cancel();
    good_task.await.unwrap();
    let panics = suite.server.panics();
    let running = suite.server.is_running();
    let t = &suite.tally;
    let good_errors = good.errors.lock().unwrap().clone();
    let slowest = *good.slowest.lock().unwrap();
    for (name, n) in &sections {
        println!("hostile suite: {name}: {n} inputs");
    }
    println!(
        "hostile suite: {} inputs tried, {} answered 5xx, {} panics, {} not refused, {} slow \
         (slowest answer {:?}: {}); well-behaved client: {} requests, {} errors, slowest {:?}",
        t.tried,
        t.server_errors.len(),
        panics,
        t.not_refused.len(),
        t.slow.len(),
        t.slowest.0,
        t.slowest.1,
        good.requests.load(Ordering::Relaxed),
        good_errors.len(),
        slowest,
    );
    assert!(running, "the server died: {}", suite.server.log());
    assert!(t.server_errors.is_empty(), "5xx: {:#?}", t.server_errors);
    assert!(
        t.not_refused.is_empty(),
        "not refused: {:#?}",
        t.not_refused
    );
    assert!(t.slow.is_empty(), "slow: {:#?}", t.slow);
    assert_eq!(panics, 0, "{}", suite.server.log());
    assert!(
        good_errors.is_empty(),
        "the good client saw: {good_errors:#?}"
    );
    assert!(slowest < GOOD_LATENCY, "the good client waited {slowest:?}");
}

async fn json_bodies(s: &mut Suite) {
    use Expect::Refused;
    let cases: &[(&str, &str)] = &[
        ("empty body", ""),
        ("whitespace", "  \n "),
        ("open brace", "{"),
        ("open bracket", "["),
        ("nul", "nul"),
        ("truncated", r#"{"query":"#),
        ("query a number", r#"{"query": 1}"#),
        ("query null", r#"{"query": null}"#),
        ("empty object", "{}"),
        ("empty batch", "[]"),
        ("batch of numbers", "[1, 2]"),
        ("nested batch", "[[]]"),
        ("a string", r#""{ __typename }""#),
        ("a number", "42"),
        (
            "variables a string",
            r#"{"query": "{__typename}", "variables": "x"}"#,
        ),
        (
            "variables an array",
            r#"{"query": "{__typename}", "variables": [1]}"#,
        ),
        (
            "operationName a number",
            r#"{"query": "{__typename}", "operationName": 5}"#,
        ),
        (
            "extensions a number",
            r#"{"query": "{__typename}", "extensions": 7}"#,
        ),
        ("trailing garbage", r#"{"query": "{__typename}"} trailing"#),
        ("lone surrogate", r#"{"query": "\ud800"}"#),
        ("byte order mark", "\u{feff}{\"query\": \"{__typename}\"}"),
        (
            "unknown persisted query",
            r#"{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "zz"}}}"#,
        ),
        (
            "persisted query of a wrong version",
            r#"{"extensions": {"persistedQuery": {"version": 99, "sha256Hash": "00"}}}"#,
        ),
        (
            "number out of range",
            r#"{"query": "{__typename}", "variables": {"a": 1e999999}}"#,
        ),
        (
            "missing variable",
            r#"{"query": "query($a: Int!) { __typename }"}"#,
        ),
        (
            "variable of a wrong type",
            r#"{"query": "query($a: Int!) { __typename }", "variables": {"a": "x"}}"#,
        ),
        (
            "unknown operation name",
            r#"{"query": "{__typename}", "operationName": "Missing"}"#,
        ),
        (
            "two operations without a name",
            r#"{"query": "query A { __typename } query B { __typename }"}"#,
        ),
        ("unknown field", r#"{"query": "{ nope }"}"#),
        (
            "duplicate keys",
            r#"{"query": "{__typename}", "query": "{ nope }"}"#,
        ),
    ];
    for (name, body) in cases {
        s.json(name, Refused, *body).await;
    }
    s.json(
        "invalid UTF-8",
        Refused,
        b"{\"query\": \"\xff\xfe\"}".to_vec(),
    )
    .await;
    s.json("NUL bytes", Refused, vec![0u8; 64]).await;
    for i in 0..16 {
        let n = 1 + i * 997;
        let bytes = s.rng.bytes(n);
        s.json(&format!("random bytes ({n})"), Refused, bytes).await;
    }
    s.json("deeply nested arrays", Refused, "[".repeat(100_000))
        .await;
    s.json(
        "deeply nested variables",
        Refused,
        format!(
            r#"{{"query": "{{__typename}}", "variables": {{"v": {}1{}}}}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        ),
    )
    .await;
    let mut big = br#"{"query": "{ __typename }", "pad": ""#.to_vec();
    big.resize(3 * 1024 * 1024, b'x');
    big.extend_from_slice(b"\"}");
    s.json("3 MB body", Refused, big).await;
}

async fn content_types(s: &mut Suite) {
    use Expect::Refused;
    let body = || {
        json!({ "query": "{ __typename }" })
            .to_string()
            .into_bytes()
    };
    for ct in [
        Some("text/plain"),
        None,
        Some("application/xml"),
        Some("application/graphql"),
        Some("application/json; charset=latin1"),
        Some("multipart/form-data"),
        Some("multipart/form-data; boundary="),
        Some("application/x-www-form-urlencoded"),
        Some("image/png"),
        Some(";;;"),
        Some("application/json; charset"),
        Some("*/*"),
    ] {
        s.post(&format!("content type {ct:?}"), Refused, ct, body())
            .await;
    }
    // With the preflight header, so that CSRF prevention is not what refuses them.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let req = s
            .client
            .post(s.url("/graphql"))
            .bearer_auth(ADMIN_KEY)
            .header("apollo-require-preflight", "true")
            .header("content-type", ct)
            .body(body());
        s.send(
            &format!("content type {ct} with a preflight header"),
            Refused,
            req,
        )
        .await;
    }
    let req = s
        .client
        .post(s.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .header("accept", "image/png")
        .body(body());
    s.send("accept image/png", Refused, req).await;
    let req = s
        .client
        .post(s.url("/graphql"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .header("content-type", "application/json")
        .body(body());
    s.send("basic authorization", Refused, req).await;
    let req = s
        .client
        .post(s.url("/graphql"))
        .bearer_auth("vg_not_a_key")
        .header("content-type", "application/json")
        .body(body());
    s.send("unknown API key", Refused, req).await;
    let req = s
        .client
        .post(s.url("/graphql"))
        .bearer_auth("ey.not.ajwt")
        .header("content-type", "application/json")
        .body(body());
    s.send("malformed JWT", Refused, req).await;
    for (name, query) in [
        ("GET without a query", "/graphql"),
        (
            "GET with invalid percent-encoding",
            "/graphql?query=%FF%FE%00",
        ),
        (
            "GET with a mutation",
            "/graphql?query=mutation%7B__typename%7D",
        ),
        (
            "GET with variables not JSON",
            "/graphql?query=%7B__typename%7D&variables=%7B",
        ),
        ("GET with a broken document", "/graphql?query=%7B%7B%7B"),
    ] {
        let req = s.client.get(s.url(query)).bearer_auth(ADMIN_KEY);
        s.send(name, Refused, req).await;
    }
}

async fn documents(s: &mut Suite, call_id: &str) {
    use Expect::Refused;
    let aliases: String = (0..10_000).map(|i| format!(" a{i}: __typename")).collect();
    s.query("10,000 aliases", Refused, &format!("{{{aliases}}}"))
        .await;
    let deep = format!("{{{}b{}}}", "a{".repeat(10_000), "}".repeat(10_000));
    s.query("a selection 10,000 deep", Refused, &deep).await;
    let deep_list = format!(
        "{{ __typename(a: {}{}) }}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    s.query("a list literal 10,000 deep", Refused, &deep_list)
        .await;
    let deep_object = format!(
        "{{ __typename(a: {}1{}) }}",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    s.query("an object literal 10,000 deep", Refused, &deep_object)
        .await;
    s.query(
        "a fragment cycle",
        Refused,
        "fragment A on Query { ...B } fragment B on Query { ...A } { ...A }",
    )
    .await;
    s.query("unbalanced braces", Refused, "{{{{{{").await;
    s.query("a string never closed", Refused, "{ __typename(a: \"")
        .await;
    s.query(
        "a subscription over plain POST",
        Refused,
        "subscription { callEvents { kind } }",
    )
    .await;
    let unknown: String = (0..2_000).map(|i| format!(" f{i}")).collect();
    s.query("2,000 unknown fields", Refused, &format!("{{{unknown}}}"))
        .await;
    let variables: String = (0..5_000).map(|i| format!("$v{i}: Int ")).collect();
    s.query(
        "5,000 unused variables",
        Refused,
        &format!("query({variables}) {{ __typename }}"),
    )
    .await;
    let anonymous =
        Value::Array(vec![json!({ "query": "{ calls { totalCount } }" }); 100]).to_string();
    let req = s
        .client
        .post(s.url("/graphql"))
        .header("content-type", "application/json")
        .body(anonymous);
    s.send("100 anonymous operations in a batch", Refused, req)
        .await;

    let fields = format!("{{{}}}", " __typename".repeat(90_000));
    s.query("a 1 MB document", Refused, &fields).await;
    s.query(
        "50,000 directives",
        Refused,
        &format!("{{ __typename{} }}", " @aa".repeat(50_000)),
    )
    .await;
    s.query(
        "unknown arguments on __typename",
        Refused,
        "{ __typename(a: 1, b: 2) }",
    )
    .await;
    let thirty: String = (0..30).map(|i| format!(" a{i}: __typename")).collect();
    let batch = Value::Array(vec![json!({ "query": format!("{{{thirty}}}") }); 1000]).to_string();
    s.json("1,000 operations of 30 aliases", Refused, batch)
        .await;
    let mut fan_out = "id".to_string();
    for _ in 0..7 {
        fan_out = format!("events {{ call {{ {fan_out} }} }}");
    }
    s.json(
        "nested events fan-out",
        Refused,
        json!({
            "query": format!("query($id: ID!) {{ call(id: $id) {{ {fan_out} }} }}"),
            "variables": { "id": call_id },
        })
        .to_string(),
    )
    .await;
}

async fn multipart(s: &mut Suite) {
    use Expect::Refused;
    let map = br#"{"0":["variables.r"]}"#;
    let wav = short_call();
    let text_as_audio = b"this is not audio at all".repeat(100);
    let cases: Vec<(&str, Vec<Part>, bool)> = vec![
        (
            "missing map",
            vec![("operations", None, SUBMIT.as_bytes())],
            true,
        ),
        (
            "map to a missing file",
            vec![("operations", None, SUBMIT.as_bytes()), ("map", None, map)],
            true,
        ),
        (
            "map to a path that does not exist",
            vec![
                ("operations", None, SUBMIT.as_bytes()),
                ("map", None, br#"{"0":["variables.nope.deeper"]}"#),
                ("0", Some("a.wav"), &wav),
            ],
            true,
        ),
        (
            "map not JSON",
            vec![
                ("operations", None, SUBMIT.as_bytes()),
                ("map", None, b"{"),
                ("0", Some("a.wav"), &wav),
            ],
            true,
        ),
        (
            "operations not JSON",
            vec![
                ("operations", None, b"{\"query\": "),
                ("map", None, map),
                ("0", Some("a.wav"), &wav),
            ],
            true,
        ),
        (
            "no operations",
            vec![("map", None, map), ("0", Some("a.wav"), &wav)],
            true,
        ),
        (
            "no closing boundary",
            vec![
                ("operations", None, SUBMIT.as_bytes()),
                ("map", None, map),
                ("0", Some("a.wav"), &wav),
            ],
            false,
        ),
        (
            "operations of invalid UTF-8",
            vec![
                ("operations", None, b"{\"query\": \"\xff\xfe\"}"),
                ("map", None, map),
                ("0", Some("a.wav"), &wav),
            ],
            true,
        ),
        (
            "text sent as audio",
            vec![
                ("operations", None, SUBMIT.as_bytes()),
                ("map", None, map),
                ("0", Some("a.wav"), &text_as_audio),
            ],
            true,
        ),
    ];
    for (name, parts, close) in cases {
        let body = multipart_body("xYz", &parts, close);
        s.multipart(name, Refused, "xYz", body).await;
    }
    // Out of the spec's order; async-graphql takes it (the file waits in a temporary file).
    let body = multipart_body(
        "xYz",
        &[
            ("0", Some("a.wav"), &wav),
            ("operations", None, SUBMIT.as_bytes()),
            ("map", None, map),
        ],
        true,
    );
    s.multipart("file before operations", Expect::NoServerError, "xYz", body)
        .await;
    // 1,000 files, each mapped.
    let map: serde_json::Map<String, Value> = (0..1000)
        .map(|i| (i.to_string(), json!(["variables.r"])))
        .collect();
    let map = Value::Object(map).to_string();
    let names: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let mut parts: Vec<Part> = vec![
        ("operations", None, SUBMIT.as_bytes()),
        ("map", None, map.as_bytes()),
    ];
    for n in &names {
        parts.push((n, Some("a.wav"), b"RIFF"));
    }
    s.multipart(
        "1,000 files",
        Refused,
        "xYz",
        multipart_body("xYz", &parts, true),
    )
    .await;
    // 10,000 parts the map does not name.
    let mut parts: Vec<Part> = vec![
        ("operations", None, br#"{"query": "{ __typename }"}"#),
        ("map", None, b"{}"),
    ];
    for _ in 0..10_000 {
        parts.push(("junk", None, b"x"));
    }
    s.multipart(
        "10,000 unmapped parts",
        Expect::NoServerError,
        "xYz",
        multipart_body("xYz", &parts, true),
    )
    .await;
    let big = vec![0u8; 2 * 1024 * 1024];
    let parts: Vec<Part> = vec![
        ("operations", None, SUBMIT.as_bytes()),
        ("map", None, br#"{"0":["variables.r"]}"#),
        ("0", Some("a.wav"), &big),
    ];
    s.multipart(
        "a file over the recording limit",
        Refused,
        "xYz",
        multipart_body("xYz", &parts, true),
    )
    .await;
    let body = multipart_body(
        "xYz",
        &[
            ("operations", None, SUBMIT.as_bytes()),
            ("map", None, br#"{"0":["variables.r"]}"#),
        ],
        true,
    );
    s.multipart("a boundary that is not the body's", Refused, "other", body)
        .await;
    let garbage = s.rng.bytes(50_000);
    s.multipart("random bytes", Refused, "xYz", garbage).await;
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: &str, protocol: &str) -> Option<Ws> {
    let mut req = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// How a WebSocket answered: closed (with its code), an error message, data, or nothing.
async fn ws_outcome(ws: &mut Ws, within: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Outcome::ServerError("no answer".into()),
            Ok(None) | Ok(Some(Err(_))) => return Outcome::Refused,
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                return if code == 1011 {
                    Outcome::ServerError(format!("closed with {code}"))
                } else {
                    Outcome::Refused
                };
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("ping") => {
                        let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                    Some("connection_ack") | Some("ka") | Some("complete") => {}
                    Some("error") | Some("connection_error") => return Outcome::Refused,
                    Some("next") | Some("data") if v["payload"].get("errors").is_some() => {
                        return Outcome::Refused
                    }
                    _ => return Outcome::Answered(short(&t)),
                }
            }
            _ => {}
        }
    }
}

async fn ws_case(s: &mut Suite, name: &str, protocol: &str, init: bool, messages: Vec<Message>) {
    let started = Instant::now();
    let outcome = match ws_connect(&s.server.addr, protocol).await {
        None => Outcome::Refused,
        Some(mut ws) => {
            if init {
                let _ = ws
                    .send(Message::text(
                        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } })
                            .to_string(),
                    ))
                    .await;
            }
            for m in messages {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            ws_outcome(&mut ws, FAST).await
        }
    };
    s.tally
        .note(name, Expect::Refused, outcome, started.elapsed());
}

fn raw_text(bytes: &[u8]) -> Message {
    Message::Frame(Frame::message(
        bytes.to_vec(),
        OpCode::Data(Data::Text),
        true,
    ))
}

async fn websockets(s: &mut Suite) {
    const T: &str = "graphql-transport-ws";
    const L: &str = "graphql-ws";
    let subscribe = |id: &str, query: &str| {
        Message::text(
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } }).to_string(),
        )
    };
    ws_case(
        s,
        "ws: invalid UTF-8 before init",
        T,
        false,
        vec![raw_text(b"{\"type\":\"\xff\xfe\"}")],
    )
    .await;
    ws_case(
        s,
        "ws: invalid UTF-8 after init",
        T,
        true,
        vec![raw_text(b"\xc3\x28\xa0\xa1")],
    )
    .await;
    let random = s.rng.bytes(4096);
    ws_case(
        s,
        "ws: random binary",
        T,
        true,
        vec![Message::binary(random)],
    )
    .await;
    let printable: String = s
        .rng
        .bytes(2000)
        .iter()
        .map(|b| (b'a' + b % 26) as char)
        .collect();
    ws_case(
        s,
        "ws: random text",
        T,
        true,
        vec![Message::text(printable)],
    )
    .await;
    for (name, text) in [
        ("ws: type a number", r#"{"type": 5}"#),
        ("ws: unknown type", r#"{"type": "nonsense"}"#),
        ("ws: empty object", "{}"),
        ("ws: array", "[]"),
        ("ws: null", "null"),
        (
            "ws: subscribe without id",
            r#"{"type": "subscribe", "payload": {"query": "{ __typename }"}}"#,
        ),
        (
            "ws: subscribe with a payload string",
            r#"{"id": "1", "type": "subscribe", "payload": "x"}"#,
        ),
        (
            "ws: init with a payload string",
            r#"{"type": "connection_init", "payload": "x"}"#,
        ),
    ] {
        ws_case(s, name, T, true, vec![Message::text(text)]).await;
    }
    ws_case(
        s,
        "ws: subscribe before init",
        T,
        false,
        vec![subscribe("1", "subscription { callEvents { kind } }")],
    )
    .await;
    ws_case(
        s,
        "ws: a second init",
        T,
        true,
        vec![Message::text(r#"{"type": "connection_init"}"#)],
    )
    .await;
    ws_case(
        s,
        "ws: a 10 KB id",
        T,
        true,
        vec![subscribe(&"i".repeat(10_000), "{ __typename }")],
    )
    .await;
    let aliases: String = (0..10_000).map(|i| format!(" a{i}: __typename")).collect();
    ws_case(
        s,
        "ws: 10,000 aliases",
        T,
        true,
        vec![subscribe("1", &format!("{{{aliases}}}"))],
    )
    .await;
    ws_case(
        s,
        "ws: a document 10,000 deep",
        T,
        true,
        vec![subscribe(
            "1",
            &format!("{{{}b{}}}", "a{".repeat(10_000), "}".repeat(10_000)),
        )],
    )
    .await;
    ws_case(
        s,
        "ws: a broken document",
        T,
        true,
        vec![subscribe("1", "subscription {{{")],
    )
    .await;
    ws_case(
        s,
        "ws: a 100 KB message",
        T,
        true,
        vec![Message::text(format!(
            r#"{{"type": "ping", "payload": {{"x": "{}"}}}}"#,
            "x".repeat(100_000)
        ))],
    )
    .await;
    ws_case(
        s,
        "ws: a subscription id twice",
        T,
        true,
        vec![
            subscribe("1", "subscription { callEvents { kind } }"),
            subscribe("1", "subscription { callEvents { kind } }"),
        ],
    )
    .await;
    ws_case(
        s,
        "ws: an unknown subprotocol",
        "graphql-nonsense",
        false,
        vec![],
    )
    .await;
    ws_case(s, "ws legacy: start before init", L, false, vec![Message::text(r#"{"id":"1","type":"start","payload":{"query":"subscription { callEvents { kind } }"}}"#)]).await;
    ws_case(
        s,
        "ws legacy: invalid UTF-8",
        L,
        true,
        vec![raw_text(b"\xff")],
    )
    .await;
    ws_case(
        s,
        "ws legacy: unknown type",
        L,
        true,
        vec![Message::text(r#"{"type":"subscribe"}"#)],
    )
    .await;

    // Bytes that are not WebSocket frames at all, after the handshake.
    let started = Instant::now();
    let outcome = match ws_connect(&s.server.addr, T).await {
        None => Outcome::Refused,
        Some(mut ws) => {
            let garbage = s.rng.bytes(10_000);
            if let MaybeTlsStream::Plain(tcp) = ws.get_mut() {
                let _ = tcp.write_all(&garbage).await;
            }
            ws_outcome(&mut ws, FAST).await
        }
    };
    s.tally.note(
        "ws: unframed random bytes",
        Expect::Refused,
        outcome,
        started.elapsed(),
    );
    // Upgrade requests that are not valid.
    s.raw(
        "ws: upgrade with an unknown version",
        b"GET /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
    )
    .await;
    s.raw(
        "ws: upgrade without a key",
        b"GET /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n",
    )
    .await;
}

/// Sends a graphql-sse request and judges the answer: a 4xx, or a stream whose events carry
/// errors.
async fn sse_case(s: &mut Suite, name: &str, req: reqwest::RequestBuilder) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(FAST, req.send()).await {
        Err(_) => Outcome::ServerError("no answer".into()),
        Ok(Err(e)) => Outcome::ServerError(format!("request failed: {e}")),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let mut body = String::new();
            let mut stream = resp.bytes_stream();
            let deadline = tokio::time::Instant::now() + FAST;
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
                body.push_str(&String::from_utf8_lossy(&chunk));
                if body.contains("\"errors\"") || body.contains("event: complete") {
                    break;
                }
            }
            judge_http(Some(status), &body)
        }
    };
    s.tally
        .note(name, Expect::Refused, outcome, started.elapsed());
}

async fn sse(s: &mut Suite) {
    let post = |s: &Suite, body: Vec<u8>, auth: bool| {
        let mut r = s
            .client
            .post(s.url("/graphql"))
            .header("accept", "text/event-stream")
            .header("content-type", "application/json")
            .body(body);
        if auth {
            r = r.bearer_auth(ADMIN_KEY);
        }
        r
    };
    let random = s.rng.bytes(5000);
    sse_case(s, "sse: random bytes", post(s, random, true)).await;
    sse_case(
        s,
        "sse: invalid UTF-8",
        post(s, b"{\"query\":\"\xff\"}".to_vec(), true),
    )
    .await;
    sse_case(
        s,
        "sse: a batch",
        post(s, br#"[{"query":"{ __typename }"}]"#.to_vec(), true),
    )
    .await;
    let sub = br#"{"query":"subscription { callEvents { kind } }"}"#.to_vec();
    sse_case(s, "sse: without credentials", post(s, sub, false)).await;
    let deep = json!({ "query": format!("subscription {{{}b{}}}", "a{".repeat(10_000), "}".repeat(10_000)) });
    sse_case(
        s,
        "sse: a document 10,000 deep",
        post(s, deep.to_string().into_bytes(), true),
    )
    .await;
    let aliases: String = (0..10_000)
        .map(|i| format!(" a{i}: callEvents {{ kind }}"))
        .collect();
    let flood = json!({ "query": format!("subscription {{{aliases}}}") });
    sse_case(
        s,
        "sse: 10,000 aliases",
        post(s, flood.to_string().into_bytes(), true),
    )
    .await;
    sse_case(
        s,
        "sse: unknown field",
        post(s, br#"{"query":"subscription { nope }"}"#.to_vec(), true),
    )
    .await;
    for (name, path) in [
        (
            "sse: GET with invalid percent-encoding",
            "/graphql?query=%FF%FE",
        ),
        (
            "sse: GET with random bytes",
            "/graphql?query=%01%02%03%7B%7B",
        ),
        ("sse: GET without a query", "/graphql"),
    ] {
        let r = s
            .client
            .get(s.url(path))
            .bearer_auth(ADMIN_KEY)
            .header("accept", "text/event-stream");
        sse_case(s, name, r).await;
    }
}

async fn raw_http(s: &mut Suite) {
    let post = |headers: &str, body: &str| {
        format!("POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n{headers}\r\n{body}").into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length beyond 64 bits",
            post("Content-Length: 99999999999999999999999\r\n", "{}"),
        ),
        (
            "Content-Length of 10 GB",
            post("Content-Length: 9999999999\r\n", "{}"),
        ),
        (
            "Content-Length of 100 MB",
            post("Content-Length: 100000000\r\n", "{}"),
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", "{}"),
        ),
        (
            "two Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
        ),
        (
            "Content-Length and chunked",
            post("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", "{}"),
        ),
        (
            "a chunk size beyond 64 bits",
            post("Transfer-Encoding: chunked\r\n", "FFFFFFFFFFFFFFFFFF\r\n{}"),
        ),
        (
            "a chunk size that is not hex",
            post("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
        ),
        (
            "an unknown transfer encoding",
            post("Transfer-Encoding: gzip\r\n", "{}"),
        ),
        (
            "a garbage request line",
            b"\x00\x01\x02 garbage\r\n\r\n".to_vec(),
        ),
        (
            "a 200 KB URI",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000)).into_bytes(),
        ),
        (
            "200 headers",
            format!(
                "GET /healthz HTTP/1.1\r\n{}\r\n",
                (0..200)
                    .map(|i| format!("X-{i}: 1\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
        ),
        (
            "a 100 KB header",
            format!(
                "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "b".repeat(100_000)
            )
            .into_bytes(),
        ),
        (
            "HTTP/3.0",
            b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "the HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "a NUL in a header",
            b"GET /healthz HTTP/1.1\r\nX-A: a\x00b\r\n\r\n".to_vec(),
        ),
        (
            "an unknown method",
            b"BREW /graphql HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "a bare LF request",
            b"GET /graphql?query=%7B HTTP/1.1\nHost: x\n\n".to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        s.raw(name, &bytes).await;
    }
    let junk = s.rng.bytes(20_000);
    s.raw("random bytes on the socket", &junk).await;
}

async fn slowloris(s: &mut Suite) {
    let addr = s.server.addr.clone();
    let header_bound = Duration::from_secs(HEADER_TIMEOUT_SECS) + FAST;
    let body_bound = Duration::from_secs(BODY_TIMEOUT_SECS) + FAST;
    // Several at once, each from its own address: headers a line at a time, bodies a byte at a
    // time; all while the well-behaved client keeps going.
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let headers = i % 2 == 0;
            let stream = connect_from(50 + i, &addr).await;
            let (mut r, mut w) = stream.into_split();
            let started = Instant::now();
            let writer = tokio::spawn(async move {
                let head = if headers {
                    "POST /graphql HTTP/1.1\r\n".to_string()
                } else {
                    format!("POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
                };
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let more: &[u8] = if headers { b"X-Slow: 1\r\n" } else { b" " };
                    if w.write_all(more).await.is_err() {
                        return;
                    }
                }
            });
            let mut got = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got)).await;
            writer.abort();
            (headers, ended.is_ok(), got, started.elapsed())
        }));
    }
    for t in tasks {
        let (headers, ended, got, took) = t.await.unwrap();
        let text = String::from_utf8_lossy(&got).into_owned();
        let (name, bound) = if headers {
            ("slowloris: trickled headers", header_bound)
        } else {
            ("slowloris: trickled body", body_bound)
        };
        let outcome = if !ended {
            Outcome::ServerError("never cut".into())
        } else if headers {
            // Dropped without an answer, or a 4xx.
            judge_http(status_of(&got), &text)
        } else if status_of(&got) == Some(408) {
            Outcome::Refused
        } else {
            match judge_http(status_of(&got), &text) {
                Outcome::Refused => Outcome::Answered(format!("not 408: {}", short(&text))),
                other => other,
            }
        };
        // Bounded by the timeout, not by `FAST`.
        s.tally
            .note_within(name, Expect::Refused, outcome, took, bound);
    }
}
