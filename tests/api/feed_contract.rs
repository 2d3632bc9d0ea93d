//! The contract of the `EventPublisher` → `EventFeed` pair, run against the in-process bus and
//! against Redis (`RedisFanout` → `RedisFeed`), plus the production path around it: SNS → SQS →
//! the realtime relay → Redis, and a feed that survives a Redis restart.
//!
//! Every test on the shared Redis sees every other test's events (the channel is fixed), so each
//! test uses its own tenant id and looks only at its own events.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use voicegraph::adapters::local::bus::InProcessBus;
use voicegraph::adapters::redis::{RedisFanout, RedisFeed};
use voicegraph::adapters::sns::SnsPublisher;
use voicegraph::domain::{CallStatus, EventEnvelope};
use voicegraph::ports::{EventFeed, EventPublisher};
use voicegraph::realtime;

use crate::backends;
use crate::require;

/// Room enough that a subscriber reading along never lags, even with other tests' traffic.
const ROOMY: usize = 4096;
/// The capacity of the lag contract's feed.
const SMALL: usize = 64;
/// How long an event may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(3);

fn event(tenant: Uuid, seq: i64) -> EventEnvelope {
    EventEnvelope {
        seq,
        id: seq,
        tenant_id: tenant,
        call_id: Uuid::new_v4(),
        kind: "SUBMITTED".into(),
        status: CallStatus::Queued,
        at: Utc::now(),
        analysis_id: Some(Uuid::new_v4()),
        traceparent: None,
    }
}

/// The next event of `tenant`, skipping other tests' events; panics on lag, close or timeout.
async fn next_of(rx: &mut broadcast::Receiver<Arc<EventEnvelope>>, tenant: Uuid) -> EventEnvelope {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("no event of tenant {tenant} within {ARRIVAL:?}"),
            Ok(Ok(e)) if e.tenant_id == tenant => return Arc::unwrap_or_clone(e),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber failed: {e:?}"),
        }
    }
}

/// Nothing more of `tenant` arrives within a short while.
async fn assert_quiet(rx: &mut broadcast::Receiver<Arc<EventEnvelope>>, tenant: Uuid) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(received) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match received {
            Ok(e) if e.tenant_id == tenant => panic!("unexpected event {e:?}"),
            Ok(_) => {}
            Err(e) => panic!("subscriber failed: {e:?}"),
        }
    }
}

async fn publish(publisher: &dyn EventPublisher, e: &EventEnvelope) {
    tokio::time::timeout(Duration::from_secs(2), publisher.publish(e))
        .await
        .expect("publish must not block")
        .expect("publish");
}

// ---------------------------------------------------------------------------------------------
// The contracts.
// ---------------------------------------------------------------------------------------------

/// Every subscriber receives every event, in publish order.
pub async fn contract_every_subscriber_in_order(
    publisher: &dyn EventPublisher,
    feed: &dyn EventFeed,
) {
    let tenant = Uuid::new_v4();
    let mut subscribers: Vec<_> = (0..3).map(|_| feed.subscribe()).collect();
    let sent: Vec<_> = (1..=20).map(|seq| event(tenant, seq)).collect();
    for e in &sent {
        publish(publisher, e).await;
    }
    for rx in &mut subscribers {
        for e in &sent {
            assert_eq!(&next_of(rx, tenant).await, e);
        }
        assert_quiet(rx, tenant).await;
    }
}

/// A subscriber gets only the events published after it subscribed.
pub async fn contract_late_subscriber_gets_later_events(
    publisher: &dyn EventPublisher,
    feed: &dyn EventFeed,
) {
    let tenant = Uuid::new_v4();
    let mut early = feed.subscribe();
    let first = event(tenant, 1);
    publish(publisher, &first).await;
    // Once the early subscriber has it, it went through the feed before `late` existed.
    assert_eq!(next_of(&mut early, tenant).await, first);

    let mut late = feed.subscribe();
    let second = event(tenant, 2);
    publish(publisher, &second).await;
    assert_eq!(next_of(&mut late, tenant).await, second);
    assert_eq!(next_of(&mut early, tenant).await, second);
    assert_quiet(&mut late, tenant).await;
}

/// A subscriber that never reads lags (and is told so) while publishing stays fast and another
/// subscriber still receives everything; the laggard then goes on with the newest events.
pub async fn contract_slow_subscriber_lags(
    publisher: &dyn EventPublisher,
    feed: &dyn EventFeed,
    capacity: usize,
) {
    let tenant = Uuid::new_v4();
    let total = 10 * capacity as i64;
    let mut slow = feed.subscribe();
    let mut fast = feed.subscribe();
    let (progress_tx, mut progress) = watch::channel(0i64);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while (got.len() as i64) < total {
            let e = next_of(&mut fast, tenant).await;
            got.push(e.seq);
            progress_tx.send_replace(e.seq);
        }
        got
    });

    let mut publishing = Duration::ZERO;
    let chunk = (capacity / 4).max(1) as i64;
    for start in (1..=total).step_by(chunk as usize) {
        let end = (start + chunk - 1).min(total);
        let began = Instant::now();
        for seq in start..=end {
            publish(publisher, &event(tenant, seq)).await;
        }
        publishing += began.elapsed();
        // Let the reading subscriber keep up: the point is that only the idle one falls behind.
        tokio::time::timeout(ARRIVAL, progress.wait_for(|&seen| seen >= end))
            .await
            .expect("the reading subscriber fell behind")
            .expect("reader stopped");
    }
    assert!(
        publishing < Duration::from_secs(5),
        "publishing {total} events took {publishing:?}"
    );
    let got = reader.await.expect("reader");
    assert_eq!(got, (1..=total).collect::<Vec<_>>());

    match slow.recv().await {
        Err(RecvError::Lagged(n)) => assert!(n > 0),
        other => panic!("expected the idle subscriber to lag, got {other:?}"),
    }
    // After the lag it continues with what is still buffered, up to the newest event.
    let mut last = 0;
    while last < total {
        let e = next_of(&mut slow, tenant).await;
        assert!(
            e.seq > last,
            "out of order after lag: {} after {last}",
            e.seq
        );
        last = e.seq;
    }
}

// ---------------------------------------------------------------------------------------------
// The in-process bus.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_process_every_subscriber_in_order() {
    let bus = InProcessBus::new(ROOMY);
    contract_every_subscriber_in_order(&bus, &bus).await;
}

#[tokio::test]
async fn in_process_late_subscriber_gets_later_events() {
    let bus = InProcessBus::new(ROOMY);
    contract_late_subscriber_gets_later_events(&bus, &bus).await;
}

#[tokio::test]
async fn in_process_slow_subscriber_lags() {
    let bus = InProcessBus::new(SMALL);
    contract_slow_subscriber_lags(&bus, &bus, SMALL).await;
}

// ---------------------------------------------------------------------------------------------
// Redis.
// ---------------------------------------------------------------------------------------------

/// A feed that is subscribed, so that what is published from now on reaches it.
async fn connected_feed(
    url: &str,
    channel: &str,
    capacity: usize,
    token: &CancellationToken,
) -> Arc<RedisFeed> {
    let feed = RedisFeed::start(url, channel, capacity, token.clone()).expect("start feed");
    wait_connected(&feed, true, Duration::from_secs(5)).await;
    feed
}

async fn wait_connected(feed: &RedisFeed, want: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while feed.connected() != want {
        assert!(
            Instant::now() < deadline,
            "feed connected() did not become {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_every_subscriber_in_order() {
    let url = require!(backends::redis_url());
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, ROOMY, &token).await;
    let fanout = RedisFanout::connect(&url, &channel).await.expect("connect");
    contract_every_subscriber_in_order(&fanout, feed.as_ref()).await;
    token.cancel();
}

#[tokio::test]
async fn redis_late_subscriber_gets_later_events() {
    let url = require!(backends::redis_url());
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, ROOMY, &token).await;
    let fanout = RedisFanout::connect(&url, &channel).await.expect("connect");
    contract_late_subscriber_gets_later_events(&fanout, feed.as_ref()).await;
    token.cancel();
}

#[tokio::test]
async fn redis_slow_subscriber_lags() {
    let url = require!(backends::redis_url());
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, SMALL, &token).await;
    let fanout = RedisFanout::connect(&url, &channel).await.expect("connect");
    contract_slow_subscriber_lags(&fanout, feed.as_ref(), SMALL).await;
    token.cancel();
}

#[tokio::test]
async fn redis_feed_stops_on_shutdown() {
    let url = require!(backends::redis_url());
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, ROOMY, &token).await;
    token.cancel();
    wait_connected(&feed, false, Duration::from_secs(2)).await;
}

/// A private redis-server, killed when dropped.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (is it installed?)");
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The feed and the publisher come back by themselves after Redis restarts, and the same
/// subscriber keeps receiving.
#[tokio::test]
async fn redis_feed_survives_a_restart() {
    // Only where Redis is part of the test environment (redis-server is installed there).
    require!(backends::redis_url());
    let mut server = RedisServer::start(free_port()).await;
    let url = server.url();
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, ROOMY, &token).await;
    let fanout = RedisFanout::connect(&url, &channel).await.expect("connect");
    let tenant = Uuid::new_v4();
    let mut rx = feed.subscribe();

    let before = event(tenant, 1);
    publish(&fanout, &before).await;
    assert_eq!(next_of(&mut rx, tenant).await, before);

    server.stop();
    wait_connected(&feed, false, Duration::from_secs(3)).await;
    // Published while Redis is away: an error or lost, either is fine, but it must not hang.
    let _ = tokio::time::timeout(Duration::from_secs(6), fanout.publish(&event(tenant, 2)))
        .await
        .expect("publish must not hang while Redis is away");

    let server = RedisServer::start(server.port).await;
    wait_connected(&feed, true, Duration::from_secs(6)).await;
    // Events published from now on arrive at the same receiver.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 3;
    let received = loop {
        assert!(Instant::now() < deadline, "no event after the restart");
        let _ = fanout.publish(&event(tenant, seq)).await;
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Ok(e)) if e.tenant_id == tenant => break e,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("subscriber failed across the restart: {e:?}"),
        }
        seq += 1;
    };
    assert!(received.seq >= 3, "got {received:?}");
    token.cancel();
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// SNS → SQS → realtime relay → Redis.
// ---------------------------------------------------------------------------------------------

/// Runs relay rounds until `n` events were forwarded.
async fn relay_until(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    fanout: &dyn EventPublisher,
    n: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut forwarded = 0;
    while forwarded < n {
        assert!(Instant::now() < deadline, "forwarded {forwarded} of {n}");
        forwarded += realtime::run_once(sqs, queue_url, fanout, Duration::from_secs(1))
            .await
            .expect("relay round");
    }
}

/// Visible plus in-flight messages.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> u64 {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

#[tokio::test]
async fn sns_to_redis_through_the_realtime_relay() {
    let url = require!(backends::redis_url());
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let (topic, queue_url) =
        backends::create_topic_with_queue(&sdk, &backends::unique("vg-feed")).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let token = CancellationToken::new();
    // A channel of this test's own, as every deployment has.
    let channel = backends::unique("vg-ch");
    let feed = connected_feed(&url, &channel, ROOMY, &token).await;
    let fanout = RedisFanout::connect(&url, &channel).await.expect("connect");
    let mut rx = feed.subscribe();

    let sns = SnsPublisher::new(aws_sdk_sns::Client::new(&sdk), topic);
    let tenant = Uuid::new_v4();
    let sent = [event(tenant, 1), event(tenant, 2)];
    for e in &sent {
        sns.publish(e).await.expect("publish to SNS");
    }
    relay_until(&sqs, &queue_url, &fanout, sent.len()).await;

    let mut got = vec![
        next_of(&mut rx, tenant).await,
        next_of(&mut rx, tenant).await,
    ];
    got.sort_by_key(|e| e.seq);
    assert_eq!(got, sent);
    assert_eq!(
        queue_depth(&sqs, &queue_url).await,
        0,
        "forwarded messages are deleted"
    );
    token.cancel();
}

#[tokio::test]
async fn sns_messages_carry_attributes() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let (topic, queue_url) =
        backends::create_topic_with_queue(&sdk, &backends::unique("vg-attrs")).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = SnsPublisher::new(aws_sdk_sns::Client::new(&sdk), topic);
    let sent = EventEnvelope {
        kind: "COMPLETED".into(),
        status: CallStatus::Completed,
        ..event(Uuid::new_v4(), 7)
    };
    sns.publish(&sent).await.expect("publish to SNS");

    let messages = sqs
        .receive_message()
        .queue_url(&queue_url)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    let body: EventEnvelope = serde_json::from_str(m.body().unwrap_or_default()).expect("raw body");
    assert_eq!(body, sent);
    let attrs = m.message_attributes().expect("message attributes");
    for (name, value) in [
        ("tenant", sent.tenant_id.to_string()),
        ("kind", "COMPLETED".to_string()),
        ("status", "COMPLETED".to_string()),
    ] {
        let attr = attrs
            .get(name)
            .unwrap_or_else(|| panic!("attribute {name}"));
        assert_eq!(attr.data_type(), "String");
        assert_eq!(
            attr.string_value(),
            Some(value.as_str()),
            "attribute {name}"
        );
    }
}

/// Raw bodies and SNS notification wrappers are forwarded; malformed messages are deleted.
#[tokio::test]
async fn relay_accepts_wrapped_and_drops_malformed_messages() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = backends::create_queue(&sdk, &backends::unique("vg-relay")).await;
    let tenant = Uuid::new_v4();
    let raw = event(tenant, 1);
    let wrapped = event(tenant, 2);
    let notification = serde_json::json!({
        "Type": "Notification",
        "MessageId": Uuid::new_v4(),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:events",
        "Message": serde_json::to_string(&wrapped).unwrap(),
    });
    for body in [
        serde_json::to_string(&raw).unwrap(),
        notification.to_string(),
        "not an event".to_string(),
        serde_json::json!({ "Type": "Notification", "Message": "{}" }).to_string(),
    ] {
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }
    let bus = InProcessBus::new(ROOMY);
    let mut rx = bus.subscribe();
    relay_until(&sqs, &queue_url, &bus, 2).await;

    let mut got = vec![
        next_of(&mut rx, tenant).await,
        next_of(&mut rx, tenant).await,
    ];
    got.sort_by_key(|e| e.seq);
    assert_eq!(got, [raw, wrapped]);
    // The malformed ones may come in a later batch; a round or two more drains them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_depth(&sqs, &queue_url).await > 0 {
        assert!(
            Instant::now() < deadline,
            "malformed messages were not deleted"
        );
        realtime::run_once(&sqs, &queue_url, &bus, Duration::ZERO)
            .await
            .expect("relay round");
    }
}

struct FailingPublisher;

#[async_trait]
impl EventPublisher for FailingPublisher {
    async fn publish(&self, _: &EventEnvelope) -> anyhow::Result<()> {
        anyhow::bail!("the feed is down")
    }
}

/// An event that cannot be published stays on the queue for redelivery.
#[tokio::test]
async fn relay_keeps_what_it_could_not_publish() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = backends::create_queue(&sdk, &backends::unique("vg-relay")).await;
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(serde_json::to_string(&event(Uuid::new_v4(), 1)).unwrap())
        .send()
        .await
        .expect("send");

    let err = realtime::run_once(&sqs, &queue_url, &FailingPublisher, Duration::from_secs(2))
        .await
        .expect_err("a failed publish fails the round");
    assert!(format!("{err:#}").contains("the feed is down"), "{err:#}");
    assert_eq!(
        queue_depth(&sqs, &queue_url).await,
        1,
        "the message must stay queued"
    );
}

/// `run` forwards until shutdown and stops promptly even in the middle of a long poll.
#[tokio::test]
async fn relay_loop_forwards_and_stops_promptly() {
    require!(backends::aws_endpoint());
    let sdk = backends::sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = backends::create_queue(&sdk, &backends::unique("vg-relay")).await;
    let bus = Arc::new(InProcessBus::new(ROOMY));
    let mut rx = bus.subscribe();
    let token = CancellationToken::new();
    let relay = tokio::spawn(realtime::run(
        sqs.clone(),
        queue_url.clone(),
        bus.clone(),
        token.clone(),
    ));

    let sent = event(Uuid::new_v4(), 1);
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(serde_json::to_string(&sent).unwrap())
        .send()
        .await
        .expect("send");
    assert_eq!(next_of(&mut rx, sent.tenant_id).await, sent);

    // Now it is waiting in a long poll.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), relay)
        .await
        .expect("the relay must stop promptly on shutdown")
        .expect("relay task");
    assert!(began.elapsed() < Duration::from_secs(2));
}
