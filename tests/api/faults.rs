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

use crate::backends::ProductionStack;
use crate::helpers::{short_call, TestApp, ADMIN_KEY};

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

async fn call_state(app: &TestApp, id: &str) -> Value {
    app.gql_ok(
        "query($id: ID!) { call(id: $id) { status error attempts } }",
        json!({ "id": id }),
    )
    .await["call"]
        .clone()
}

async fn retry_and_complete(app: &TestApp, id: &str) {
    let r = app
        .gql_ok(
            "mutation($id: ID!) { retryCall(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r["retryCall"]["status"], "QUEUED", "{r}");
    app.wait_status(id, "COMPLETED", 60).await;
}

/// A job whose every delivery died without recording anything (a worker killed each time) is
/// dead-lettered; the dead-letter reader marks its call FAILED with the reason, and `retryCall`
/// completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_deliveries_recorded_nothing_fails_its_call_and_retry_completes_it() {
    let settings = |l: &mut voicegraph::config::Layers| {
        l.set("job_max_receives", "2")
            .set("dead_letter_poll_secs", "1");
    };
    let app = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
        settings,
    )
    .await;
    let id = app.submit_ok(short_call(), json!({})).await;
    // Two deliveries that end without a word: leased, and the lease left to run out.
    for _ in 0..2 {
        let leases = app
            .state
            .queue
            .receive(1, Duration::from_millis(200), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].message.call_id.to_string(), id);
    }
    // The next receive finds it out of deliveries: dead-lettered, nothing to lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leases = app
        .state
        .queue
        .receive(1, Duration::from_secs(1), Duration::from_millis(500))
        .await
        .unwrap();
    assert!(leases.is_empty(), "{leases:?}");
    assert_eq!(call_state(&app, &id).await["status"], "QUEUED");

    let worker = app
        .spawn_beside(
            Roles {
                serve: false,
                worker: true,
                relay: false,
            },
            settings,
        )
        .await;
    app.wait_status(&id, "FAILED", 30).await;
    let call = call_state(&app, &id).await;
    let error = call["error"].as_str().unwrap();
    assert!(
        error.contains("dead-letter queue") && error.contains("retryCall"),
        "{call}"
    );
    retry_and_complete(&app, &id).await;
    drop(worker);
}

/// On SQS, with the worker's database gone for longer than a job's deliveries last: each
/// delivery is released at once with a backoff, the job runs out of them and is dead-lettered,
/// its call still QUEUED; once the database is back the dead-letter reader marks the call
/// FAILED with the reason, the dead-letter queue is emptied, and `retryCall` completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_outage_longer_than_the_deliveries_the_call_fails_and_retry_completes_it()
{
    let stack = crate::require!(ProductionStack::create(None, 3, 10).await);
    let api = crate::production::production_app_with(
        &stack,
        Roles {
            serve: true,
            worker: false,
            relay: true,
        },
    )
    .await;
    // The worker starts while the database is up, and loses it before the job comes.
    let proxy = FaultProxy::start(FaultProxy::target_of(&stack.database_url)).await;
    let worker = api
        .spawn_beside(
            Roles {
                serve: false,
                worker: true,
                relay: false,
            },
            |l| {
                for (k, v) in stack.vars() {
                    l.set(k, v);
                }
                l.set("database_url", proxy.url(&stack.database_url))
                    .set("job_visibility_secs", "10")
                    .set("dead_letter_poll_secs", "1");
            },
        )
        .await;
    proxy.cut();
    let id = api.submit_ok(short_call(), json!({})).await;
    // The job goes to the dead-letter queue within its three deliveries (each released after a
    // short backoff, not held for the 10 s visibility), its call still QUEUED.
    let sqs = aws_sdk_sqs::Client::new(&crate::backends::sdk().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead_letters(&sqs, &stack.dlq_url).await == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(call_state(&api, &id).await["status"], "QUEUED");

    proxy.restore();
    api.wait_status(&id, "FAILED", 60).await;
    let call = call_state(&api, &id).await;
    assert!(
        call["error"]
            .as_str()
            .unwrap()
            .contains("dead-letter queue"),
        "{call}"
    );
    // Handled: gone from the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = dead_letters(&sqs, &stack.dlq_url).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} left in the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    retry_and_complete(&api, &id).await;
    drop(worker);
}

/// Messages in a queue, visible or not.
async fn dead_letters(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::All)
        .send()
        .await
        .unwrap();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .into_iter()
    .map(|n| {
        attrs
            .attributes()
            .and_then(|a| a.get(&n))
            .map(|v| v.parse::<u64>().unwrap())
            .unwrap_or(0)
    })
    .sum()
}

/// Only a serving process subscribes to the deployment's Redis channel: workers and relays
/// publish events but read none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_serving_processes_subscribe_to_redis() {
    let redis = crate::require!(crate::backends::redis_url());
    let channel = format!("vg-test:{}", uuid::Uuid::new_v4());
    let settings = |l: &mut voicegraph::config::Layers| {
        l.set("redis_url", redis.clone())
            .set("redis_channel", channel.clone());
    };
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            n
        }
    };
    let api = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        settings,
    )
    .await;
    wait_readiness(&api, 200).await;
    assert_eq!(subscribers(&mut conn).await, 1);
    let others = api
        .spawn_beside(
            Roles {
                serve: false,
                worker: true,
                relay: true,
            },
            settings,
        )
        .await;
    // Whatever the other process would subscribe to, it would have by the time it serves a
    // round: give it one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        subscribers(&mut conn).await,
        1,
        "the worker and relay subscribed"
    );
    drop(others);
}
