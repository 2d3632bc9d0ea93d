//! Webhooks: a tenant's admins register endpoints, and every event of the tenant's calls whose
//! kind an endpoint takes is delivered to it, signed as the Standard Webhooks specification
//! says, through the outbox: the relay attempts each delivery, retries failures on the
//! schedule of [`RetrySchedule`] (about a day with the defaults) and then dead-letters it. Every
//! attempt is kept (`webhookDeliveries`), and `redeliverWebhook` sends a delivery again.
//!
//! A delivery is the message
//! `{"type": "call.completed", "timestamp": …, "data": {"event": {…}, "call": {…}}}` with the
//! event and the call's summary fields as they were at the first attempt; every attempt sends
//! the same bytes under the same `webhook-id`, with its own `webhook-timestamp` and signatures.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::webhooks::{
    event_type, new_secret, signature_header, AttemptOutcome, AttemptRecord, DeliveryRecord,
    RetrySchedule, WebhookRecord,
};
use crate::domain::{CallEventKind, CallRecord};
use crate::error::{AppError, AppResult};
use crate::ports::WebhookSendError;
use crate::services::auth::{Caller, Permission};
use crate::services::calls::check_text;
use crate::state::AppState;
use crate::store::{DeliveryFilter, WebhookFields};

/// Endpoints one tenant may have.
pub const MAX_WEBHOOKS: u64 = 20;
/// Characters of an endpoint's description.
pub const MAX_DESCRIPTION: usize = 500;
/// How long a rotated secret keeps signing, so receivers can switch without missing a message.
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Deliveries in one page of `webhookDeliveries`.
pub const MAX_PAGE: usize = 100;

/// An endpoint's fields as a client gives them (`None`: unchanged, on an update).
#[derive(Debug, Clone, Default)]
pub struct WebhookInput {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<CallEventKind>>,
}

/// A new endpoint and its secret, shown this once.
pub struct Created {
    pub webhook: WebhookRecord,
    pub secret: String,
}

async fn check_url(state: &AppState, url: &str) -> AppResult<String> {
    let url = url.trim();
    state
        .webhooks
        .check_target(url)
        .await
        .map_err(|e| AppError::bad_input(format!("url: {e}")))
}

fn dedup(kinds: Vec<CallEventKind>) -> Vec<CallEventKind> {
    let mut out = Vec::new();
    for k in kinds {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

async fn fields(
    state: &AppState,
    input: WebhookInput,
    current: Option<&WebhookRecord>,
) -> AppResult<WebhookFields> {
    let url = match (input.url, current) {
        (Some(u), _) => check_url(state, &u).await?,
        (None, Some(c)) => c.url.clone(),
        (None, None) => return Err(AppError::bad_input("url is required")),
    };
    let description = match input.description {
        Some(d) => check_text(Some(d), "description", MAX_DESCRIPTION)?,
        None => current.and_then(|c| c.description.clone()),
    };
    let events = match input.events {
        Some(e) => dedup(e),
        None => current.map(|c| c.events.clone()).unwrap_or_default(),
    };
    Ok(WebhookFields {
        url,
        description,
        events,
    })
}

/// The caller's tenant's endpoints.
pub async fn list(state: &AppState, caller: &Caller) -> AppResult<Vec<WebhookRecord>> {
    caller.require(Permission::ManageWebhooks)?;
    state.store.list_webhooks(caller.tenant_id).await
}

/// One endpoint of the caller's tenant.
pub async fn get(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<Option<WebhookRecord>> {
    caller.require(Permission::ManageWebhooks)?;
    state.store.get_webhook(caller.tenant_id, id).await
}

/// Registers an endpoint. BAD_USER_INPUT for a URL that is not http(s), carries credentials,
/// or (in production) resolves to a private address; past [`MAX_WEBHOOKS`].
pub async fn create(state: &AppState, caller: &Caller, input: WebhookInput) -> AppResult<Created> {
    caller.require(Permission::ManageWebhooks)?;
    let fields = fields(state, input, None).await?;
    if state.store.count_webhooks(caller.tenant_id).await? >= MAX_WEBHOOKS {
        return Err(AppError::bad_input(format!(
            "a tenant has at most {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let secret = new_secret();
    let webhook = state
        .store
        .create_webhook(caller.tenant_id, fields, secret.clone())
        .await?;
    tracing::info!(webhook = %webhook.id, tenant = %caller.tenant_id, url = %webhook.url, "webhook registered");
    Ok(Created { webhook, secret })
}

/// Changes an endpoint's URL, description or kinds (the fields given).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    input: WebhookInput,
) -> AppResult<WebhookRecord> {
    caller.require(Permission::ManageWebhooks)?;
    // The URL is checked (and resolved) before the row is locked.
    let current = state
        .store
        .get_webhook(caller.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    let fields = fields(state, input, Some(&current)).await?;
    state
        .store
        .update_webhook(caller.tenant_id, id, |_| Ok(fields))
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))
}

/// Deletes an endpoint with its delivery log.
pub async fn delete(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<WebhookRecord> {
    caller.require(Permission::ManageWebhooks)?;
    state
        .store
        .delete_webhook(caller.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))
}

/// Gives an endpoint a new secret (shown this once); the old one keeps signing, next to the new
/// one, for [`ROTATION_GRACE`].
pub async fn rotate_secret(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<Created> {
    caller.require(Permission::ManageWebhooks)?;
    let secret = new_secret();
    let until = Utc::now() + chrono::Duration::from_std(ROTATION_GRACE).unwrap_or_default();
    let webhook = state
        .store
        .rotate_webhook_secret(caller.tenant_id, id, secret.clone(), until)
        .await?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    Ok(Created { webhook, secret })
}

/// A page of an endpoint's deliveries, newest first, with every attempt of each.
pub struct DeliveryPage {
    pub deliveries: Vec<(DeliveryRecord, Vec<AttemptRecord>)>,
    pub has_next_page: bool,
}

/// An opaque cursor for a delivery in the list.
pub fn delivery_cursor(d: &DeliveryRecord) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        d.created_at.to_rfc3339(),
        d.id
    ))
}

fn parse_cursor(cursor: &str) -> AppResult<(DateTime<Utc>, Uuid)> {
    use base64::Engine;
    let bad = || AppError::bad_input("after is not a cursor of this list");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((
        DateTime::parse_from_rfc3339(t).map_err(|_| bad())?.into(),
        id.parse().map_err(|_| bad())?,
    ))
}

/// Lists an endpoint's deliveries (two statements per page whatever its size).
pub async fn deliveries(
    state: &AppState,
    caller: &Caller,
    webhook: Uuid,
    filter: DeliveryFilter,
    first: Option<i32>,
    after: Option<String>,
) -> AppResult<DeliveryPage> {
    caller.require(Permission::ManageWebhooks)?;
    let limit = match first {
        None => 20,
        Some(n) if n >= 1 && n as usize <= MAX_PAGE => n as usize,
        Some(_) => {
            return Err(AppError::bad_input(format!(
                "first must be between 1 and {MAX_PAGE}"
            )))
        }
    };
    let after = after.as_deref().map(parse_cursor).transpose()?;
    if state
        .store
        .get_webhook(caller.tenant_id, webhook)
        .await?
        .is_none()
    {
        return Err(AppError::not_found("webhook"));
    }
    let mut rows = state
        .store
        .list_deliveries(caller.tenant_id, webhook, &filter, after, limit)
        .await?;
    let has_next_page = rows.len() > limit;
    rows.truncate(limit);
    let ids: Vec<Uuid> = rows.iter().map(|d| d.id).collect();
    let mut attempts = state.store.attempts_of(caller.tenant_id, &ids).await?;
    let deliveries = rows
        .into_iter()
        .map(|d| {
            let (mine, rest): (Vec<_>, Vec<_>) =
                attempts.drain(..).partition(|a| a.delivery_id == d.id);
            attempts = rest;
            (d, mine)
        })
        .collect();
    Ok(DeliveryPage {
        deliveries,
        has_next_page,
    })
}

/// Sends a delivery again, whatever became of it: one more attempt now (and retries after a
/// failure while the schedule has attempts left).
pub async fn redeliver(
    state: &AppState,
    caller: &Caller,
    delivery: Uuid,
) -> AppResult<DeliveryRecord> {
    caller.require(Permission::ManageWebhooks)?;
    let d = state
        .store
        .redeliver(caller.tenant_id, delivery)
        .await?
        .ok_or_else(|| AppError::not_found("webhook delivery"))?;
    state.relay_wakeup.notify_one();
    Ok(d)
}

/// The message of a delivery: the event, and the call's summary fields (null once deleted).
pub fn message_body(d: &DeliveryRecord, call: Option<&CallRecord>, now: DateTime<Utc>) -> String {
    let call = call.map(|c| {
        serde_json::json!({
            "id": c.id,
            "externalId": c.external_id,
            "status": c.status,
            "direction": c.direction,
            "agent": c.agent,
            "startedAt": c.started_at,
            "durationMs": c.duration_ms,
            "language": c.language,
            "summary": c.summary,
            "sentimentScore": c.sentiment_score,
            "sentimentLabel": c.sentiment_label,
            "topics": c.topics,
            "tags": c.tags,
            "error": c.error,
            "createdAt": c.created_at,
            "completedAt": c.completed_at,
        })
    });
    serde_json::json!({
        "type": event_type(&d.event_kind),
        "timestamp": now,
        "data": {
            "event": {
                "id": d.event_seq.unwrap_or(d.event_id).to_string(),
                "kind": d.event_kind,
                "status": d.event_status,
                "callId": d.call_id,
                "createdAt": d.event_created_at,
            },
            "call": call,
        }
    })
    .to_string()
}

/// What became of an attempt, for the outbox row that carried it.
#[derive(Debug)]
pub enum Attempted {
    /// Accepted, or nothing left to send (the delivery or its endpoint is gone, or it was
    /// delivered already).
    Done,
    /// Failed; try again at this time.
    RetryAt(DateTime<Utc>, String),
    /// Failed, and the schedule has no attempt left.
    Dead(String),
}

/// Attempts one delivery: reads it (fixing its body on the first attempt), sends it signed with
/// no database lock held, and records the attempt.
pub async fn attempt(state: &AppState, tenant: Uuid, delivery: Uuid) -> anyhow::Result<Attempted> {
    let now = Utc::now();
    let Some(prepared) = state
        .store
        .prepare_webhook_attempt(tenant, delivery, |d, call| message_body(d, call, now))
        .await?
    else {
        return Ok(Attempted::Done);
    };
    use crate::domain::webhooks::DeliveryStatus;
    if matches!(
        prepared.delivery.status,
        DeliveryStatus::Delivered | DeliveryStatus::Dead
    ) {
        // A second row for a settled delivery (its lease ran out after the attempt was
        // recorded): nothing to send.
        return Ok(Attempted::Done);
    }
    let d = &prepared.delivery;
    let timestamp = Utc::now().timestamp();
    let secrets = prepared.webhook.signing_secrets(Utc::now());
    let headers = [
        ("webhook-id", d.message_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            signature_header(&secrets, &d.message_id, timestamp, &prepared.body),
        ),
    ];
    let attempted_at = Utc::now();
    let sent = state
        .webhooks
        .post(&prepared.webhook.url, &headers, prepared.body.clone())
        .await;
    let (status, latency, error, outcome_label) = match &sent {
        Ok(a) if (200..300).contains(&a.status) => {
            (Some(a.status as i32), a.latency, None, "delivered")
        }
        Ok(a) => (
            Some(a.status as i32),
            a.latency,
            Some(format!("the endpoint answered {}", a.status)),
            "failed",
        ),
        Err(e @ WebhookSendError::Refused(_)) => {
            (None, Duration::ZERO, Some(e.to_string()), "refused")
        }
        Err(WebhookSendError::Failed(e, took)) => (None, *took, Some(e.clone()), "failed"),
    };
    state
        .metrics
        .webhook_attempts
        .with_label_values(&[outcome_label])
        .inc();
    let schedule = RetrySchedule {
        base: state.settings.webhook_retry_base,
        max_attempts: state.settings.webhook_max_attempts,
    };
    let attempts = d.attempts.max(0) as u32 + 1;
    let next_retry_at = match error {
        None => None,
        Some(_) => schedule
            .delay(attempts)
            .map(|delay| Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()),
    };
    let outcome = AttemptOutcome {
        attempted_at,
        response_status: status,
        latency_ms: latency.as_millis() as i64,
        error: error.clone(),
        succeeded: error.is_none(),
        next_retry_at,
    };
    state
        .store
        .record_webhook_attempt(tenant, delivery, &outcome)
        .await?;
    Ok(match (error, next_retry_at) {
        (None, _) => {
            if d.delivered_at.is_none() {
                let since = (Utc::now() - d.event_created_at)
                    .to_std()
                    .unwrap_or_default();
                state
                    .metrics
                    .webhook_delivery_seconds
                    .observe(since.as_secs_f64());
            }
            tracing::debug!(delivery = %delivery, message = %d.message_id, "webhook delivered");
            Attempted::Done
        }
        (Some(e), Some(at)) => Attempted::RetryAt(at, e),
        (Some(e), None) => {
            tracing::warn!(delivery = %delivery, webhook = %prepared.webhook.id, tenant = %tenant, error = %e, attempts, "webhook delivery dead after its last attempt");
            Attempted::Dead(e)
        }
    })
}
