//! The outbox relay: sequences new events in commit order (making their webhook deliveries),
//! then delivers outbox rows — jobs to the queue, events to the publisher, blob deletions to the
//! store, webhook deliveries to tenants' endpoints — marking each sent only after its destination
//! accepted it. Rows are claimed under a lease (`Store::claim_outbox`): no database lock is held
//! while a destination answers.
//!
//! Each destination has its own retry policy and dead letter ([`policy`]): jobs and events are
//! retried until they go (an outage of the queue or the topic must not lose them; the outbox's
//! age shows it), blob deletions for about a day, webhook deliveries on their own schedule
//! (`domain::webhooks::RetrySchedule`), each attempt recorded. A row whose retries run out is
//! dead-lettered: kept with its last error, never claimed again, counted in
//! `voicegraph_outbox_dead_letters_total`. Webhook deliveries run in a loop of their own, so a
//! slow endpoint never holds up jobs and events.
//!
//! When traces are exported, each job sent and each event published has a span that continues
//! the trace of whoever wrote it, and carries that span's context on to the worker or to the
//! fan-out.
//!
//! Between rounds the relay waits for a nudge from this process or, on Postgres, for the
//! database's notice that outbox rows were committed anywhere, and sleeps until the next retry
//! falls due; without notifications (SQLite, or while the listener reconnects) it polls every
//! `VOICEGRAPH_RELAY_POLL_MS`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{EventEnvelope, JobMessage, OutboxRecord};
use crate::services::events::{DEST_BLOB_DELETE, DEST_EVENTS, DEST_JOBS};
use crate::services::webhooks::{self, Attempted};
use crate::state::AppState;
use crate::store::{Destinations, DEST_WEBHOOK};
use crate::telemetry;

const BATCH: u64 = 200;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;
/// Webhook deliveries in flight at once.
const WEBHOOK_CONCURRENCY: usize = 32;
/// How long a claim keeps its rows from other relays: longer than a round takes.
const LEASE: Duration = Duration::from_secs(60);

enum Delivery {
    Sent,
    /// Not deliverable yet (an event not sequenced yet): leave it for the next round.
    NotYet,
    /// Failed; due again at this time (a destination with its own schedule).
    RetryAt(chrono::DateTime<Utc>, String),
    /// Failed for good: dead-letter the row.
    Dead(String),
}

/// How a destination retries a failed row, and when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first delay; it doubles with each failure up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// Failures after which the row is dead-lettered; `None`: never.
    pub give_up_after: Option<i32>,
}

/// The destination registry: each destination's retry policy (webhook deliveries schedule their
/// own retries and dead letters, per delivery, and fall back on this only when an attempt could
/// not even be recorded).
pub fn policy(destination: &str) -> Policy {
    let backoff = Policy {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(300),
        give_up_after: None,
    };
    match destination {
        DEST_JOBS | DEST_EVENTS => backoff,
        // 300 more tries at the cap after the first doublings: about a day.
        DEST_BLOB_DELETE => Policy {
            give_up_after: Some(300),
            ..backoff
        },
        DEST_WEBHOOK => Policy {
            base: Duration::from_secs(5),
            ..backoff
        },
        // A destination this build does not know (written by a newer one): retried at the cap
        // until a relay that knows it takes it.
        _ => Policy {
            base: Duration::from_secs(300),
            ..backoff
        },
    }
}

impl Policy {
    /// The delay after a row's `attempts`-th failure, or `None` to dead-letter it.
    pub fn after_failure(&self, attempts: i32) -> Option<Duration> {
        if self.give_up_after.is_some_and(|n| attempts >= n) {
            return None;
        }
        Some((self.base * 2u32.saturating_pow(attempts.clamp(0, 20) as u32 - 1)).min(self.cap))
    }
}

async fn deliver(
    state: &AppState,
    row: &OutboxRecord,
    event: Option<&EventEnvelope>,
) -> anyhow::Result<Delivery> {
    match row.destination.as_str() {
        // Jobs go in batches (`send_jobs`).
        DEST_EVENTS => match event {
            Some(e) => publish(state, e).await?,
            None => return Ok(Delivery::NotYet),
        },
        DEST_BLOB_DELETE => {
            let keys: Vec<String> =
                serde_json::from_value(row.payload["keys"].clone()).context("blob keys")?;
            for key in keys {
                state.blobs.delete(&key).await?;
            }
        }
        DEST_WEBHOOK => {
            let tenant = row.payload["tenant_id"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .context("webhook payload: tenant_id")?;
            let delivery = row.payload["delivery_id"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .context("webhook payload: delivery_id")?;
            return Ok(match webhooks::attempt(state, tenant, delivery).await? {
                Attempted::Done => Delivery::Sent,
                Attempted::RetryAt(at, e) => Delivery::RetryAt(at, e),
                Attempted::Dead(e) => Delivery::Dead(e),
            });
        }
        other => anyhow::bail!("unknown outbox destination {other:?}"),
    }
    Ok(Delivery::Sent)
}

/// Publishes an event in a span that continues the trace of the span that wrote it; the event
/// goes out carrying the publication's own trace context.
async fn publish(state: &AppState, event: &EventEnvelope) -> anyhow::Result<()> {
    let span = tracing::info_span!("publish event", event = event.id, seq = event.seq, kind = %event.kind, call = %event.call_id, tenant = %event.tenant_id);
    telemetry::continue_trace(&span, event.traceparent.as_deref());
    let mut sent = event.clone();
    sent.traceparent = telemetry::traceparent(&span).or(sent.traceparent);
    let result = state
        .publisher
        .publish(&sent)
        .instrument(span.clone())
        .await;
    if let Err(e) = &result {
        telemetry::record_error(&span, e);
    }
    result
}

/// Sends the jobs of a round's rows in one batch; each row's outcome. Each job has a span
/// (continuing the trace of the span that queued it) for as long as the batch is sent, and goes
/// out carrying that span's trace context.
async fn send_jobs<'a>(
    state: &AppState,
    rows: Vec<&'a OutboxRecord>,
) -> Vec<(&'a OutboxRecord, anyhow::Result<Delivery>)> {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut batch = Vec::with_capacity(rows.len());
    let mut batched = Vec::with_capacity(rows.len());
    for row in rows {
        match serde_json::from_value::<JobMessage>(row.payload.clone()).context("job payload") {
            Ok(mut message) => {
                let span = tracing::info_span!("send job", call = %message.call_id, tenant = %message.tenant_id, outbox = row.id);
                telemetry::continue_trace(&span, message.traceparent.as_deref());
                message.traceparent = telemetry::traceparent(&span).or(message.traceparent);
                batch.push((message, format!("outbox-{}", row.id)));
                batched.push((row, span));
            }
            Err(e) => outcomes.push((row, Err(e))),
        }
    }
    if !batch.is_empty() {
        let results = state.queue.send_batch(&batch).await;
        outcomes.extend(batched.into_iter().zip(results).map(|((row, span), r)| {
            if let Err(e) = &r {
                telemetry::record_error(&span, e);
            }
            (row, r.map(|()| Delivery::Sent))
        }));
    }
    outcomes
}

/// One round of jobs, events and blob deletions: returns how many rows were delivered.
pub async fn relay_once(state: &AppState) -> anyhow::Result<usize> {
    state.store.sequence_pending().await?;
    let claim = state
        .store
        .claim_outbox(Destinations::AllBut(DEST_WEBHOOK), BATCH, LEASE)
        .await?;
    if claim.rows.is_empty() {
        return Ok(0);
    }
    let event_ids: Vec<i64> = claim
        .rows
        .iter()
        .filter(|r| r.destination == DEST_EVENTS)
        .filter_map(|r| r.payload["event_id"].as_i64())
        .collect();
    // Present when the event exists; `Some` once it is sequenced.
    let events = if event_ids.is_empty() {
        Default::default()
    } else {
        state.store.events_by_id(&event_ids).await?
    };
    // Jobs go to the queue together (one statement for the embedded queue, ten to a call for
    // SQS); the other deliveries run concurrently: the destinations (SQS, SNS) do not keep
    // order anyway, and subscribers order events by their sequence position.
    let (job_rows, other_rows): (Vec<&OutboxRecord>, Vec<&OutboxRecord>) =
        claim.rows.iter().partition(|r| r.destination == DEST_JOBS);
    let mut outcomes: Vec<(&OutboxRecord, anyhow::Result<Delivery>)> =
        send_jobs(state, job_rows).await;
    let events = &events;
    let deliveries: Vec<_> = other_rows
        .into_iter()
        .map(|row| async move {
            let result = match row.payload["event_id"].as_i64() {
                Some(id) if row.destination == DEST_EVENTS => match events.get(&id) {
                    Some(Some(event)) => deliver(state, row, Some(event)).await,
                    // Not sequenced yet: the next round.
                    Some(None) => Ok(Delivery::NotYet),
                    // Deleted with its call before it went out.
                    None => Ok(Delivery::Sent),
                },
                _ => deliver(state, row, None).await,
            };
            (row, result)
        })
        .collect();
    outcomes.extend(
        futures::stream::iter(deliveries)
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await,
    );
    Ok(settle(state, &claim, outcomes).await?.sent)
}

/// One round of webhook deliveries: returns how many rows it claimed.
/// Claims up to `room` due webhook deliveries and starts each as a task of its own on
/// `inflight`, which settles its row once its endpoint has answered: a slow endpoint holds only
/// its own deliveries, never another tenant's. Each task answers the retries it scheduled.
/// How many were started.
pub async fn start_webhooks(
    state: &AppState,
    inflight: &mut tokio::task::JoinSet<Vec<DateTime<Utc>>>,
    room: usize,
) -> anyhow::Result<usize> {
    let claim = state
        .store
        .claim_outbox(Destinations::Only(DEST_WEBHOOK), room as u64, LEASE)
        .await?;
    let started = claim.rows.len();
    let claim = std::sync::Arc::new(claim);
    for i in 0..started {
        let state = state.clone();
        let claim = claim.clone();
        inflight.spawn(async move {
            let row = &claim.rows[i];
            let outcome = deliver(&state, row, None).await;
            match settle(&state, &claim, vec![(row, outcome)]).await {
                Ok(settled) => settled.retries,
                Err(e) => {
                    tracing::warn!(outbox = row.id, error = %e, "settling a webhook delivery failed; it is tried again when its lease runs out");
                    Vec::new()
                }
            }
        });
    }
    Ok(started)
}

/// What settling a claim did.
struct Settled {
    sent: usize,
    retries: Vec<DateTime<Utc>>,
}

/// Marks what was delivered, releases what could not go yet, reschedules or dead-letters the
/// failures by their destination's policy.
async fn settle(
    state: &AppState,
    claim: &crate::store::OutboxClaim,
    outcomes: Vec<(&OutboxRecord, anyhow::Result<Delivery>)>,
) -> anyhow::Result<Settled> {
    let mut retries = Vec::new();
    let mut retry_at = |at: DateTime<Utc>| {
        retries.push(at);
        at
    };
    let mut sent_ids = Vec::new();
    let mut not_yet = Vec::new();
    let now = Utc::now();
    for (row, result) in outcomes {
        match result {
            Ok(Delivery::Sent) => {
                sent_ids.push(row.id);
                let late = (now - row.available_at).to_std().unwrap_or_default();
                state
                    .metrics
                    .outbox_delivery_seconds
                    .with_label_values(&[row.destination.as_str()])
                    .observe(late.as_secs_f64());
            }
            Ok(Delivery::NotYet) => not_yet.push(row.id),
            Ok(Delivery::RetryAt(at, e)) => claim.reschedule(row, &e, retry_at(at)).await?,
            Ok(Delivery::Dead(e)) => dead_letter(state, claim, row, &e).await?,
            Err(e) => {
                let error = format!("{e:#}");
                match policy(&row.destination).after_failure(row.attempts + 1) {
                    Some(delay) => {
                        tracing::warn!(outbox = row.id, destination = %row.destination, attempts = row.attempts + 1, error = %error, "outbox delivery failed; will retry");
                        let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                        claim.reschedule(row, &error, retry_at(at)).await?;
                    }
                    None => dead_letter(state, claim, row, &error).await?,
                }
            }
        }
    }
    claim.release(&not_yet).await?;
    claim.mark_sent(&sent_ids).await?;
    Ok(Settled {
        sent: sent_ids.len(),
        retries,
    })
}

async fn dead_letter(
    state: &AppState,
    claim: &crate::store::OutboxClaim,
    row: &OutboxRecord,
    error: &str,
) -> anyhow::Result<()> {
    tracing::error!(outbox = row.id, destination = %row.destination, attempts = row.attempts + 1, error = %error, "outbox row dead-lettered: its destination's retries ran out");
    state
        .metrics
        .outbox_dead_letters
        .with_label_values(&[row.destination.as_str()])
        .inc();
    claim.dead_letter(row, error).await
}

/// Removes delivered outbox rows older than a day so the table stays small.
async fn purge(state: &AppState) -> anyhow::Result<()> {
    state
        .store
        .purge_outbox(Utc::now() - chrono::Duration::days(1))
        .await?;
    Ok(())
}

pub async fn run(state: AppState, shutdown: CancellationToken) {
    tracing::info!("relay started");
    // The webhook loop is woken by the main loop after each of its rounds: sequencing there is
    // what makes deliveries, and the nudges and notices all go to the main loop.
    let webhook_wakeup = std::sync::Arc::new(tokio::sync::Notify::new());
    let webhooks = tokio::spawn(webhook_loop(
        state.clone(),
        shutdown.clone(),
        webhook_wakeup.clone(),
    ));
    main_loop(&state, &shutdown, &webhook_wakeup).await;
    let _ = webhooks.await;
    tracing::info!("relay stopped");
}

/// Jobs, events and blob deletions; sequencing; purging; the outbox metrics.
async fn main_loop(state: &AppState, shutdown: &CancellationToken, webhooks: &tokio::sync::Notify) {
    let notifications = state.store.notifications().clone();
    let mut last_purge = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let delivered = match relay_once(state).await {
            Ok(n) => {
                failures = 0;
                n
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "relay round failed");
                0
            }
        };
        webhooks.notify_one();
        if last_purge.elapsed() > Duration::from_secs(600) {
            last_purge = std::time::Instant::now();
            if let Err(e) = purge(state).await {
                tracing::warn!(error = %e, "purging the outbox failed");
            }
        }
        if delivered as u64 >= BATCH {
            continue;
        }
        let poll = state.settings.relay_poll * std::cmp::min(failures + 1, 20);
        // One statement before waiting: the outbox's age for the metrics, and when a retry
        // falls due (notices announce new rows; only retries come due unannounced).
        let pending = match state.store.outbox_pending().await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "reading the outbox's pending rows failed");
                None
            }
        };
        if let Some(p) = pending {
            let age = p.oldest.map_or(0.0, |at| {
                (Utc::now() - at).to_std().unwrap_or_default().as_secs_f64()
            });
            state.metrics.outbox_oldest_seconds.set(age);
        }
        let wait = match pending {
            Some(p) if failures == 0 && notifications.link().is_up() => p
                .next_due
                .map_or(state.settings.notify_fallback, |at| {
                    (at - Utc::now()).to_std().unwrap_or_default()
                })
                .min(state.settings.notify_fallback),
            _ => poll,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.relay_wakeup.notified() => {}
            _ = notifications.outbox().notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Webhook deliveries: up to [`WEBHOOK_CONCURRENCY`] in flight, each settled on its own; more
/// are claimed after each round of the main loop (which makes them), whenever one finishes
/// while more may be due, and when a retry this loop scheduled falls due (retries scheduled
/// before the main loop last looked wake it, and it wakes this one). On shutdown the deliveries
/// in flight finish (each within the endpoint timeout).
async fn webhook_loop(
    state: AppState,
    shutdown: CancellationToken,
    wakeup: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut failures = 0u32;
    // When the retries this loop scheduled fall due, those no claim has taken yet.
    let mut retries: std::collections::BTreeSet<DateTime<Utc>> = Default::default();
    let mut inflight = tokio::task::JoinSet::new();
    // Whether to claim now, and whether the last claim may have left due rows for lack of room
    // (then a finished delivery makes room for them at once).
    let (mut claim_now, mut saturated) = (true, false);
    loop {
        let room = WEBHOOK_CONCURRENCY.saturating_sub(inflight.len());
        if claim_now && room == 0 {
            saturated = true;
        } else if claim_now {
            // A claim takes every row due when it starts (room allowing): retries due by then
            // are its own.
            let started = Utc::now();
            match start_webhooks(&state, &mut inflight, room).await {
                Ok(n) => {
                    failures = 0;
                    saturated = n == room;
                }
                Err(e) => {
                    failures += 1;
                    saturated = false;
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                }
            }
            if !saturated {
                retries = retries.split_off(&started);
            }
        }
        let now = Utc::now();
        let wait = if failures > 0 {
            state.settings.relay_poll * std::cmp::min(failures + 1, 20)
        } else {
            retries
                .first()
                .map_or(state.settings.notify_fallback, |at| {
                    (*at - now).to_std().unwrap_or_default()
                })
                .min(state.settings.notify_fallback)
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok(scheduled) = done {
                    retries.extend(scheduled);
                }
                claim_now = saturated;
            }
            _ = wakeup.notified(), if !saturated => claim_now = true,
            _ = tokio::time::sleep(wait), if !saturated => claim_now = true,
            // Saturated with nothing in flight cannot happen (a full claim started its rows).
            else => claim_now = true,
        }
    }
    while inflight.join_next().await.is_some() {}
}
