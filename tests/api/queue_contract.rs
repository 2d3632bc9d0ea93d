//! The contract of the `JobQueue` port. Each contract is a generic async function over
//! `&dyn JobQueue`, so that any adapter (the embedded queue here, SQS later) can run the same
//! suite; each `#[tokio::test]` below runs one contract against `EmbeddedQueue` on a fresh
//! SQLite database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use uuid::Uuid;
use voicegraph::adapters::local::queue::EmbeddedQueue;
use voicegraph::domain::JobMessage;
use voicegraph::ports::{JobQueue, Lease};
use voicegraph::startup::Roles;

use crate::helpers::TestApp;

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(30);
/// A lease short enough to run out during a test.
const SHORT: Duration = Duration::from_millis(300);

fn message() -> JobMessage {
    JobMessage {
        tenant_id: Uuid::new_v4(),
        call_id: Uuid::new_v4(),
    }
}

/// One receive that does not wait.
async fn poll(q: &dyn JobQueue, visibility: Duration) -> Vec<Lease> {
    q.receive(10, visibility, Duration::ZERO)
        .await
        .expect("receive")
}

async fn receive_one(q: &dyn JobQueue, visibility: Duration) -> Lease {
    let mut leases = q
        .receive(1, visibility, Duration::from_secs(2))
        .await
        .expect("receive");
    assert_eq!(leases.len(), 1, "expected exactly one job: {leases:?}");
    leases.pop().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The contracts.
// ---------------------------------------------------------------------------------------------

/// A sent job is received once (receive count 1), stays invisible while leased, and comes back
/// with receive count 2 once its visibility timeout has passed.
pub async fn contract_send_receive_redeliver(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let first = receive_one(q, SHORT).await;
    assert_eq!(first.message, m);
    assert_eq!(first.receive_count, 1);

    assert!(
        poll(q, SHORT).await.is_empty(),
        "a leased job must be invisible to other receivers"
    );

    tokio::time::sleep(SHORT + Duration::from_millis(150)).await;
    let second = receive_one(q, LONG).await;
    assert_eq!(second.message, m);
    assert_eq!(second.receive_count, 2);
    assert_ne!(
        second.receipt, first.receipt,
        "a redelivery carries a new receipt"
    );
    q.ack(&second).await.expect("ack");
}

/// `extend` keeps the job invisible past its original timeout; once the job was redelivered,
/// extending the older lease fails.
pub async fn contract_extend(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, SHORT).await;
    q.extend(&lease, Duration::from_millis(1500))
        .await
        .expect("extend a valid lease");
    tokio::time::sleep(SHORT + Duration::from_millis(250)).await;
    assert!(
        poll(q, SHORT).await.is_empty(),
        "an extended lease keeps the job invisible past its original timeout"
    );
    // The extension still holds: the holder can finish the job.
    q.ack(&lease).await.expect("ack an extended lease");
    assert_eq!(q.depth().await.unwrap(), 0);

    // A stale lease cannot be extended.
    let m2 = message();
    q.send(&m2, None).await.expect("send");
    let old = receive_one(q, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new = receive_one(q, LONG).await;
    assert_eq!(new.message, m2);
    assert_eq!(new.receive_count, 2);
    assert!(
        q.extend(&old, LONG).await.is_err(),
        "extending a lease that was lost must fail"
    );
    q.extend(&new, LONG)
        .await
        .expect("the current lease extends");
    q.ack(&new).await.expect("ack");
}

/// `ack` removes the job for good; acking a stale lease fails and leaves the newer lease's job.
pub async fn contract_ack(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, Duration::from_millis(200)).await;
    q.ack(&lease).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        poll(q, LONG).await.is_empty(),
        "an acked job must never come back"
    );
    assert!(q.ack(&lease).await.is_err(), "a second ack must fail");

    // Stale ack.
    let m2 = message();
    q.send(&m2, None).await.expect("send");
    let old = receive_one(q, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new = receive_one(q, Duration::from_millis(400)).await;
    assert_eq!(new.message, m2);
    assert!(
        q.ack(&old).await.is_err(),
        "acking a lease that was lost must fail"
    );
    assert_eq!(
        q.depth().await.unwrap(),
        1,
        "a stale ack must not remove the job"
    );
    // Once the newer lease runs out, the job is delivered again: it was not removed.
    tokio::time::sleep(Duration::from_millis(550)).await;
    let third = receive_one(q, LONG).await;
    assert_eq!(third.message, m2);
    assert_eq!(third.receive_count, 3);
    q.ack(&third).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// `nack` with a delay hides the job for the delay; with zero delay it is visible at once.
pub async fn contract_nack(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, LONG).await;
    q.nack(&lease, Duration::from_millis(500))
        .await
        .expect("nack");
    assert!(
        poll(q, LONG).await.is_empty(),
        "a job nacked with a delay is invisible for the delay"
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    let again = poll(q, LONG).await;
    assert_eq!(again.len(), 1, "visible again after the delay");
    assert_eq!(again[0].message, m);
    assert_eq!(again[0].receive_count, 2);

    q.nack(&again[0], Duration::ZERO).await.expect("nack now");
    let now = poll(q, LONG).await;
    assert_eq!(
        now.len(),
        1,
        "a job nacked with no delay is visible at once"
    );
    assert_eq!(now[0].message, m);
    assert_eq!(now[0].receive_count, 3);
    assert!(
        q.nack(&again[0], Duration::ZERO).await.is_err(),
        "nacking a lost lease must fail"
    );
    q.ack(&now[0]).await.expect("ack");
}

/// After `max_receives()` receives without an ack the job is dead-lettered: the next receive
/// gets nothing. Returns the dead-lettered message, for the adapter's own dead-letter check.
pub async fn contract_dead_letter(q: &dyn JobQueue) -> JobMessage {
    let max = q.max_receives();
    assert!(max >= 1);
    let m = message();
    q.send(&m, None).await.expect("send");
    for n in 1..=max {
        let lease = receive_one(q, Duration::from_millis(150)).await;
        assert_eq!(lease.message, m);
        assert_eq!(lease.receive_count, n);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = q
        .receive(10, LONG, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(
        after.is_empty(),
        "a job received max_receives times must not be delivered again: {after:?}"
    );
    assert_eq!(
        q.depth().await.unwrap(),
        0,
        "dead letters are not waiting jobs"
    );
    m
}

/// Many concurrent receivers never share a job while its lease is valid, and with acks every
/// job is received exactly once.
pub async fn contract_concurrent_receivers(q: &dyn JobQueue) {
    const JOBS: usize = 50;
    const RECEIVERS: usize = 8;
    let sent: Vec<JobMessage> = (0..JOBS).map(|_| message()).collect();
    for m in &sent {
        q.send(m, None).await.expect("send");
    }

    // Phase 1: everyone receives, nobody acks; leases are long, so no job may be seen twice.
    let receiver = |_: usize| async move {
        let mut got: Vec<Lease> = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let batch = q
                .receive(3, LONG, Duration::from_millis(100))
                .await
                .expect("receive under contention");
            if batch.is_empty() {
                empty += 1;
            } else {
                empty = 0;
                got.extend(batch);
            }
        }
        got
    };
    let leases: Vec<Lease> = futures::future::join_all((0..RECEIVERS).map(receiver))
        .await
        .into_iter()
        .flatten()
        .collect();
    let ids: Vec<Uuid> = leases.iter().map(|l| l.message.call_id).collect();
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "a job was handed to two receivers while leased"
    );
    assert_eq!(ids.len(), JOBS, "every job is received");
    assert_eq!(
        distinct,
        sent.iter().map(|m| m.call_id).collect::<HashSet<_>>()
    );
    assert!(leases.iter().all(|l| l.receive_count == 1));

    // Phase 2: everything is acked concurrently; nothing is left or comes back.
    let acks = futures::future::join_all(leases.iter().map(|l| q.ack(l))).await;
    for r in acks {
        r.expect("ack under contention");
    }
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(poll(q, LONG).await.is_empty());

    // Phase 3: receivers that ack as they go see each job exactly once.
    let sent: Vec<JobMessage> = (0..JOBS).map(|_| message()).collect();
    for m in &sent {
        q.send(m, None).await.expect("send");
    }
    let acking = |_: usize| async move {
        let mut got: Vec<JobMessage> = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let batch = q
                .receive(2, LONG, Duration::from_millis(100))
                .await
                .expect("receive under contention");
            if batch.is_empty() {
                empty += 1;
            }
            for l in batch {
                empty = 0;
                q.ack(&l).await.expect("ack under contention");
                got.push(l.message);
            }
        }
        got
    };
    let got: Vec<JobMessage> = futures::future::join_all((0..RECEIVERS).map(acking))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(got.len(), JOBS, "each job exactly once");
    assert_eq!(
        got.iter().map(|m| m.call_id).collect::<HashSet<_>>(),
        sent.iter().map(|m| m.call_id).collect::<HashSet<_>>()
    );
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// A receive that waits returns soon after a job is sent, not at the end of its wait.
pub async fn contract_receive_waits(q: &dyn JobQueue) {
    let m = message();
    let started = Instant::now();
    let waiting = q.receive(1, LONG, Duration::from_secs(2));
    let sending = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.send(&m, None).await.expect("send");
    };
    let (got, ()) = tokio::join!(waiting, sending);
    let elapsed = started.elapsed();
    let got = got.expect("receive");
    assert_eq!(got.len(), 1, "the waiting receive gets the job");
    assert_eq!(got[0].message, m);
    assert!(
        elapsed < Duration::from_millis(1200),
        "the receive returned {elapsed:?} after it started; it should return soon after the send"
    );
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    q.ack(&got[0]).await.expect("ack");

    // With nothing sent, it waits about as long as asked, then returns nothing.
    let started = Instant::now();
    let none = q
        .receive(1, LONG, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(450));
}

/// `depth` counts visible and leased jobs, and drops when one is acked.
pub async fn contract_depth(q: &dyn JobQueue) {
    assert_eq!(q.depth().await.unwrap(), 0);
    for _ in 0..3 {
        q.send(&message(), None).await.expect("send");
    }
    assert_eq!(q.depth().await.unwrap(), 3);
    let lease = receive_one(q, LONG).await;
    assert_eq!(
        q.depth().await.unwrap(),
        3,
        "leased jobs still count as waiting"
    );
    q.ack(&lease).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 2);
}

/// First half of the restart contract: sends a job and returns it.
pub async fn contract_restart_send(q: &dyn JobQueue) -> JobMessage {
    let m = message();
    q.send(&m, None).await.expect("send");
    m
}

/// Second half: on a new queue over the same storage, the job is there.
pub async fn contract_restart_receive(q: &dyn JobQueue, m: &JobMessage) {
    assert_eq!(q.depth().await.unwrap(), 1);
    let lease = receive_one(q, LONG).await;
    assert_eq!(&lease.message, m);
    assert_eq!(lease.receive_count, 1);
    q.ack(&lease).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// The embedded adapter.
// ---------------------------------------------------------------------------------------------

const NO_ROLES: Roles = Roles {
    serve: false,
    worker: false,
    relay: false,
};

/// A dedup key already sent is not enqueued again while its job lives (the relay re-sending an
/// outbox row after a crash); once the job is acknowledged the key may be used again.
pub async fn contract_dedup(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, Some("outbox-1")).await.expect("send");
    q.send(&m, Some("outbox-1"))
        .await
        .expect("a repeated send succeeds");
    assert_eq!(q.depth().await.unwrap(), 1, "the repeat was not enqueued");
    let lease = receive_one(q, SHORT).await;
    q.send(&m, Some("outbox-1"))
        .await
        .expect("send while leased");
    assert_eq!(q.depth().await.unwrap(), 1);
    q.ack(&lease).await.unwrap();
    q.send(&m, Some("outbox-2")).await.expect("another key");
    q.send(&m, None).await.expect("no key");
    assert_eq!(q.depth().await.unwrap(), 2);
}

async fn embedded(name: &str, max_receives: u32) -> (TestApp, EmbeddedQueue) {
    let app = TestApp::spawn_with(NO_ROLES, |_| {}).await;
    let q = EmbeddedQueue::new(
        app.state.db.clone(),
        format!("contract-{name}"),
        max_receives,
    );
    (app, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_send_receive_redeliver() {
    let (_app, q) = embedded("redeliver", 5).await;
    contract_send_receive_redeliver(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_extend() {
    let (_app, q) = embedded("extend", 5).await;
    contract_extend(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ack() {
    let (_app, q) = embedded("ack", 5).await;
    contract_ack(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nack() {
    let (_app, q) = embedded("nack", 5).await;
    contract_nack(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_letter() {
    let (_app, q) = embedded("dead-letter", 2).await;
    assert_eq!(q.max_receives(), 2);
    let m = contract_dead_letter(&q).await;
    let dead = q.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1, m);
    assert!(!dead[0].2.is_empty(), "a dead letter has a reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_receivers() {
    let (_app, q) = embedded("concurrent", 5).await;
    contract_concurrent_receivers(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_receive_waits() {
    let (_app, q) = embedded("wait", 5).await;
    contract_receive_waits(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_depth() {
    let (_app, q) = embedded("depth", 5).await;
    contract_depth(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_messages_survive_restart() {
    let (app, q) = embedded("restart", 5).await;
    let m = contract_restart_send(&q).await;
    drop(q);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, NO_ROLES, |_| {}).await;
    let q = EmbeddedQueue::new(app.state.db.clone(), "contract-restart", 5);
    contract_restart_receive(&q, &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dedup() {
    let (_app, q) = embedded("contract-dedup", 5).await;
    contract_dedup(&q).await;
}
