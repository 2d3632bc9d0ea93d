//! The fan-out relay: reads call events from the SQS queue subscribed to the events topic and
//! publishes them to the instances' feed (Redis). A message is deleted once it was published, or
//! when it cannot be an event at all; one that fails to publish comes back after its visibility
//! timeout. Safe to run on every instance: duplicates are dropped by subscribers (by `seq`).
//! When traces are exported, each event forwarded has a span continuing the trace context of its
//! message (the `traceparent` attribute, or the event's own), and goes on carrying that span's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::EventEnvelope;
use crate::ports::EventPublisher;
use crate::telemetry::{self, TRACEPARENT};

/// SQS long-poll limit.
const LONG_POLL: Duration = Duration::from_secs(20);
/// SQS batch limit.
const MAX_MESSAGES: i32 = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs until `shutdown`; a shutdown interrupts the long poll, not a batch being delivered.
pub async fn run(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    fanout: Arc<dyn EventPublisher>,
    shutdown: CancellationToken,
) {
    tracing::info!(queue = %queue_url, "realtime relay started");
    let mut backoff = BACKOFF_MIN;
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = receive(&sqs, &queue_url, LONG_POLL) => received,
        };
        let result = match received {
            Ok(messages) => forward(&sqs, &queue_url, fanout.as_ref(), messages).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => backoff = BACKOFF_MIN,
            Err(e) => {
                tracing::warn!(queue = %queue_url, error = %format!("{e:#}"), retry_in = ?backoff, "realtime relay round failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    tracing::info!(queue = %queue_url, "realtime relay stopped");
}

/// One round: waits up to `wait` for messages, publishes their events and deletes what was
/// handled. Returns how many events were published; fails when receiving failed or an event
/// could not be published (that one and the rest of the batch are left for redelivery).
pub async fn run_once(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    fanout: &dyn EventPublisher,
    wait: Duration,
) -> anyhow::Result<usize> {
    let messages = receive(sqs, queue_url, wait).await?;
    forward(sqs, queue_url, fanout, messages).await
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    wait: Duration,
) -> anyhow::Result<Vec<Message>> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(MAX_MESSAGES)
        .wait_time_seconds(wait.min(LONG_POLL).as_secs() as i32)
        .message_attribute_names(TRACEPARENT)
        .send()
        .await
        .with_context(|| format!("receiving from realtime queue {queue_url}"))?;
    Ok(out.messages.unwrap_or_default())
}

/// The SNS envelope of a subscription without raw message delivery.
#[derive(Deserialize)]
struct SnsNotification {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
}

/// The event in a message body: the envelope itself (raw delivery) or wrapped in an SNS
/// notification.
fn parse_body(body: &str) -> anyhow::Result<EventEnvelope> {
    match serde_json::from_str::<EventEnvelope>(body) {
        Ok(event) => Ok(event),
        Err(raw_err) => match serde_json::from_str::<SnsNotification>(body) {
            Ok(n) if n.kind == "Notification" => {
                serde_json::from_str(&n.message).context("the SNS notification's message")
            }
            _ => Err(anyhow::Error::new(raw_err).context("not an event or an SNS notification")),
        },
    }
}

async fn forward(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    fanout: &dyn EventPublisher,
    messages: Vec<Message>,
) -> anyhow::Result<usize> {
    if messages.is_empty() {
        return Ok(0);
    }
    let mut handled: Vec<&str> = Vec::with_capacity(messages.len());
    let mut events: Vec<(EventEnvelope, &str)> = Vec::with_capacity(messages.len());
    for m in &messages {
        let Some(receipt) = m.receipt_handle() else {
            continue;
        };
        match parse_body(m.body().unwrap_or_default()) {
            Ok(mut event) => {
                // Raw delivery keeps the publisher's message attributes; the event's own copy
                // serves the other subscriptions.
                if let Some(tp) = m
                    .message_attributes()
                    .and_then(|a| a.get(TRACEPARENT))
                    .and_then(|v| v.string_value())
                {
                    event.traceparent = Some(tp.to_string());
                }
                events.push((event, receipt));
            }
            Err(e) => {
                tracing::warn!(queue = %queue_url, message_id = m.message_id().unwrap_or_default(), error = %format!("{e:#}"), "dropping a malformed realtime message");
                handled.push(receipt);
            }
        }
    }
    // In sequence order, so that subscribers see fewer gaps to fill.
    events.sort_by_key(|(e, _)| e.seq);
    let mut published = 0;
    let mut failure = None;
    for (event, receipt) in &mut events {
        let span = tracing::info_span!("fan out event", event = event.id, seq = event.seq, kind = %event.kind, call = %event.call_id, tenant = %event.tenant_id);
        telemetry::continue_trace(&span, event.traceparent.as_deref());
        event.traceparent = telemetry::traceparent(&span).or(event.traceparent.take());
        let result = fanout.publish(event).instrument(span.clone()).await;
        if let Err(e) = &result {
            telemetry::record_error(&span, e);
        }
        match result {
            Ok(()) => {
                handled.push(*receipt);
                published += 1;
            }
            Err(e) => {
                // The feed is down: the rest would fail too; all of it comes back later.
                failure =
                    Some(e.context(format!("forwarding event {} (seq {})", event.id, event.seq)));
                break;
            }
        }
    }
    delete(sqs, queue_url, &handled).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(published),
    }
}

/// Deletes handled messages. A failed entry is logged and comes back as a duplicate, which
/// subscribers drop.
async fn delete(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipts: &[&str],
) -> anyhow::Result<()> {
    if receipts.is_empty() {
        return Ok(());
    }
    let entries = receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(*r)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = sqs
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .with_context(|| format!("deleting from realtime queue {queue_url}"))?;
    for failed in out.failed() {
        tracing::warn!(queue = %queue_url, entry = failed.id(), code = failed.code(), reason = failed.message().unwrap_or_default(), "deleting a realtime message failed; it will be delivered again");
    }
    Ok(())
}
