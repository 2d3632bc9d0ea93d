//! Webhook endpoints, their deliveries and the attempts at each.

use async_graphql::{Context, Object, SimpleObject, ID};

use crate::domain::webhooks::{AttemptRecord, DeliveryRecord, DeliveryStatus, WebhookRecord};
use crate::domain::CallEventKind;
use crate::graphql::scalars::Timestamp;

/// A tenant's endpoint for call events.
pub struct Webhook(pub WebhookRecord);

/// An endpoint that receives the tenant's call events as signed HTTPS POSTs (Standard Webhooks:
/// `webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[Object]
impl Webhook {
    /// The endpoint's id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Where deliveries are POSTed.
    async fn url(&self) -> &str {
        &self.0.url
    }
    /// What it is for, as its admins wrote it.
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// The event kinds it receives; empty for every kind.
    async fn events(&self) -> &[CallEventKind] {
        &self.0.events
    }
    /// Until when the secret replaced by the last rotation still signs deliveries (next to the
    /// new one); null when only one secret signs.
    async fn previous_secret_expires_at(&self, ctx: &Context<'_>) -> Option<Timestamp> {
        // Compared with the clock: not an answer to keep.
        crate::graphql::response_cache::not_cacheable(ctx);
        self.0
            .previous_secret_expires_at
            .filter(|t| *t > chrono::Utc::now())
            .map(Into::into)
    }
    /// When it was registered.
    async fn created_at(&self) -> Timestamp {
        self.0.created_at.into()
    }
    /// When it last changed.
    async fn updated_at(&self) -> Timestamp {
        self.0.updated_at.into()
    }
}

/// A new endpoint, or one with a new secret.
#[derive(SimpleObject)]
pub struct WebhookWithSecret {
    /// The signing secret (`whsec_…`), shown this once: keep it where the receiver verifies
    /// signatures.
    pub secret: String,
    /// The endpoint.
    pub webhook: Webhook,
}

/// One event for one endpoint, with every attempt at it.
pub struct WebhookDelivery {
    pub delivery: DeliveryRecord,
    pub attempts: Vec<AttemptRecord>,
}

/// One event's delivery to an endpoint: retried on failure with growing delays (about a day in
/// all), then `DEAD` until `redeliverWebhook` sends it again.
#[Object]
impl WebhookDelivery {
    /// The delivery's id (for `redeliverWebhook`).
    async fn id(&self) -> ID {
        ID(self.delivery.id.to_string())
    }
    /// The endpoint's id.
    async fn webhook_id(&self) -> ID {
        ID(self.delivery.webhook_id.to_string())
    }
    /// The `webhook-id` header: the same for every attempt, for receivers to deduplicate.
    async fn message_id(&self) -> &str {
        &self.delivery.message_id
    }
    /// The event's position (`CallEvent.id`), once sequenced.
    async fn event_id(&self) -> Option<ID> {
        self.delivery.event_seq.map(|s| ID(s.to_string()))
    }
    /// What happened to the call.
    async fn event_kind(&self) -> Option<CallEventKind> {
        CallEventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == self.delivery.event_kind)
    }
    /// The call.
    async fn call_id(&self) -> ID {
        ID(self.delivery.call_id.to_string())
    }
    /// Where the delivery stands.
    async fn status(&self) -> DeliveryStatus {
        self.delivery.status
    }
    /// Attempts so far.
    async fn attempt_count(&self) -> i32 {
        self.delivery.attempts
    }
    /// When the next attempt is due (`RETRYING`, or `PENDING` after a redelivery).
    async fn next_attempt_at(&self) -> Option<Timestamp> {
        self.delivery.next_attempt_at.map(Into::into)
    }
    /// The HTTP status of the last answer, if one came.
    async fn last_response_status(&self) -> Option<i32> {
        self.delivery.last_response_status
    }
    /// Why the last attempt failed.
    async fn last_error(&self) -> Option<&str> {
        self.delivery.last_error.as_deref()
    }
    /// When the endpoint accepted it.
    async fn delivered_at(&self) -> Option<Timestamp> {
        self.delivery.delivered_at.map(Into::into)
    }
    /// When the delivery was made (right after the event was recorded).
    async fn created_at(&self) -> Timestamp {
        self.delivery.created_at.into()
    }
    /// The request body every attempt sends (null before the first attempt).
    async fn payload(&self) -> Option<&str> {
        self.delivery.body.as_deref()
    }
    /// Every attempt, oldest first.
    async fn attempts(&self) -> Vec<WebhookAttempt> {
        self.attempts.iter().cloned().map(WebhookAttempt).collect()
    }
}

/// One attempt at a delivery.
pub struct WebhookAttempt(pub AttemptRecord);

/// One POST of a delivery to its endpoint.
#[Object]
impl WebhookAttempt {
    /// When it was sent.
    async fn attempted_at(&self) -> Timestamp {
        self.0.attempted_at.into()
    }
    /// Whether the endpoint accepted it (a 2xx status).
    async fn succeeded(&self) -> bool {
        self.0.succeeded
    }
    /// The HTTP status the endpoint answered; null when no answer came.
    async fn response_status(&self) -> Option<i32> {
        self.0.response_status
    }
    /// Milliseconds until the answer's head arrived (or the attempt failed).
    async fn latency_ms(&self) -> i32 {
        self.0.latency_ms.clamp(0, i32::MAX as i64) as i32
    }
    /// Why it failed (no answer, a non-2xx status, or the target refused).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// When the next attempt was scheduled after this one; null after a success or the last.
    async fn next_retry_at(&self) -> Option<Timestamp> {
        self.0.next_retry_at.map(Into::into)
    }
}

/// A page of deliveries, newest first.
#[derive(SimpleObject)]
pub struct WebhookDeliveryPage {
    /// The deliveries.
    pub nodes: Vec<WebhookDelivery>,
    /// Pass as `after` for the next page; null on the last.
    pub end_cursor: Option<String>,
    /// Whether more deliveries follow.
    pub has_next_page: bool,
}
