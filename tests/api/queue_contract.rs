//! The contract of the `JobQueue` port. Each contract is a generic async function over
//! `&dyn JobQueue`, so that every adapter runs the same suite: `embedded_*` tests run it against
//! `EmbeddedQueue` on a fresh SQLite database, `sqs_*` tests against `SqsQueue` on a fresh queue
//! (with its dead-letter queue) in the AWS emulator.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::operation::delete_message::DeleteMessageInput;
use aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchInput;
use uuid::Uuid;
use voicegraph::adapters::sqs::SqsQueue;
use voicegraph::domain::JobMessage;
use voicegraph::ports::{JobQueue, Lease};
use voicegraph::startup::Roles;
use voicegraph::store::queue::EmbeddedQueue;

use crate::helpers::TestApp;
use crate::{backends, require};

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(30);
/// A lease short enough to run out during a test.
const SHORT: Duration = Duration::from_millis(300);

/// The short leases of the contracts, for the adapter under test: how long one lasts, and how long
/// past its end the job is surely visible again.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub short: Duration,
    pub grace: Duration,
}

impl Timing {
    /// Long enough for a short lease to have run out.
    fn expired(self) -> Duration {
        self.short + self.grace
    }
}

/// The embedded queue keeps time in milliseconds.
const EMBEDDED: Timing = Timing {
    short: SHORT,
    grace: Duration::from_millis(150),
};

fn message() -> JobMessage {
    JobMessage {
        tenant_id: Uuid::new_v4(),
        call_id: Uuid::new_v4(),
        analysis_id: Some(Uuid::new_v4()),
        traceparent: None,
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
pub async fn contract_send_receive_redeliver(q: &dyn JobQueue, t: Timing) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let first = receive_one(q, t.short).await;
    assert_eq!(first.message, m);
    assert_eq!(first.receive_count, 1);

    assert!(
        poll(q, t.short).await.is_empty(),
        "a leased job must be invisible to other receivers"
    );

    tokio::time::sleep(t.expired()).await;
    let second = receive_one(q, LONG).await;
    assert_eq!(second.message, m);
    assert_eq!(second.receive_count, 2);
    assert_ne!(
        second.receipt, first.receipt,
        "a redelivery carries a new receipt"
    );
    q.ack(&second).await.expect("ack");
}

/// `extend` keeps the job invisible past its original timeout.
pub async fn contract_extend(q: &dyn JobQueue, t: Timing) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, t.short).await;
    q.extend(&lease, t.short * 5)
        .await
        .expect("extend a valid lease");
    tokio::time::sleep(t.expired()).await;
    assert!(
        poll(q, t.short).await.is_empty(),
        "an extended lease keeps the job invisible past its original timeout"
    );
    // The extension still holds: the holder can finish the job.
    q.ack(&lease).await.expect("ack an extended lease");
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// Once the job was redelivered, extending the older lease fails.
pub async fn contract_extend_lost_lease(q: &dyn JobQueue, t: Timing) {
    let m2 = message();
    q.send(&m2, None).await.expect("send");
    let old = receive_one(q, t.short).await;
    tokio::time::sleep(t.expired()).await;
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

/// `ack` removes the job for good.
pub async fn contract_ack(q: &dyn JobQueue, t: Timing) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, t.short).await;
    q.ack(&lease).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 0);
    tokio::time::sleep(t.expired()).await;
    assert!(
        poll(q, LONG).await.is_empty(),
        "an acked job must never come back"
    );
}

/// Acking twice fails; acking a stale lease fails and leaves the newer lease's job.
pub async fn contract_ack_lost_lease(q: &dyn JobQueue, t: Timing) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, LONG).await;
    q.ack(&lease).await.expect("ack");
    assert!(q.ack(&lease).await.is_err(), "a second ack must fail");

    // Stale ack.
    let m2 = message();
    q.send(&m2, None).await.expect("send");
    let old = receive_one(q, t.short).await;
    tokio::time::sleep(t.expired()).await;
    let new = receive_one(q, t.short * 2).await;
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
    tokio::time::sleep(t.short * 2 + t.grace).await;
    let third = receive_one(q, LONG).await;
    assert_eq!(third.message, m2);
    assert_eq!(third.receive_count, 3);
    q.ack(&third).await.expect("ack");
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// `nack` with a delay hides the job for the delay; with zero delay it is visible at once.
pub async fn contract_nack(q: &dyn JobQueue, t: Timing) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, LONG).await;
    q.nack(&lease, t.short).await.expect("nack");
    assert!(
        poll(q, LONG).await.is_empty(),
        "a job nacked with a delay is invisible for the delay"
    );
    tokio::time::sleep(t.expired()).await;
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
    q.ack(&now[0]).await.expect("ack");
}

/// Once the job was received again, nacking the older lease fails.
pub async fn contract_nack_lost_lease(q: &dyn JobQueue) {
    let m = message();
    q.send(&m, None).await.expect("send");
    let old = receive_one(q, LONG).await;
    q.nack(&old, Duration::ZERO).await.expect("nack now");
    let now = poll(q, LONG).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].message, m);
    assert!(
        q.nack(&old, Duration::ZERO).await.is_err(),
        "nacking a lost lease must fail"
    );
    q.ack(&now[0]).await.expect("ack");
}

/// After `max_receives()` receives without an ack the job is dead-lettered: the next receive
/// gets nothing. Returns the dead-lettered message, for the adapter's own dead-letter check.
pub async fn contract_dead_letter(q: &dyn JobQueue, t: Timing) -> JobMessage {
    let max = q.max_receives();
    assert!(max >= 1);
    let m = message();
    q.send(&m, None).await.expect("send");
    for n in 1..=max {
        let lease = receive_one(q, t.short).await;
        assert_eq!(lease.message, m);
        assert_eq!(lease.receive_count, n);
        tokio::time::sleep(t.expired()).await;
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

/// What a queue promises concurrent receivers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// A job is never handed to two receivers while its lease is valid (the embedded queue's
    /// compare-and-set leases).
    Exclusive,
    /// At least once: an SQS standard queue may, rarely, hand one message to two receivers
    /// (and moto's emulation does so under load, its receive being unlocked). The worker fences
    /// such duplicates; the contract then asks that no job is lost.
    AtLeastOnce,
}

/// Many concurrent receivers share the jobs — never one job while its lease is valid, for an
/// exclusive queue — and with acks every job is received (exactly once, for an exclusive queue).
pub async fn contract_concurrent_receivers(q: &dyn JobQueue, delivery: Delivery) {
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
    if delivery == Delivery::Exclusive {
        assert_eq!(
            distinct.len(),
            ids.len(),
            "a job was handed to two receivers while leased"
        );
        assert_eq!(ids.len(), JOBS, "every job is received");
        assert!(leases.iter().all(|l| l.receive_count == 1));
    } else if ids.len() > distinct.len() {
        println!(
            "at-least-once: {} duplicate deliveries of {JOBS} jobs under contention",
            ids.len() - distinct.len()
        );
    }
    assert_eq!(
        distinct,
        sent.iter().map(|m| m.call_id).collect::<HashSet<_>>(),
        "every job is received"
    );

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
    if delivery == Delivery::Exclusive {
        assert_eq!(got.len(), JOBS, "each job exactly once");
    }
    assert_eq!(
        got.iter().map(|m| m.call_id).collect::<HashSet<_>>(),
        sent.iter().map(|m| m.call_id).collect::<HashSet<_>>(),
        "every job at least once"
    );
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

/// A batch of 25 jobs (more than one SQS call takes) is enqueued whole, each job once.
pub async fn contract_send_batch(q: &dyn JobQueue) {
    let jobs: Vec<(JobMessage, String)> = (0..25)
        .map(|i| (message(), format!("outbox-b{i}")))
        .collect();
    let results = q.send_batch(&jobs).await;
    assert_eq!(results.len(), 25);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(q.send_batch(&[]).await.is_empty());
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 25 && std::time::Instant::now() < deadline {
        for lease in q.receive(10, SHORT, Duration::from_secs(1)).await.unwrap() {
            q.ack(&lease).await.unwrap();
            got.push(lease.message);
        }
    }
    let mut want: Vec<JobMessage> = jobs.into_iter().map(|(m, _)| m).collect();
    want.sort_by_key(|m| m.call_id);
    got.sort_by_key(|m| m.call_id);
    assert_eq!(got, want);
}

async fn embedded(name: &str, max_receives: u32) -> (TestApp, EmbeddedQueue) {
    let app = TestApp::spawn_with(NO_ROLES, |_| {}).await;
    let q = EmbeddedQueue::new(&app.state.store, format!("contract-{name}"), max_receives);
    (app, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_send_receive_redeliver() {
    let (_app, q) = embedded("redeliver", 5).await;
    contract_send_receive_redeliver(&q, EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_extend() {
    let (_app, q) = embedded("extend", 5).await;
    contract_extend(&q, EMBEDDED).await;
    contract_extend_lost_lease(&q, EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ack() {
    let (_app, q) = embedded("ack", 5).await;
    contract_ack(&q, EMBEDDED).await;
    contract_ack_lost_lease(&q, EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nack() {
    let (_app, q) = embedded("nack", 5).await;
    contract_nack(&q, EMBEDDED).await;
    contract_nack_lost_lease(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_letter() {
    let (_app, q) = embedded("dead-letter", 2).await;
    assert_eq!(q.max_receives(), 2);
    let m = contract_dead_letter(&q, EMBEDDED).await;
    let dead = q.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1, m);
    assert!(!dead[0].2.is_empty(), "a dead letter has a reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_receivers() {
    let (_app, q) = embedded("concurrent", 5).await;
    contract_concurrent_receivers(&q, Delivery::Exclusive).await;
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
    let q = EmbeddedQueue::new(&app.state.store, "contract-restart", 5);
    contract_restart_receive(&q, &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dedup() {
    let (_app, q) = embedded("contract-dedup", 5).await;
    contract_dedup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_send_batch() {
    let (_app, q) = embedded("batch", 5).await;
    contract_send_batch(&q).await;
    // A key whose job still lives is not enqueued again, in a batch either.
    q.send(&message(), Some("outbox-live")).await.unwrap();
    let again = vec![
        (message(), "outbox-live".to_string()),
        (message(), "outbox-new".to_string()),
    ];
    assert!(q.send_batch(&again).await.iter().all(Result::is_ok));
    assert_eq!(q.depth().await.unwrap(), 2, "only the new key was enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_send_batch() {
    require!(backends::aws_endpoint());
    let f = sqs("batch", 5).await;
    contract_send_batch(&f.queue).await;
}

// ---------------------------------------------------------------------------------------------
// The SQS adapter, against the AWS emulator.
//
// Two contracts cannot hold for a standard queue by nature, and have SQS equivalents below:
// - lost leases: SQS accepts an older receipt handle of a message that was received again (and
//   deleting an already deleted message succeeds), so `*_lost_lease` become
//   `sqs_gone_jobs_refuse_their_leases`; the worker fences stale attempts in the database;
// - dedup: a standard queue cannot deduplicate, so `dedup` becomes `sqs_dedup_key_is_ignored`;
//   the worker skips a job whose call is finished.
// ---------------------------------------------------------------------------------------------

/// SQS counts visibility timeouts in whole seconds.
const SQS: Timing = Timing {
    short: Duration::from_secs(1),
    grace: Duration::from_millis(400),
};

/// A fresh queue and its dead-letter queue, with the plain client for looking behind the adapter.
struct SqsFixture {
    queue: SqsQueue,
    url: String,
    dlq_url: String,
    client: aws_sdk_sqs::Client,
}

async fn sqs_with(name: &str, max_receives: u32, client: aws_sdk_sqs::Client) -> SqsFixture {
    let sdk = backends::sdk().await;
    let (url, dlq_url) = backends::create_queue_with_dlq(
        &sdk,
        &backends::unique(&format!("contract-{name}")),
        max_receives,
        30,
    )
    .await;
    let queue = SqsQueue::connect(client.clone(), url.clone())
        .await
        .expect("connect to the queue");
    SqsFixture {
        queue,
        url,
        dlq_url,
        client,
    }
}

async fn sqs(name: &str, max_receives: u32) -> SqsFixture {
    let client = aws_sdk_sqs::Client::new(&backends::sdk().await);
    sqs_with(name, max_receives, client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_send_receive_redeliver() {
    require!(backends::aws_endpoint());
    let f = sqs("redeliver", 5).await;
    contract_send_receive_redeliver(&f.queue, SQS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_extend() {
    require!(backends::aws_endpoint());
    let f = sqs("extend", 5).await;
    contract_extend(&f.queue, SQS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_ack() {
    require!(backends::aws_endpoint());
    let f = sqs("ack", 5).await;
    contract_ack(&f.queue, SQS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_nack() {
    require!(backends::aws_endpoint());
    let f = sqs("nack", 5).await;
    contract_nack(&f.queue, SQS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_dead_letter() {
    require!(backends::aws_endpoint());
    let f = sqs("dead-letter", 2).await;
    assert_eq!(f.queue.max_receives(), 2, "read from the redrive policy");
    let m = contract_dead_letter(&f.queue, SQS).await;
    // SQS moved it to the dead-letter queue, where an operator can inspect or redrive it.
    let dead = f
        .client
        .receive_message()
        .queue_url(&f.dlq_url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive from the dead-letter queue")
        .messages
        .unwrap_or_default();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let body: JobMessage =
        serde_json::from_str(dead[0].body().unwrap_or_default()).expect("a job message");
    assert_eq!(body, m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_concurrent_receivers() {
    require!(backends::aws_endpoint());
    let f = sqs("concurrent", 5).await;
    contract_concurrent_receivers(&f.queue, Delivery::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_receive_waits() {
    require!(backends::aws_endpoint());
    let f = sqs("wait", 5).await;
    contract_receive_waits(&f.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_depth() {
    require!(backends::aws_endpoint());
    let f = sqs("depth", 5).await;
    contract_depth(&f.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_messages_survive_restart() {
    require!(backends::aws_endpoint());
    let f = sqs("restart", 5).await;
    let m = contract_restart_send(&f.queue).await;
    drop(f.queue);
    let q = SqsQueue::connect(f.client.clone(), f.url.clone())
        .await
        .expect("connect again");
    contract_restart_receive(&q, &m).await;
}

/// The SQS equivalent of the `*_lost_lease` contracts: SQS refuses the receipt of a job that is
/// gone, and a receipt it never issued, for every operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_gone_jobs_refuse_their_leases() {
    require!(backends::aws_endpoint());
    let f = sqs("gone", 5).await;
    let q: &dyn JobQueue = &f.queue;
    let m = message();
    q.send(&m, None).await.expect("send");
    let lease = receive_one(q, LONG).await;
    q.ack(&lease).await.expect("ack");
    assert!(
        q.extend(&lease, LONG).await.is_err(),
        "extending the lease of an acked job must fail"
    );
    assert!(
        q.nack(&lease, Duration::ZERO).await.is_err(),
        "nacking the lease of an acked job must fail"
    );

    let bogus = Lease {
        receipt: "not-a-receipt-handle".into(),
        message: m,
        receive_count: 1,
    };
    assert!(q.extend(&bogus, LONG).await.is_err());
    assert!(q.nack(&bogus, Duration::ZERO).await.is_err());
    let err = q
        .ack(&bogus)
        .await
        .expect_err("acking a bogus receipt fails");
    assert!(
        format!("{err:#}").contains(&f.url),
        "the error names the queue: {err:#}"
    );
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// The SQS equivalent of `dedup`: a standard queue cannot deduplicate, so a repeated send is
/// delivered again (the worker skips it); sending with a key works and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_dedup_key_is_ignored() {
    require!(backends::aws_endpoint());
    let f = sqs("dedup", 5).await;
    let q: &dyn JobQueue = &f.queue;
    let m = message();
    q.send(&m, Some("outbox-1")).await.expect("send");
    q.send(&m, Some("outbox-1"))
        .await
        .expect("a repeated send succeeds");
    assert_eq!(q.depth().await.unwrap(), 2, "both copies are delivered");
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = q
            .receive(10, LONG, Duration::from_secs(2))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "a copy went missing: {got:?}");
        got.extend(batch);
    }
    assert!(got.iter().all(|l| l.message == m && l.receive_count == 1));
    for l in &got {
        q.ack(l).await.expect("ack");
    }
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// Counts the delete calls a client makes.
#[derive(Debug, Clone, Default)]
struct CountDeletes {
    batches: Arc<AtomicUsize>,
    entries: Arc<AtomicUsize>,
    singles: Arc<AtomicUsize>,
}

impl Intercept for CountDeletes {
    fn name(&self) -> &'static str {
        "CountDeletes"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        if let Some(batch) = input.downcast_ref::<DeleteMessageBatchInput>() {
            self.batches.fetch_add(1, Ordering::SeqCst);
            self.entries
                .fetch_add(batch.entries().len(), Ordering::SeqCst);
        }
        if input.downcast_ref::<DeleteMessageInput>().is_some() {
            self.singles.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

async fn receive_all(q: &dyn JobQueue, n: usize) -> Vec<Lease> {
    let mut leases = Vec::new();
    while leases.len() < n {
        let batch = q
            .receive(10, LONG, Duration::from_secs(2))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "only {} of {n} jobs came", leases.len());
        leases.extend(batch);
    }
    assert_eq!(leases.len(), n);
    leases
}

/// Acks from concurrent jobs go out together in `DeleteMessageBatch` calls of up to 10 entries,
/// and each ack learns its own entry's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_acks_are_batched() {
    require!(backends::aws_endpoint());
    let counter = CountDeletes::default();
    let sdk = backends::sdk().await;
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let f = sqs_with("batched", 5, client).await;
    let q: &dyn JobQueue = &f.queue;
    const JOBS: usize = 25;
    for _ in 0..JOBS {
        q.send(&message(), None).await.expect("send");
    }
    let leases = receive_all(q, JOBS).await;

    let acks = futures::future::join_all(leases.iter().map(|l| q.ack(l))).await;
    for r in acks {
        r.expect("every ack of the batch succeeds");
    }
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(poll(q, LONG).await.is_empty());
    let batches = counter.batches.load(Ordering::SeqCst);
    assert_eq!(counter.entries.load(Ordering::SeqCst), JOBS);
    assert!(
        (3..=6).contains(&batches),
        "{JOBS} concurrent acks took {batches} DeleteMessageBatch calls"
    );
    assert_eq!(counter.singles.load(Ordering::SeqCst), 0);

    // A failed entry fails its own ack only.
    for _ in 0..3 {
        q.send(&message(), None).await.expect("send");
    }
    let mut leases = receive_all(q, 3).await;
    leases.insert(
        1,
        Lease {
            receipt: "not-a-receipt-handle".into(),
            message: message(),
            receive_count: 1,
        },
    );
    let acks = futures::future::join_all(leases.iter().map(|l| q.ack(l))).await;
    assert!(
        acks[0].is_ok() && acks[2].is_ok() && acks[3].is_ok(),
        "{acks:?}"
    );
    assert!(acks[1].is_err(), "the bogus receipt's ack fails");
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// A message that is not a job can never succeed: it is deleted, not handed out or retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreadable_message_is_deleted() {
    require!(backends::aws_endpoint());
    let f = sqs("unreadable", 5).await;
    f.client
        .send_message()
        .queue_url(&f.url)
        .message_body("{\"not\": \"a job\"}")
        .send()
        .await
        .expect("send raw");
    let m = message();
    f.queue.send(&m, None).await.expect("send");
    let mut got = Vec::new();
    let started = Instant::now();
    while got.is_empty() && started.elapsed() < Duration::from_secs(5) {
        got.extend(
            f.queue
                .receive(10, LONG, Duration::from_secs(1))
                .await
                .expect("an unreadable message does not fail the receive"),
        );
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message, m);
    f.queue.ack(&got[0]).await.expect("ack");
    assert_eq!(
        f.queue.depth().await.unwrap(),
        0,
        "the unreadable message is gone"
    );
}

/// Production needs a dead-letter queue: without a redrive policy the adapter refuses the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_connect_requires_dead_letter_queue() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let url = backends::create_queue(&sdk, &backends::unique("contract-no-dlq")).await;
    let err = SqsQueue::connect(aws_sdk_sqs::Client::new(&sdk), url.clone())
        .await
        .expect_err("a queue without a dead-letter queue is refused");
    let text = format!("{err:#}");
    assert!(text.contains("dead-letter queue"), "{text}");
    assert!(text.contains(&url), "{text}");
}
