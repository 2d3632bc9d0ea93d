//! One trait per outside capability. Services and resolvers see only these; `wiring.rs` picks
//! the adapter behind each once at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::domain::conversation::AcousticFacts;
use crate::domain::{
    Analysis, AnalysisRequest, AudioInfo, EventEnvelope, Insights, InsightsInput, JobMessage,
};

/// A received job and the lease on it. The lease is valid until its visibility timeout.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Opaque handle for ack/extend/nack (SQS receipt handle, embedded receipt).
    pub receipt: String,
    pub message: JobMessage,
    /// How many times this job has been received, this time included (1 on first delivery).
    pub receive_count: u32,
}

/// A job the queue gave up on (dead-lettered) and nobody has handled yet.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Opaque handle for [`JobQueue::forget_dead`].
    pub handle: String,
    pub message: JobMessage,
}

/// A job queue with SQS semantics: at-least-once delivery, visibility leases, dead-lettering
/// after `max_receives()` receives.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Enqueues a job. A `dedup_key` already sent (and not yet acknowledged) is not enqueued
    /// again, where the backend can tell; duplicates that still happen are skipped by the worker.
    async fn send(&self, message: &JobMessage, dedup_key: Option<&str>) -> anyhow::Result<()>;
    /// Enqueues several jobs (message and dedup key each) as `send` does, in as few calls as the
    /// backend allows; the outcome of each, in order.
    async fn send_batch(&self, jobs: &[(JobMessage, String)]) -> Vec<anyhow::Result<()>> {
        let mut out = Vec::with_capacity(jobs.len());
        for (message, key) in jobs {
            out.push(self.send(message, Some(key)).await);
        }
        out
    }
    /// Waits up to `wait` for at most `max` jobs and leases them for `visibility`.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> anyhow::Result<Vec<Lease>>;
    /// Extends a lease (heartbeat). Fails when the lease was lost.
    async fn extend(&self, lease: &Lease, visibility: Duration) -> anyhow::Result<()>;
    /// The job is done: remove it.
    async fn ack(&self, lease: &Lease) -> anyhow::Result<()>;
    /// Gives the job back, visible again after `delay`.
    async fn nack(&self, lease: &Lease, delay: Duration) -> anyhow::Result<()>;
    /// Receives after which the queue moves a job to its dead-letter queue.
    fn max_receives(&self) -> u32;
    /// Up to `max` dead letters not handled yet (waiting up to `wait` for one where the backend
    /// can). One may be returned again until it is forgotten, or to two readers at once.
    async fn receive_dead(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<DeadLetter>>;
    /// A dead letter was handled (its call marked `FAILED`): not returned again.
    async fn forget_dead(&self, dead: &DeadLetter) -> anyhow::Result<()>;
    /// Jobs waiting (visible or leased), for metrics and readiness.
    async fn depth(&self) -> anyhow::Result<u64>;
}

/// Where the outbox relay publishes call events (SNS topic or in-process).
#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()>;
}

/// What every API instance listens to: all events of all tenants, best effort (a subscriber
/// that lags or misses one catches up from the database).
pub trait EventFeed: Send + Sync {
    fn subscribe(&self) -> broadcast::Receiver<Arc<EventEnvelope>>;
    /// Whether the feed is connected to its source (for readiness); in-process feeds always are.
    fn ready(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A presigned upload: what the client must send.
#[derive(Debug, Clone)]
pub struct PresignedPut {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub expires_at: DateTime<Utc>,
}

/// Object storage for recordings and results.
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> anyhow::Result<()>;
    /// `Ok(None)` when there is no such object.
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>>;
    /// Streams the object into the file at `dest` without holding it in memory; returns its
    /// size, or `None` when there is no such object.
    async fn download(&self, key: &str, dest: &Path) -> anyhow::Result<Option<u64>>;
    /// Size of the object, `None` when absent.
    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>>;
    /// Deleting an absent object succeeds.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Copies the object at `from` to `to`, replacing any object there, inside the store (the
    /// bytes do not pass through this process where the backend can avoid it). The copy is a
    /// separate object: writing `from` later does not change it. `Ok(false)` when there is no
    /// object at `from`.
    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<bool>;
    /// A URL anyone can GET for `expires_in`, answered with `content_type` (what the object is,
    /// e.g. the recording's type as submitted: a browser or player then knows what it got).
    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        content_type: &str,
    ) -> anyhow::Result<String>;
    /// A URL to PUT exactly `byte_size` bytes of `content_type` at `key` within `expires_in`,
    /// with the headers it returns. It works once: a PUT to a key that already holds an object
    /// is refused, so a second upload with the URL (or one racing the first) cannot replace
    /// what the first stored while it is there.
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        byte_size: u64,
        expires_in: Duration,
    ) -> anyhow::Result<PresignedPut>;
    async fn ping(&self) -> anyhow::Result<()>;
    /// Where the object at `key` lies on this machine's file system, when the store keeps its
    /// objects there (the embedded store): a reader may then read it in place instead of
    /// downloading a copy, and must not write it. `None` for a remote store.
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}

/// Why an analysis failed: the recording itself (permanent) or the service (worth a retry).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{0}")]
    Permanent(String),
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

/// A recording to analyse: in memory, or in a (temporary) file for large ones.
#[derive(Debug, Clone)]
pub enum Audio {
    Bytes(Bytes),
    File(PathBuf),
}

/// The audio's own facts: decoding and voice activity. Also checks uploads.
#[async_trait]
pub trait Acoustics: Send + Sync {
    /// Checks a recording — its headers and first packets decode — and reads its format and
    /// duration. An unreadable recording is `Permanent`, with the reason.
    async fn probe(&self, audio: Audio) -> Result<AudioInfo, AnalyzeError>;
    /// Decodes the whole recording: duration and when each channel carries speech.
    async fn facts(&self, audio: Audio) -> Result<AcousticFacts, AnalyzeError>;
    /// A copy of the recording (WAV) where every stretch `(start_ms, end_ms)` is covered by a
    /// tone in every channel.
    async fn redact(
        &self,
        audio: Audio,
        spans_ms: Vec<(i64, i64)>,
    ) -> Result<Vec<u8>, AnalyzeError>;
}

/// Reads a call's words: transcript segments, summary, sentiment, topics, action items.
#[async_trait]
pub trait InsightsSource: Send + Sync {
    fn name(&self) -> String;
    async fn insights(&self, audio: &Audio, input: InsightsInput)
        -> Result<Insights, AnalyzeError>;
}

/// Turns a recording into transcript, speakers, metrics and insights.
#[async_trait]
pub trait Analyzer: Send + Sync {
    fn name(&self) -> String;
    async fn analyze(
        &self,
        audio: Audio,
        request: AnalysisRequest,
    ) -> Result<Analysis, AnalyzeError>;
}

/// Where persisted GraphQL documents (Apollo APQ) are kept, so that every instance knows a hash
/// any of them learned.
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// The document stored under `hash` (lowercase hex SHA-256), if any.
    async fn get(&self, hash: &str) -> anyhow::Result<Option<String>>;
    /// Stores a document under its hash; storing one that is already there succeeds.
    async fn put(&self, hash: &str, document: &str) -> anyhow::Result<()>;
}

/// A quota: at most `limit` units at once, refilled evenly, `limit` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub period: Duration,
}

/// One charge asked of a [`RateLimiter`]: `cost` units of `key`'s quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub quota: Quota,
    /// Units to charge; 0 only asks whether one unit is left, and charges nothing.
    pub cost: u64,
}

/// What a [`RateLimiter`] decided for one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether this check's cost fits its quota now.
    pub allowed: bool,
    /// The quota's size.
    pub limit: u64,
    /// Units left: after the charge when every check of the call allowed it, else as they are.
    pub remaining: u64,
    /// Until the quota is whole again.
    pub reset: Duration,
    /// When refused: until the cost fits; `None` when it never will (it exceeds the quota).
    pub retry_after: Option<Duration>,
}

/// Held while a connection or subscription counts against a cap; dropping it gives the place back.
pub struct Slot(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Slot {
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(release)))
    }

    /// A slot that counts nowhere (a cap that is off, or a limiter that failed open).
    pub fn free() -> Self {
        Self(None)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Slot"
        } else {
            "Slot(free)"
        })
    }
}

/// Rate limits and caps counted where every instance sees them (Redis), or in this process.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Charges every check's cost to its key's quota if every check allows it, atomically and
    /// all or nothing, and reports each check's decision (in the order given).
    async fn check(&self, checks: &[Check]) -> anyhow::Result<Vec<Decision>>;
    /// Takes one of at most `max` places under `key`, held until the slot is dropped; `None`
    /// when all are taken. Places held by an instance that died are freed within a lease.
    async fn acquire(&self, key: &str, max: u64) -> anyhow::Result<Option<Slot>>;
    /// Places held under `key` now, on every instance.
    async fn held(&self, key: &str) -> anyhow::Result<u64>;
}

/// The object keys every `BlobStore` accepts: relative paths of safe characters; anything that
/// could escape a root is refused.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

/// What a webhook endpoint answered.
#[derive(Debug, Clone)]
pub struct WebhookAnswer {
    pub status: u16,
    pub latency: Duration,
}

/// Why a webhook request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSendError {
    /// The target may not be sent to (its form, or where it resolves to now).
    #[error("refused: {0}")]
    Refused(String),
    /// Sent, but no answer came (connection, timeout); how long that took.
    #[error("{0}")]
    Failed(String, Duration),
}

/// Sends webhook requests, guarded against requests to places a tenant must not reach.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    /// Whether `url` may be an endpoint (its form and, for a host name, what it resolves to
    /// now): the URL as it will be used, or why not.
    async fn check_target(&self, url: &str) -> Result<String, String>;
    /// POSTs the JSON `body` with `headers` to `url`: the answer's status, after reading a
    /// bounded part of it.
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<WebhookAnswer, WebhookSendError>;
}
