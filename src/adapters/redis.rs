//! Redis pub/sub as the fan-out to API instances: the realtime relay PUBLISHes every call event on
//! one channel (`RedisFanout`), and each instance keeps ONE subscription to it that feeds its
//! in-process broadcast (`RedisFeed`). Best effort: a message lost while Redis is away is filled
//! in from the database by the subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::domain::EventEnvelope;
use crate::ports::{EventFeed, EventPublisher};

/// The channel every call event is published on.
pub const CHANNEL: &str = "voicegraph:events";

/// How long one connection attempt or command may take before it counts as failed, so that a
/// Redis that is unreachable (not just refusing) never holds up a publisher.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a publish may take, reconnection attempts included.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff of the feed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the feed pings its subscription, to notice a connection that died silently.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Publishes events on [`CHANNEL`]. The connection manager reconnects by itself; a publish while
/// Redis is away fails, and the caller decides whether to retry.
#[derive(Clone)]
pub struct RedisFanout {
    conn: ConnectionManager,
    channel: String,
}

impl RedisFanout {
    /// Publishes on `channel` (one per deployment: [`CHANNEL`] unless configured).
    pub async fn connect(url: &str, channel: &str) -> anyhow::Result<Self> {
        Ok(Self {
            conn: connection_manager(url, "publishing events").await?,
            channel: channel.to_string(),
        })
    }
}

/// A connection that reconnects by itself, with bounded timeouts so that an unreachable Redis
/// fails a command instead of holding it up.
pub(crate) async fn connection_manager(
    url: &str,
    purpose: &str,
) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(IO_TIMEOUT)
        .set_response_timeout(IO_TIMEOUT)
        .set_number_of_retries(2)
        .set_max_delay(BACKOFF_MAX.as_millis() as u64);
    client
        .get_connection_manager_with_config(config)
        .await
        .with_context(|| format!("connecting to Redis for {purpose}"))
}

#[async_trait]
impl EventPublisher for RedisFanout {
    async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        let payload = serde_json::to_string(event).context("encoding the event")?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(payload);
        let publish = cmd.query_async::<i64>(&mut conn);
        let context = || {
            format!(
                "publishing event {} on Redis channel {}",
                event.id, self.channel
            )
        };
        let receivers = tokio::time::timeout(PUBLISH_TIMEOUT, publish)
            .await
            .context("timed out")
            .with_context(context)?
            .with_context(context)?;
        tracing::trace!(event = event.id, receivers, "event published on Redis");
        Ok(())
    }
}

/// This instance's view of [`CHANNEL`]: one background subscription that survives Redis restarts,
/// broadcast to every local subscriber. Dropping the feed (or cancelling `shutdown`) stops it.
pub struct RedisFeed {
    tx: broadcast::Sender<Arc<EventEnvelope>>,
    connected: Arc<AtomicBool>,
    _stop: DropGuard,
}

impl RedisFeed {
    /// Starts the subscription task; must be called inside a Tokio runtime. Only a malformed URL
    /// fails here: an unreachable Redis is retried in the background.
    pub fn start(
        url: &str,
        channel: &str,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url).context("parsing the Redis URL")?;
        let (tx, _) = broadcast::channel(capacity.max(1));
        let connected = Arc::new(AtomicBool::new(false));
        let stop = shutdown.child_token();
        tokio::spawn(subscribe_loop(
            client,
            channel.to_string(),
            tx.clone(),
            connected.clone(),
            stop.clone(),
        ));
        Ok(Arc::new(Self {
            tx,
            connected,
            _stop: stop.drop_guard(),
        }))
    }

    /// Whether the subscription is currently established (for readiness).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl EventFeed for RedisFeed {
    fn subscribe(&self) -> broadcast::Receiver<Arc<EventEnvelope>> {
        self.tx.subscribe()
    }

    fn ready(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.connected(), "not subscribed to Redis (reconnecting)");
        Ok(())
    }
}

/// Keeps one subscription alive until `stop`: connect, forward, and on loss reconnect with
/// exponential backoff (reset once a subscription was established).
async fn subscribe_loop(
    client: redis::Client,
    channel: String,
    tx: broadcast::Sender<Arc<EventEnvelope>>,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = subscribe_and_forward(&client, &channel, &tx, &connected, &mut backoff) => outcome,
        };
        let was_connected = connected.swap(false, Ordering::Relaxed);
        match outcome {
            Ok(()) => tracing::warn!(
                channel = %channel,
                "Redis event subscription lost; reconnecting"
            ),
            Err(e) if was_connected || failures == 0 => {
                tracing::warn!(channel = %channel, error = %format!("{e:#}"), retry_in = ?backoff, "Redis event subscription failed; reconnecting");
            }
            // Keep the log quiet while Redis stays down.
            Err(e) => {
                tracing::debug!(channel = %channel, error = %format!("{e:#}"), retry_in = ?backoff, "Redis still unavailable")
            }
        }
        failures = if was_connected { 0 } else { failures + 1 };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    connected.store(false, Ordering::Relaxed);
    tracing::debug!(channel = %channel, "Redis event subscription stopped");
}

/// One subscription: returns `Ok` when the connection ends, `Err` when it could not be set up or
/// stopped answering.
async fn subscribe_and_forward(
    client: &redis::Client,
    channel: &str,
    tx: &broadcast::Sender<Arc<EventEnvelope>>,
    connected: &AtomicBool,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let pubsub = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub())
        .await
        .context("timed out connecting to Redis")?
        .context("connecting to Redis")?;
    let (mut sink, mut messages) = pubsub.split();
    tokio::time::timeout(IO_TIMEOUT, sink.subscribe(channel))
        .await
        .context("timed out subscribing")?
        .context("subscribing")?;
    connected.store(true, Ordering::Relaxed);
    *backoff = BACKOFF_MIN;
    tracing::info!(channel = %channel, "subscribed to Redis events");

    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Ok(()) };
                match serde_json::from_slice::<EventEnvelope>(msg.get_payload_bytes()) {
                    // No receivers is fine: nobody on this instance is subscribed right now.
                    Ok(event) => { let _ = tx.send(Arc::new(event)); }
                    Err(e) => tracing::warn!(channel = %channel, error = %e, "skipping a malformed event from Redis"),
                }
            }
            _ = keepalive.tick() => {
                tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>())
                    .await
                    .context("Redis did not answer a ping")?
                    .context("pinging Redis")?;
            }
        }
    }
}

/// Persisted GraphQL documents in Redis, shared by every instance; each lives for
/// [`DOCUMENT_TTL`] after it was last stored, so unused ones expire.
#[derive(Clone)]
pub struct RedisDocumentStore {
    conn: ConnectionManager,
    prefix: String,
}

/// How long a persisted document is kept after it was last registered.
const DOCUMENT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl RedisDocumentStore {
    /// Keys are `<prefix>:<hash>`; the prefix is the deployment's channel, so deployments that
    /// share a Redis keep their documents apart.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            conn: connection_manager(url, "persisted documents").await?,
            prefix: format!("{prefix}:apq"),
        })
    }
}

#[async_trait]
impl crate::ports::DocumentStore for RedisDocumentStore {
    async fn get(&self, hash: &str) -> anyhow::Result<Option<String>> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{}:{hash}", self.prefix))
            .query_async(&mut conn)
            .await
            .context("reading a persisted document from Redis")?;
        Ok(value)
    }

    async fn put(&self, hash: &str, document: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(format!("{}:{hash}", self.prefix))
            .arg(document)
            .arg("EX")
            .arg(DOCUMENT_TTL.as_secs())
            .query_async(&mut conn)
            .await
            .context("storing a persisted document in Redis")?;
        Ok(())
    }
}
