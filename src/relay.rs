//! The outbox relay: sequences new events in commit order, then delivers outbox rows — jobs to
//! the queue, events to the publisher, blob deletions to the store — marking each sent only after
//! its destination accepted it. Failed deliveries back off and are tried again.
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
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{EventEnvelope, JobMessage, OutboxRecord};
use crate::services::events::{DEST_BLOB_DELETE, DEST_EVENTS, DEST_JOBS};
use crate::state::AppState;
use crate::telemetry;

const BATCH: u64 = 200;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;

enum Delivery {
    Sent,
    /// Not deliverable yet (an event not sequenced yet): leave it for the next round.
    NotYet,
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

/// One round: returns how many rows were delivered.
pub async fn relay_once(state: &AppState) -> anyhow::Result<usize> {
    state.store.sequence_pending().await?;
    let claim = state.store.claim_outbox(BATCH).await?;
    if claim.rows.is_empty() {
        claim.finish().await?;
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
    let mut sent_ids = Vec::new();
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
            Ok(Delivery::NotYet) => {}
            Err(e) => {
                let delay = Duration::from_millis(500)
                    * 2u32.saturating_pow(row.attempts.clamp(0, 10) as u32);
                let delay = delay.min(Duration::from_secs(300));
                tracing::warn!(outbox = row.id, destination = %row.destination, attempts = row.attempts + 1, error = %e, "outbox delivery failed; will retry");
                claim
                    .reschedule(
                        row,
                        &format!("{e:#}"),
                        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    )
                    .await?;
            }
        }
    }
    claim.mark_sent(&sent_ids).await?;
    claim.finish().await?;
    Ok(sent_ids.len())
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
    let notifications = state.store.notifications().clone();
    let mut last_purge = std::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let delivered = match relay_once(&state).await {
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
        if last_purge.elapsed() > Duration::from_secs(600) {
            last_purge = std::time::Instant::now();
            if let Err(e) = purge(&state).await {
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
    tracing::info!("relay stopped");
}
