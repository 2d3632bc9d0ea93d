//! `TestApp`: a running voicegraph on port 0 with a fresh data dir, and clients for it.

#![allow(dead_code)]

use std::io::Cursor;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use voicegraph::config::Layers;
use voicegraph::startup::{Application, Roles};
use voicegraph::state::AppState;

pub const ADMIN_KEY: &str = "vg_test_platform_admin_key";

pub struct TestApp {
    pub addr: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// When the suite runs on Postgres (`VOICEGRAPH_TEST_DB=postgres`), the database of a data dir:
/// named after the dir, so that a second app on the same dir shares it.
pub fn postgres_database(dir: &std::path::Path) -> Option<(String, String)> {
    if std::env::var("VOICEGRAPH_TEST_DB").ok().as_deref() != Some("postgres") {
        return None;
    }
    let base = crate::backends::postgres_url()
        .expect("VOICEGRAPH_TEST_POSTGRES_URL for VOICEGRAPH_TEST_DB=postgres");
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let name = format!("vg_t_{:016x}", h.finish());
    Some((
        crate::backends::runtime_url(&format!("{}/{name}", base.trim_end_matches('/'))),
        name,
    ))
}

/// The settings that make an app on Postgres run as the runtime role (`database_url`) and
/// migrate as the owner, granting that role its privileges.
pub fn postgres_settings(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let Some((url, name)) = postgres_database(dir) else {
        return Vec::new();
    };
    let base = crate::backends::postgres_url().unwrap();
    vec![
        ("database_url", url),
        (
            "migrate_database_url",
            format!("{}/{name}", base.trim_end_matches('/')),
        ),
        (
            "database_runtime_role",
            crate::backends::RUNTIME_ROLE.to_string(),
        ),
        ("db_max_connections", "6".to_string()),
    ]
}

/// Creates the test database of a data dir on Postgres, if the suite runs there.
pub async fn ensure_database(dir: &std::path::Path) {
    let Some((_, name)) = postgres_database(dir) else {
        return;
    };
    let base = crate::backends::postgres_url().unwrap();
    let admin = sea_orm::Database::connect(format!("{}/postgres", base.trim_end_matches('/')))
        .await
        .expect("postgres");
    let exists = sea_orm::ConnectionTrait::query_one_raw(
        &admin,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        ),
    )
    .await
    .expect("query pg_database");
    crate::backends::ensure_runtime_role(&admin).await;
    if exists.is_none() {
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("CREATE DATABASE \"{name}\""),
        )
        .await
        .expect("create database");
    }
    let _ = admin.close().await;
}

/// Settings every test app starts from: its own data dir (and database), port 0, quick retries.
pub fn layers(dir: &std::path::Path) -> Layers {
    let mut l = Layers::default();
    for (k, v) in postgres_settings(dir) {
        l.set(k, v);
    }
    l.set("data_dir", dir.to_string_lossy().to_string())
        .set("listen", "127.0.0.1:0")
        .set("bootstrap_admin_key", ADMIN_KEY)
        .set("job_retry_base_ms", "50")
        .set("relay_poll_ms", "50")
        .set("watermark_poll_ms", "200")
        // On Postgres nothing may wait for the fallback: the notifications must wake every role
        // (the idle test sets the default back).
        .set("notify_fallback_secs", "3600")
        // Apps of parallel tests share one Redis; each deployment has its own channel.
        .set("redis_channel", format!("vg-test:{}", uuid::Uuid::new_v4()))
        // Tests send many requests from one key and one address; the limits' own tests (in
        // `rate_limits`) set low ones.
        .set("rate_limit_rps", "10000")
        .set("tenant_rate_limit_rps", "10000")
        .set("address_rate_limit_rps", "10000")
        .set("address_rate_limit_burst", "20000")
        .set("auth_failures_per_minute", "100000")
        .set("cost_budget_per_minute", "100000000")
        .set("tenant_cost_budget_per_minute", "100000000")
        .set("max_sockets_per_key", "10000")
        .set("max_subscriptions_per_key", "100000");
    l
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Roles::ALL, |_| {}).await
    }

    pub async fn spawn_with(roles: Roles, tweak: impl FnOnce(&mut Layers)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, roles, tweak).await
    }

    /// Starts an app on an existing data dir (e.g. after another one stopped).
    pub async fn spawn_in(
        dir: tempfile::TempDir,
        roles: Roles,
        tweak: impl FnOnce(&mut Layers),
    ) -> Self {
        ensure_database(dir.path()).await;
        let mut l = layers(dir.path());
        tweak(&mut l);
        let app = Application::build(l.settings().expect("settings"), roles)
            .await
            .expect("app builds");
        let addr = format!("127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let token = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Self {
            addr,
            state,
            client: reqwest::Client::new(),
            dir,
            token,
            handle: Some(handle),
        }
    }

    /// Starts a second instance on this one's data dir and database, on its own port, as a
    /// second server behind a load balancer would run.
    pub async fn spawn_beside(&self, roles: Roles, tweak: impl FnOnce(&mut Layers)) -> Self {
        let mut l = layers(self.dir.path());
        tweak(&mut l);
        let app = Application::build(l.settings().expect("settings"), roles)
            .await
            .expect("app builds");
        let addr = format!("127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let token = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Self {
            addr,
            state,
            client: reqwest::Client::new(),
            // The data dir stays the first instance's; this one is only a placeholder.
            dir: tempfile::tempdir().expect("temp dir"),
            token,
            handle: Some(handle),
        }
    }

    /// Stops the app and gives back its data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), h).await;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Runs an operation as the platform admin; returns the whole response body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(Some(ADMIN_KEY), query, variables).await.1
    }

    /// Runs an operation and panics on any GraphQL error; returns `data`.
    pub async fn gql_ok(&self, query: &str, variables: Value) -> Value {
        let body = self.gql(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        body["data"].clone()
    }

    pub async fn gql_as(
        &self,
        key: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (reqwest::StatusCode, Value) {
        let mut req = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json body"))
    }

    /// `submitCall` with the recording as a multipart upload; `input` adds other fields.
    pub async fn submit(
        &self,
        key: &str,
        audio: Vec<u8>,
        content_type: &str,
        input: Value,
    ) -> (reqwest::StatusCode, Value) {
        let mut input = input;
        input["recording"] = Value::Null;
        let ops = json!({
            "query": "mutation($input: SubmitCallInput!) { submitCall(input: $input) { deduplicated call { id status externalId tags } } }",
            "variables": { "input": input },
        });
        let form = reqwest::multipart::Form::new()
            .text("operations", ops.to_string())
            .text(
                "map",
                json!({ "0": ["variables.input.recording"] }).to_string(),
            )
            .part(
                "0",
                reqwest::multipart::Part::bytes(audio)
                    .file_name("call.wav")
                    .mime_str(content_type)
                    .unwrap(),
            );
        let resp = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(key)
            .header("apollo-require-preflight", "true")
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json body"))
    }

    /// Submits as the admin and returns the new call's id.
    pub async fn submit_ok(&self, audio: Vec<u8>, input: Value) -> String {
        let (status, body) = self.submit(ADMIN_KEY, audio, "audio/wav", input).await;
        assert_eq!(status, 200, "{body:#}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        body["data"]["submitCall"]["call"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Uploads a WAV through `createRecordingUpload` and its signed URL, sending exactly the
    /// headers it asks for; returns the upload (`recordingKey`, `uploadUrl`, …).
    pub async fn upload(&self, audio: &[u8]) -> Value {
        let up = self
            .gql_ok(
                "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl method headers { name value } expiresAt } }",
                json!({ "n": audio.len() }),
            )
            .await["createRecordingUpload"]
            .clone();
        let mut put = self
            .client
            .put(up["uploadUrl"].as_str().unwrap())
            .body(audio.to_vec());
        for h in up["headers"].as_array().unwrap() {
            put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
        }
        let put = put.send().await.expect("upload");
        assert!(
            put.status().is_success(),
            "upload refused: {:?}",
            put.text().await
        );
        up
    }

    /// GETs a path of the app and parses the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json body")
    }

    /// The body of a GET of `path`, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text body")
    }

    pub async fn call_status(&self, id: &str) -> String {
        let d = self
            .gql_ok(
                "query($id: ID!) { call(id: $id) { status } }",
                json!({ "id": id }),
            )
            .await;
        d["call"]["status"]
            .as_str()
            .unwrap_or("MISSING")
            .to_string()
    }

    /// Polls until the call has `status` (or panics after `secs`).
    pub async fn wait_status(&self, id: &str, status: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.call_status(id).await;
            if now == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "call {id} is {now}, not {status}, after {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a `graphql-transport-ws` subscription authenticated with `key`.
    pub async fn subscribe(&self, key: &str, query: &str, variables: Value) -> Subscription {
        let mut ws = Subscription::connect(&self.addr, "graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } })).await;
        let ack = ws
            .recv(Duration::from_secs(5))
            .await
            .expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }))
            .await;
        ws
    }

    /// A connection as the tables' owner, for fixtures that reach past the store (on Postgres the
    /// app's own connection is the runtime role's, held to one tenant per transaction).
    pub async fn owner_db(&self) -> sea_orm::DatabaseConnection {
        match &self.state.settings.migrate_database_url {
            Some(url) => sea_orm::Database::connect(url.as_str()).await.unwrap(),
            None => self.state.store.connection().clone(),
        }
    }

    pub fn statements(&self) -> u64 {
        self.state.metrics.db_statements.get()
    }

    /// Waits until the app has issued no statement for 300 ms (what its requests spawned, such
    /// as recording a key's use, and what its relay does with their events, is done); panics
    /// after 10 s.
    pub async fn settled(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = self.statements();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.statements();
            if now == last {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "statements for 10 s");
            last = now;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub struct Subscription {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Subscription {
    pub async fn connect(addr: &str, protocol: &str) -> Self {
        let mut req = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON message, skipping pings; `None` on timeout or close.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json message");
                    if v["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The payload of the next `next` message (panics on anything else).
    pub async fn next_data(&mut self, timeout: Duration) -> Value {
        let msg = self
            .recv(timeout)
            .await
            .expect("a subscription message in time");
        assert_eq!(msg["type"], "next", "unexpected message: {msg}");
        assert!(
            msg["payload"].get("errors").is_none(),
            "subscription error: {msg}"
        );
        msg["payload"]["data"].clone()
    }
}

/// A 16-bit PCM WAV: `bursts` of loud noise (channel, start s, end s) over quiet noise.
pub fn wav(seconds: f64, channels: u16, rate: u32, bursts: &[(u16, f64, f64)]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        let mut seed: u32 = 0x1234_5678;
        let n = (seconds * rate as f64) as usize;
        for i in 0..n {
            let t = i as f64 / rate as f64;
            for ch in 0..channels {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = ((seed >> 16) as f64 / 65536.0) * 2.0 - 1.0;
                let loud = bursts.iter().any(|(c, a, b)| *c == ch && t >= *a && t < *b);
                let amp = if loud { 9000.0 } else { 15.0 };
                w.write_sample((noise * amp) as i16).unwrap();
            }
        }
        w.finalize().unwrap();
    }
    out.into_inner()
}

/// A short stereo call: agent 0.2–1.2 s, customer 1.0–1.8 s.
pub fn short_call() -> Vec<u8> {
    wav(2.0, 2, 8000, &[(0, 0.2, 1.2), (1, 1.0, 1.8)])
}
