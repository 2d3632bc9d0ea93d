//! Backend outages, injected by a TCP proxy between the app and Postgres or Redis: what clients
//! and the load balancer see while a backend is gone, and that everything comes back with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use voicegraph::startup::Roles;

use crate::helpers::{TestApp, ADMIN_KEY};

/// A TCP proxy to `target` that can cut every connection through it and refuse new ones (an
/// outage as the app sees one: reset connections, then nothing answering), and restore them.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (up2, cuts2) = (up.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cuts }
    }

    /// The outage begins: open connections are dropped, new ones closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The outage ends.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest),
            None => (String::new(), rest),
        };
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{scheme}://{auth}{}{path}", self.addr)
    }

    /// The `host:port` of a URL.
    pub fn target_of(url: &str) -> SocketAddr {
        let rest = url.split_once("://").expect("a URL").1;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let hostport = rest.split('/').next().unwrap();
        let hostport = hostport.replace("localhost", "127.0.0.1");
        hostport.parse().unwrap_or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&hostport)
                .unwrap()
                .next()
                .unwrap()
        })
    }
}

async fn post(app: &TestApp, query: &str) -> (u16, Option<String>, Value) {
    let r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

const QUERY: &str = "{ calls(first: 1) { nodes { id } } }";

/// With Postgres gone, requests are answered at once with a retryable UNAVAILABLE (503 and
/// `Retry-After`), never INTERNAL or a 500; once it is back, the same requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_to_clients_until_it_ends() {
    let Some(base) = crate::backends::postgres_url() else {
        return;
    };
    if std::env::var("VOICEGRAPH_TEST_DB").as_deref() != Ok("postgres") {
        return;
    }
    let proxy = FaultProxy::start(FaultProxy::target_of(&base)).await;
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        let url = l.get("database_url").expect("a database URL on Postgres");
        l.set("database_url", proxy.url(&url));
    })
    .await;
    let (status, _, body) = post(&app, QUERY).await;
    assert_eq!(status, 200, "{body}");

    proxy.cut();
    // Every request of the outage: 503, Retry-After, UNAVAILABLE; none waits long.
    for _ in 0..5 {
        let started = Instant::now();
        let (status, retry, body) = post(&app, QUERY).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("2"), "{body}");
        let code = body["errors"][0]["extensions"]["code"].as_str();
        assert_eq!(code, Some("UNAVAILABLE"), "{body}");
        assert!(!body.to_string().contains("error id"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = post(&app, QUERY).await;
        if status == 200 && body.get("errors").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still failing after the outage: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn readiness(app: &TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_readiness(app: &TestApp, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = readiness(app).await;
        if s == status {
            return body;
        }
        assert!(Instant::now() < deadline, "readiness stayed {s}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An instance whose Redis subscription is down would miss other instances' events: it is not
/// ready until the subscription is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_event_subscription() {
    let redis = crate::require!(crate::backends::redis_url());
    let proxy = FaultProxy::start(FaultProxy::target_of(&redis)).await;
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("redis_url", proxy.url(&redis));
    })
    .await;
    let ready = wait_readiness(&app, 200).await;
    assert_eq!(ready["checks"]["events"]["ok"], true, "{ready}");

    proxy.cut();
    let ready = wait_readiness(&app, 503).await;
    assert_eq!(ready["checks"]["events"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["database"]["ok"], true, "{ready}");

    proxy.restore();
    let ready = wait_readiness(&app, 200).await;
    assert_eq!(ready["checks"]["events"]["ok"], true, "{ready}");
}
