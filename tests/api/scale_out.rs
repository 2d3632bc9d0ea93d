//! Scale-out, as separate processes of the real binary: two `serve` instances, two `worker`s and
//! one `relay` on Postgres, Redis and the emulated AWS. Subscribers on both instances must see
//! every call's events in order, without gaps or duplicates, and every call must complete exactly
//! once — also when a worker is killed with SIGKILL mid-run and Redis restarts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::backends::ProductionStack;
use crate::helpers::*;
use crate::require;

const CALLS: usize = 200;
const BIN: &str = env!("CARGO_BIN_EXE_voicegraph");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private Redis on its own port, so the test may stop and restart it.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Redis::start(self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    children: Vec<(String, Child)>,
}

impl Cluster {
    fn spawn(&mut self, role: &str, name: &str, extra: &[(&str, String)]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(role).stdout(log.try_clone().unwrap()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(format!("VOICEGRAPH_{}", k.to_uppercase()), v);
        }
        for (k, v) in extra {
            cmd.env(format!("VOICEGRAPH_{}", k.to_uppercase()), v);
        }
        self.children
            .push((name.to_string(), cmd.spawn().expect("spawn voicegraph")));
    }

    fn kill(&mut self, name: &str) {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        // SIGKILL: no drain, no release; the job's lease must lapse.
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_ready(client: &reqwest::Client, port: u16) {
    for _ in 0..300 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("instance on port {port} never became ready");
}

/// Collects a subscriber's events until it has seen `COMPLETED` for `expected` calls.
fn collect(mut sub: Subscription, expected: usize) -> JoinHandle<Vec<(Value, DateTime<Utc>)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut completed = HashSet::new();
        while completed.len() < expected {
            let Some(msg) = sub.recv(Duration::from_secs(120)).await else {
                break;
            };
            assert_eq!(msg["type"], "next", "{msg}");
            let e = msg["payload"]["data"]["callEvents"].clone();
            if e["kind"] == "COMPLETED" {
                completed.insert(e["callId"].as_str().unwrap().to_string());
            }
            out.push((e, Utc::now()));
        }
        out
    })
}

async fn submit_by_upload(client: &reqwest::Client, port: u16, audio: &[u8], n: usize) -> String {
    let gql = |q: &str, v: Value| {
        let client = client.clone();
        let q = q.to_string();
        async move {
            let body: Value = client
                .post(format!("http://127.0.0.1:{port}/graphql"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({ "query": q, "variables": v }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };
    let up = gql(
        "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl headers { name value } } }",
        json!({ "n": audio.len() }),
    )
    .await["createRecordingUpload"]
    .clone();
    let mut put = client
        .put(up["uploadUrl"].as_str().unwrap())
        .body(audio.to_vec());
    for h in up["headers"].as_array().unwrap() {
        put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    assert!(put.send().await.unwrap().status().is_success());
    let d = gql(
        "mutation($k: String!, $e: String!) { submitCall(input: {recordingKey: $k, externalId: $e}) { call { id } } }",
        json!({ "k": up["recordingKey"], "e": format!("scale-{n}") }),
    )
    .await;
    d["submitCall"]["call"]["id"].as_str().unwrap().to_string()
}

/// Every call's events arrive in order (SUBMITTED first, one COMPLETED last), with strictly
/// increasing cursors and no event twice; and they are exactly the events in the database.
fn check_stream(
    name: &str,
    events: &[(Value, DateTime<Utc>)],
    ids: &HashSet<String>,
    db_counts: &HashMap<String, usize>,
) {
    let mut last = 0i64;
    let mut seen = HashSet::new();
    let mut per_call: HashMap<String, Vec<String>> = HashMap::new();
    for (e, _) in events {
        let cursor: i64 = e["cursor"].as_str().unwrap().parse().unwrap();
        assert!(cursor > last, "{name}: cursor {cursor} after {last}");
        last = cursor;
        assert!(
            seen.insert(e["id"].as_str().unwrap().to_string()),
            "{name}: duplicate event {e}"
        );
        per_call
            .entry(e["callId"].as_str().unwrap().to_string())
            .or_default()
            .push(e["kind"].as_str().unwrap().to_string());
    }
    for id in ids {
        let kinds = per_call
            .get(id)
            .unwrap_or_else(|| panic!("{name}: no events for call {id}"));
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("SUBMITTED"),
            "{name}: {id}: {kinds:?}"
        );
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("COMPLETED"),
            "{name}: {id}: {kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "COMPLETED").count(),
            1,
            "{name}: {id}: {kinds:?}"
        );
        assert_eq!(
            kinds.len(),
            db_counts[id],
            "{name}: {id}: {kinds:?} is not what the database holds"
        );
    }
}

async fn database_counts(
    db: &sea_orm::DatabaseConnection,
) -> (HashMap<String, usize>, usize, usize) {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), "SELECT call_id::text AS id, COUNT(*) AS n, SUM(CASE WHEN kind = 'COMPLETED' THEN 1 ELSE 0 END) AS done FROM call_events GROUP BY call_id".to_string()))
        .await
        .unwrap();
    let mut counts = HashMap::new();
    let mut max_done = 0;
    for r in rows {
        let id: String = r.try_get("", "id").unwrap();
        let n: i64 = r.try_get("", "n").unwrap();
        let done: i64 = r.try_get("", "done").unwrap();
        max_done = max_done.max(done as usize);
        counts.insert(id, n as usize);
    }
    let completed: i64 = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM calls WHERE status = 'COMPLETED'".to_string(),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap();
    (counts, completed as usize, max_done)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn round(chaos: bool) {
    let redis_port = free_port();
    let mut redis = Redis::start(redis_port);
    let stack = require!(
        ProductionStack::create(Some(format!("redis://127.0.0.1:{redis_port}")), 5, 8).await
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = stack
        .vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("bootstrap_admin_key".into(), ADMIN_KEY.into()));
    env.push(("job_visibility_secs".into(), "8".into()));
    env.push(("worker_concurrency".into(), "2".into()));
    env.push(("relay_poll_ms".into(), "100".into()));
    env.push(("db_max_connections".into(), "8".into()));
    env.push(("log_format".into(), "text".into()));
    // The AWS_* variables (emulator endpoint, region, credentials) are inherited by the children.
    let status = Command::new(BIN)
        .arg("migrate")
        .env("VOICEGRAPH_DATABASE_URL", &stack.database_url)
        .env("VOICEGRAPH_MIGRATE_DATABASE_URL", &stack.owner_database_url)
        .env(
            "VOICEGRAPH_DATABASE_RUNTIME_ROLE",
            crate::backends::RUNTIME_ROLE,
        )
        .status()
        .unwrap();
    assert!(status.success());
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        env,
        children: Vec::new(),
    };
    let (pa, pb) = (free_port(), free_port());
    cluster.spawn("serve", "serve-a", &[("listen", format!("127.0.0.1:{pa}"))]);
    let client = reqwest::Client::new();
    wait_ready(&client, pa).await;
    cluster.spawn("serve", "serve-b", &[("listen", format!("127.0.0.1:{pb}"))]);
    cluster.spawn("worker", "worker-1", &[]);
    cluster.spawn("worker", "worker-2", &[]);
    cluster.spawn("relay", "relay", &[]);
    wait_ready(&client, pb).await;

    // From the start of a fresh database: live from the first event, with no race.
    let q = "subscription { callEvents(after: \"0\") { id cursor kind callId at } }";
    let subscribe = |port: u16| async move {
        let mut ws =
            Subscription::connect(&format!("127.0.0.1:{port}"), "graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } })).await;
        assert_eq!(
            ws.recv(Duration::from_secs(10)).await.unwrap()["type"],
            "connection_ack"
        );
        ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": q } }))
            .await;
        ws
    };
    let on_a = collect(subscribe(pa).await, CALLS);
    let on_b = collect(subscribe(pb).await, CALLS);

    let audio = wav(3.0, 2, 8000, &[(0, 0.2, 1.4), (1, 1.2, 2.6)]);
    let started = Instant::now();
    let mut ids = HashSet::new();
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(10) {
        // Calls go in through instance A; instance B only watches.
        let batch = join_all(
            chunk
                .iter()
                .map(|n| submit_by_upload(&client, pa, &audio, *n)),
        )
        .await;
        ids.extend(batch);
        if chaos && ids.len() == CALLS / 2 {
            cluster.kill("worker-1");
            redis.restart();
        }
    }
    let (a, b) = tokio::join!(on_a, on_b);
    let (a, b) = (a.unwrap(), b.unwrap());
    let elapsed = started.elapsed();

    let metrics = voicegraph::http::metrics::Metrics::new();
    let mut l = voicegraph::config::Layers::default();
    // Every tenant's rows: as the owner (the runtime role sees none without a tenant).
    l.set("database_url", stack.owner_database_url.clone());
    let db = voicegraph::wiring::connect(&l.settings().unwrap(), &metrics)
        .await
        .unwrap();
    let (counts, completed, max_done) = database_counts(db.connection()).await;
    assert_eq!(completed, CALLS, "every call is COMPLETED");
    assert_eq!(max_done, 1, "no call completed twice");
    check_stream("instance A", &a, &ids, &counts);
    check_stream("instance B", &b, &ids, &counts);

    // Latency from the worker's commit (the event's time) to the client on the other instance.
    let mut lat: Vec<f64> = b
        .iter()
        .filter(|(e, _)| e["kind"] == "COMPLETED")
        .map(|(e, got)| {
            let at: DateTime<Utc> = e["at"].as_str().unwrap().parse().unwrap();
            (*got - at).num_microseconds().unwrap() as f64 / 1000.0
        })
        .collect();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "scale-out{}: {CALLS} calls in {:.1} s = {:.1} calls/s; COMPLETED event latency to instance B: p50 {:.1} ms, p99 {:.1} ms",
        if chaos { " (worker SIGKILLed, Redis restarted)" } else { "" },
        elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_two_workers_one_relay_200_calls() {
    round(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_and_a_redis_restart_lose_nothing() {
    round(true).await;
}
