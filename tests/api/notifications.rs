//! Database notifications: on Postgres an idle process issues (almost) nothing, and every role
//! still wakes at once for what another process did — a submitted call is analysed and its
//! events reach a subscriber on another instance with every fallback timer an hour away — and,
//! on every backend, at the time a job becomes due by itself (a lease that runs out, a nack's
//! delay that ends).

use std::time::{Duration, Instant};

use serde_json::json;
use voicegraph::domain::JobMessage;
use voicegraph::ports::JobQueue;
use voicegraph::startup::Roles;
use voicegraph::store::queue::EmbeddedQueue;
use voicegraph::store::Link;

use crate::helpers::*;

const NO_ROLES: Roles = Roles {
    serve: false,
    worker: false,
    relay: false,
};

fn on_postgres() -> bool {
    let yes = std::env::var("VOICEGRAPH_TEST_DB").ok().as_deref() == Some("postgres");
    if !yes {
        eprintln!(
            "skipped: this test is about Postgres notifications (VOICEGRAPH_TEST_DB=postgres)"
        );
    }
    yes
}

/// Waits until the app's notification listener is connected.
pub async fn listening(app: &TestApp) -> u64 {
    let mut link = app.state.store.notifications().watch_link();
    let link = tokio::time::timeout(Duration::from_secs(20), link.wait_for(|l| l.is_up()))
        .await
        .expect("the listener connects")
        .expect("the link is watched");
    match *link {
        Link::Up { generation } => generation,
        other => unreachable!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_process_issues_less_than_one_statement_a_second() {
    if !on_postgres() {
        return;
    }
    // Every role in one process, as `voicegraph` with no arguments runs, with the default
    // fallback: nothing sends it requests or opens a connection.
    let app = TestApp::spawn_with(Roles::ALL, |l| {
        l.set("notify_fallback_secs", "30")
            .set("relay_poll_ms", "500")
            .set("watermark_poll_ms", "500");
    })
    .await;
    listening(&app).await;
    // Start-up (migrations, the first rounds) is over once a second passes without a statement.
    let mut last = app.statements();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = app.statements();
        if now == last {
            break;
        }
        last = now;
    }
    // The process's own count of every statement it sends: the pool's (the store's callback) and
    // the listener's. (Postgres's `pg_stat_database` counts for the database were no robust
    // measure here: with other tests' databases on the same server they also showed
    // transactions the process did not send.)
    let window = Duration::from_secs(20);
    let (s0, t0) = (app.statements(), Instant::now());
    tokio::time::sleep(window).await;
    let statements = app.statements() - s0;
    let rate = statements as f64 / t0.elapsed().as_secs_f64();
    eprintln!("idle: {statements} statements in {window:?} ({rate:.2}/s)");
    assert!(
        (statements as f64) < window.as_secs_f64(),
        "{statements} statements in {window:?}: not under one a second"
    );
}

/// Waits until every app's listener is connected.
async fn all_listening(apps: &[&TestApp]) {
    for app in apps {
        listening(app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_through_separate_instances_on_notifications_alone() {
    if !on_postgres() {
        return;
    }
    // No timer that could stand in for a notification fires within the test: the fallback is an
    // hour away, and so is every poll.
    let slow = |l: &mut voicegraph::config::Layers| {
        l.set("notify_fallback_secs", "3600")
            .set("relay_poll_ms", "3600000")
            .set("watermark_poll_ms", "3600000");
    };
    let api = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: false,
            relay: false,
        },
        slow,
    )
    .await;
    let relay = api
        .spawn_beside(
            Roles {
                serve: false,
                worker: false,
                relay: true,
            },
            slow,
        )
        .await;
    let worker = api
        .spawn_beside(
            Roles {
                serve: false,
                worker: true,
                relay: false,
            },
            slow,
        )
        .await;
    all_listening(&[&api, &relay, &worker]).await;

    // The API instance hears of the events through the database only (each instance has its own
    // in-process bus): the relay's sequencing notifies the new positions. (From the start, so
    // that it does not matter whether the subscription begins before the first event.)
    let mut sub = api
        .subscribe(
            ADMIN_KEY,
            "subscription { callEvents(after: \"0\") { kind callId } }",
            json!({}),
        )
        .await;
    let started = Instant::now();
    // Submitted on the API instance: its outbox row wakes the relay, whose job wakes the worker,
    // whose COMPLETED event wakes the relay again.
    let id = api.submit_ok(short_call(), json!({})).await;
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("COMPLETED") {
        let e = sub.next_data(Duration::from_secs(60)).await["callEvents"].clone();
        assert_eq!(e["callId"], id.as_str());
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    eprintln!(
        "submitted to COMPLETED across three instances in {:?}",
        started.elapsed()
    );
    assert_eq!(kinds, ["SUBMITTED", "PROCESSING", "COMPLETED"]);
    assert_eq!(api.call_status(&id).await, "COMPLETED");
    // The API instance read the position once, at start (0); only the notices moved it since.
    assert_eq!(*api.state.watermark.borrow(), 3);
    // Nothing fell back to polling: every listener stayed connected throughout.
    for app in [&api, &relay, &worker] {
        assert_eq!(
            app.state.store.notifications().link(),
            Link::Up { generation: 1 }
        );
    }
}

fn message() -> JobMessage {
    JobMessage {
        tenant_id: uuid::Uuid::new_v4(),
        call_id: uuid::Uuid::new_v4(),
        analysis_id: None,
        traceparent: None,
    }
}

/// A receive that waits far longer than the test may take: it returns when a job is due.
async fn receive_when_due(q: &EmbeddedQueue) -> voicegraph::ports::Lease {
    let mut leases = q
        .receive(1, Duration::from_secs(60), Duration::from_secs(300))
        .await
        .expect("receive");
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases.pop().unwrap()
}

/// A job that becomes due by time alone — its lease ran out, its nack's delay ended — is received
/// by a waiting worker of another process when it is due, not at the end of the worker's wait
/// (on Postgres nothing announces it: the worker computed when to look; on SQLite it polls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_due_by_time_alone_wake_waiting_workers_when_due() {
    let a = TestApp::spawn_with(NO_ROLES, |_| {}).await;
    let b = a.spawn_beside(NO_ROLES, |_| {}).await;
    if a.state.store.is_postgres() {
        all_listening(&[&a, &b]).await;
    }
    let qa = EmbeddedQueue::new(&a.state.store, "wake", 5);
    let qb = EmbeddedQueue::new(&b.state.store, "wake", 5);

    // A lease that runs out: leased for 1 s by A, received by B once it has.
    qa.send(&message(), None).await.unwrap();
    let leased_at = Instant::now();
    let lease = qa
        .receive(1, Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(lease.len(), 1);
    let again = receive_when_due(&qb).await;
    let after = leased_at.elapsed();
    eprintln!("an expired lease was received again after {after:?}");
    assert_eq!(again.receive_count, 2);
    assert!(
        after >= Duration::from_millis(950),
        "before the lease ran out: {after:?}"
    );
    assert!(
        after < Duration::from_secs(20),
        "long after the lease ran out: {after:?}"
    );
    qb.ack(&again).await.unwrap();

    // A nack with a delay, from A, while B waits (for the job's 60 s lease, as far as it knew).
    qa.send(&message(), None).await.unwrap();
    let lease = qa
        .receive(1, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap()
        .pop()
        .expect("the second job");
    let waiting = tokio::spawn(async move {
        let lease = receive_when_due(&qb).await;
        (lease, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nacked_at = Instant::now();
    qa.nack(&lease, Duration::from_secs(1)).await.unwrap();
    let (again, received_at) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("received well before the lease would have run out")
        .unwrap();
    let after = received_at - nacked_at;
    eprintln!("a job nacked with a 1 s delay was received after {after:?}");
    assert_eq!(again.receive_count, 2);
    assert!(
        after >= Duration::from_millis(950),
        "before its delay ended: {after:?}"
    );
    assert!(
        after < Duration::from_secs(20),
        "long after its delay ended: {after:?}"
    );
}

/// When the listener loses its connection, the process reconnects (a new generation) and the
/// roles work on notifications again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_losing_its_connection() {
    if !on_postgres() {
        return;
    }
    let slow = |l: &mut voicegraph::config::Layers| {
        l.set("notify_fallback_secs", "3600")
            .set("relay_poll_ms", "3600000");
    };
    let api = TestApp::spawn_with(
        Roles {
            serve: true,
            worker: true,
            relay: false,
        },
        slow,
    )
    .await;
    let relay = api
        .spawn_beside(
            Roles {
                serve: false,
                worker: false,
                relay: true,
            },
            slow,
        )
        .await;
    assert_eq!(listening(&api).await, 1);
    assert_eq!(listening(&relay).await, 1);
    let mut link = relay.state.store.notifications().watch_link();

    // The relay's listening backend is terminated, as an administrator or a failover would.
    let (_, name) = postgres_database(api.dir.path()).unwrap();
    let base = crate::backends::postgres_url().unwrap();
    let admin = sea_orm::Database::connect(format!("{}/postgres", base.trim_end_matches('/')))
        .await
        .unwrap();
    let terminated = sea_orm::ConnectionTrait::execute_raw(
        &admin,
        sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            [name.into()],
        ),
    )
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(terminated, 2, "both instances' listeners");
    let _ = admin.close().await;
    tokio::time::timeout(
        Duration::from_secs(30),
        link.wait_for(|l| *l == Link::Up { generation: 2 }),
    )
    .await
    .expect("the relay's listener reconnects")
    .unwrap();
    listening(&api).await;

    // The relay is woken by notices again: a call submitted to the other instance completes.
    let id = api.submit_ok(short_call(), json!({})).await;
    api.wait_status(&id, "COMPLETED", 60).await;
}
