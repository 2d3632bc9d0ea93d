//! A tenant's webhook endpoints, their deliveries and every attempt: managed by its admins,
//! attempted by the relay (one transaction before the request, to read the delivery and fix its
//! body, and one after, to record the attempt: no lock is held while the endpoint answers).
//! Deliveries are made as events are sequenced (`system::sequence_pending`).

use chrono::{DateTime, Utc};
use entities::{calls, outbox, webhook_attempts, webhook_deliveries, webhooks};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use super::events::new_outbox;
use super::Store;
use crate::domain::webhooks::{
    AttemptOutcome, AttemptRecord, DeliveryRecord, DeliveryStatus, WebhookRecord,
};
use crate::domain::{CallEventKind, CallRecord};
use crate::error::AppResult;

/// The outbox destination of webhook deliveries; the payload names the tenant and the delivery.
pub const DEST_WEBHOOK: &str = "webhook";

impl From<webhooks::Model> for WebhookRecord {
    fn from(m: webhooks::Model) -> Self {
        let events: Vec<String> = serde_json::from_value(m.events).unwrap_or_default();
        Self {
            id: m.id,
            tenant_id: m.tenant_id,
            url: m.url,
            description: m.description,
            events: events
                .iter()
                .filter_map(|k| CallEventKind::ALL.into_iter().find(|v| v.as_str() == k))
                .collect(),
            secret: m.secret,
            previous_secret: m.previous_secret,
            previous_secret_expires_at: m.previous_secret_expires_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<webhook_deliveries::Model> for DeliveryRecord {
    fn from(m: webhook_deliveries::Model) -> Self {
        Self {
            id: m.id,
            tenant_id: m.tenant_id,
            webhook_id: m.webhook_id,
            event_id: m.event_id,
            event_seq: m.event_seq,
            event_kind: m.event_kind,
            event_status: m.event_status,
            call_id: m.call_id,
            event_created_at: m.event_created_at,
            message_id: m.message_id,
            body: m.body,
            status: DeliveryStatus::parse(&m.status).unwrap_or(DeliveryStatus::Pending),
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at,
            last_response_status: m.last_response_status,
            last_error: m.last_error,
            delivered_at: m.delivered_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl From<webhook_attempts::Model> for AttemptRecord {
    fn from(m: webhook_attempts::Model) -> Self {
        Self {
            id: m.id,
            delivery_id: m.delivery_id,
            attempted_at: m.attempted_at,
            response_status: m.response_status,
            latency_ms: m.latency_ms,
            error: m.error,
            succeeded: m.succeeded,
            next_retry_at: m.next_retry_at,
        }
    }
}

/// An endpoint's fields, checked by the service.
#[derive(Debug, Clone)]
pub struct WebhookFields {
    pub url: String,
    pub description: Option<String>,
    pub events: Vec<CallEventKind>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub statuses: Vec<DeliveryStatus>,
    pub call_id: Option<Uuid>,
    pub kinds: Vec<CallEventKind>,
}

/// What an attempt needs, read (and the body fixed) before the request goes out.
#[derive(Debug, Clone)]
pub struct PreparedAttempt {
    pub delivery: DeliveryRecord,
    pub webhook: WebhookRecord,
    pub body: String,
}

fn kinds_json(kinds: &[CallEventKind]) -> serde_json::Value {
    serde_json::json!(kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>())
}

/// A new delivery of an event to an endpoint, and its outbox row (SQLite's half of the
/// sequencing; Postgres does it in `voicegraph_sequence_pending`).
pub(super) fn new_delivery(
    webhook: Uuid,
    event: &entities::call_events::Model,
    seq: i64,
    now: DateTime<Utc>,
) -> (webhook_deliveries::ActiveModel, outbox::ActiveModel) {
    let id = Uuid::new_v4();
    let delivery = webhook_deliveries::ActiveModel {
        id: Set(id),
        tenant_id: Set(event.tenant_id),
        webhook_id: Set(webhook),
        event_id: Set(event.id),
        event_seq: Set(Some(seq)),
        event_kind: Set(event.kind.clone()),
        event_status: Set(event.status.clone()),
        call_id: Set(event.call_id),
        event_created_at: Set(event.created_at),
        message_id: Set(format!("msg_{}", Uuid::new_v4().simple())),
        body: Set(None),
        status: Set(DeliveryStatus::Pending.as_str().into()),
        attempts: Set(0),
        next_attempt_at: Set(None),
        last_response_status: Set(None),
        last_error: Set(None),
        delivered_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let payload = serde_json::json!({ "tenant_id": event.tenant_id, "delivery_id": id });
    let mut row =
        outbox::ActiveModel::from(new_outbox(DEST_WEBHOOK, payload, now, now)).reset_all();
    row.id = sea_orm::ActiveValue::NotSet;
    (delivery, row)
}

/// Whether an endpoint taking `kinds` takes an event of `kind`.
pub(super) fn takes(kinds: &serde_json::Value, kind: &str) -> bool {
    match kinds.as_array() {
        Some(list) => list.is_empty() || list.iter().any(|k| k.as_str() == Some(kind)),
        None => false,
    }
}

impl Store {
    /// A tenant's endpoints, oldest first.
    pub async fn list_webhooks(&self, tenant: Uuid) -> AppResult<Vec<WebhookRecord>> {
        let select = webhooks::Entity::find()
            .filter(webhooks::Column::TenantId.eq(tenant))
            .order_by_asc(webhooks::Column::CreatedAt)
            .order_by_asc(webhooks::Column::Id);
        Ok(self
            .tenant_read(tenant, select)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// One endpoint of the tenant.
    pub async fn get_webhook(&self, tenant: Uuid, id: Uuid) -> AppResult<Option<WebhookRecord>> {
        let select = webhooks::Entity::find_by_id(id).filter(webhooks::Column::TenantId.eq(tenant));
        Ok(self
            .tenant_read(tenant, select)
            .await?
            .into_iter()
            .next()
            .map(Into::into))
    }

    /// How many endpoints a tenant has.
    pub async fn count_webhooks(&self, tenant: Uuid) -> AppResult<u64> {
        let txn = self.tenant_txn(tenant).await?;
        let n = webhooks::Entity::find()
            .filter(webhooks::Column::TenantId.eq(tenant))
            .count(&txn)
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    /// Registers an endpoint with its signing secret.
    pub async fn create_webhook(
        &self,
        tenant: Uuid,
        fields: WebhookFields,
        secret: String,
    ) -> AppResult<WebhookRecord> {
        let now = Utc::now();
        let txn = self.tenant_txn(tenant).await?;
        let row = webhooks::ActiveModel {
            id: Set(Uuid::new_v4()),
            tenant_id: Set(tenant),
            url: Set(fields.url),
            description: Set(fields.description),
            events: Set(kinds_json(&fields.events)),
            secret: Set(secret),
            previous_secret: Set(None),
            previous_secret_expires_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(row.into())
    }

    /// Changes an endpoint with what `change` makes of it; `None` when the tenant has none such.
    pub async fn update_webhook(
        &self,
        tenant: Uuid,
        id: Uuid,
        change: impl FnOnce(&WebhookRecord) -> AppResult<WebhookFields>,
    ) -> AppResult<Option<WebhookRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(current) = locked_webhook(&txn, tenant, id).await? else {
            return Ok(None);
        };
        let fields = change(&current.clone().into())?;
        let mut row: webhooks::ActiveModel = current.into();
        row.url = Set(fields.url);
        row.description = Set(fields.description);
        row.events = Set(kinds_json(&fields.events));
        row.updated_at = Set(Utc::now());
        let row = row.update(&txn).await?;
        txn.commit().await?;
        Ok(Some(row.into()))
    }

    /// Gives an endpoint a new secret; the old one keeps signing until `previous_until`.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: Uuid,
        id: Uuid,
        secret: String,
        previous_until: DateTime<Utc>,
    ) -> AppResult<Option<WebhookRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(current) = locked_webhook(&txn, tenant, id).await? else {
            return Ok(None);
        };
        let previous = current.secret.clone();
        let mut row: webhooks::ActiveModel = current.into();
        row.previous_secret = Set(Some(previous));
        row.previous_secret_expires_at = Set(Some(previous_until));
        row.secret = Set(secret);
        row.updated_at = Set(Utc::now());
        let row = row.update(&txn).await?;
        txn.commit().await?;
        Ok(Some(row.into()))
    }

    /// Deletes an endpoint with its deliveries and their attempts; deliveries still queued are
    /// dropped when the relay reaches them.
    pub async fn delete_webhook(&self, tenant: Uuid, id: Uuid) -> AppResult<Option<WebhookRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(current) = locked_webhook(&txn, tenant, id).await? else {
            return Ok(None);
        };
        let deliveries: Vec<Uuid> = webhook_deliveries::Entity::find()
            .select_only()
            .column(webhook_deliveries::Column::Id)
            .filter(webhook_deliveries::Column::TenantId.eq(tenant))
            .filter(webhook_deliveries::Column::WebhookId.eq(id))
            .into_tuple()
            .all(&txn)
            .await?;
        for chunk in deliveries.chunks(500) {
            webhook_attempts::Entity::delete_many()
                .filter(webhook_attempts::Column::TenantId.eq(tenant))
                .filter(webhook_attempts::Column::DeliveryId.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?;
        }
        webhook_deliveries::Entity::delete_many()
            .filter(webhook_deliveries::Column::TenantId.eq(tenant))
            .filter(webhook_deliveries::Column::WebhookId.eq(id))
            .exec(&txn)
            .await?;
        webhooks::Entity::delete_many()
            .filter(webhooks::Column::TenantId.eq(tenant))
            .filter(webhooks::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Some(current.into()))
    }

    /// A page of an endpoint's deliveries, newest first: up to `limit + 1` after the cursor
    /// `(created_at, id)`, so the caller learns whether there are more.
    pub async fn list_deliveries(
        &self,
        tenant: Uuid,
        webhook: Uuid,
        filter: &DeliveryFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: usize,
    ) -> AppResult<Vec<DeliveryRecord>> {
        use webhook_deliveries::Column as C;
        let mut select = webhook_deliveries::Entity::find()
            .filter(C::TenantId.eq(tenant))
            .filter(C::WebhookId.eq(webhook));
        if !filter.statuses.is_empty() {
            select = select.filter(C::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if !filter.kinds.is_empty() {
            select = select.filter(C::EventKind.is_in(filter.kinds.iter().map(|k| k.as_str())));
        }
        if let Some(call) = filter.call_id {
            select = select.filter(C::CallId.eq(call));
        }
        if let Some((t, id)) = after {
            select = select.filter(
                Condition::any()
                    .add(C::CreatedAt.lt(t))
                    .add(Condition::all().add(C::CreatedAt.eq(t)).add(C::Id.lt(id))),
            );
        }
        let select = select
            .order_by_desc(C::CreatedAt)
            .order_by_desc(C::Id)
            .limit(limit as u64 + 1);
        Ok(self
            .tenant_read(tenant, select)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The attempts at each of `deliveries`, oldest first: one statement however many.
    pub async fn attempts_of(
        &self,
        tenant: Uuid,
        deliveries: &[Uuid],
    ) -> AppResult<Vec<AttemptRecord>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let select = webhook_attempts::Entity::find()
            .filter(webhook_attempts::Column::TenantId.eq(tenant))
            .filter(webhook_attempts::Column::DeliveryId.is_in(deliveries.iter().copied()))
            .order_by_asc(webhook_attempts::Column::Id);
        Ok(self
            .tenant_read(tenant, select)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Reads what an attempt at a delivery needs, and fixes its body with `body` on the first
    /// attempt (every attempt sends the same bytes). `None` when the delivery or its endpoint is
    /// gone.
    pub async fn prepare_webhook_attempt(
        &self,
        tenant: Uuid,
        delivery: Uuid,
        body: impl FnOnce(&DeliveryRecord, Option<&CallRecord>) -> String,
    ) -> AppResult<Option<PreparedAttempt>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(row) = webhook_deliveries::Entity::find_by_id(delivery)
            .filter(webhook_deliveries::Column::TenantId.eq(tenant))
            .one(&txn)
            .await?
        else {
            txn.commit().await?;
            return Ok(None);
        };
        let Some(webhook) = webhooks::Entity::find_by_id(row.webhook_id)
            .filter(webhooks::Column::TenantId.eq(tenant))
            .one(&txn)
            .await?
        else {
            txn.commit().await?;
            return Ok(None);
        };
        let record: DeliveryRecord = row.into();
        let call: Option<CallRecord> = match &record.body {
            Some(_) => None,
            None => calls::Entity::find_by_id(record.call_id)
                .filter(calls::Column::TenantId.eq(tenant))
                .one(&txn)
                .await?
                .map(Into::into),
        };
        // The reads end here: a transaction that writes after reading cannot wait for SQLite's
        // write lock, it fails at once when another writer holds it.
        txn.commit().await?;
        let body = match &record.body {
            Some(b) => b.clone(),
            None => {
                let b = body(&record, call.as_ref());
                // Fixed once: the first attempt's body, whichever attempt gets there first.
                let txn = self.tenant_txn(tenant).await?;
                let fixed = webhook_deliveries::Entity::update_many()
                    .col_expr(webhook_deliveries::Column::Body, Expr::value(b.clone()))
                    .filter(webhook_deliveries::Column::Id.eq(delivery))
                    .filter(webhook_deliveries::Column::TenantId.eq(tenant))
                    .filter(webhook_deliveries::Column::Body.is_null())
                    .exec(&txn)
                    .await?
                    .rows_affected
                    == 1;
                let b = if fixed {
                    b
                } else {
                    webhook_deliveries::Entity::find_by_id(delivery)
                        .filter(webhook_deliveries::Column::TenantId.eq(tenant))
                        .one(&txn)
                        .await?
                        .and_then(|d| d.body)
                        .unwrap_or(b)
                };
                txn.commit().await?;
                b
            }
        };
        Ok(Some(PreparedAttempt {
            delivery: DeliveryRecord {
                body: Some(body.clone()),
                ..record
            },
            webhook: webhook.into(),
            body,
        }))
    }

    /// Records an attempt and what it made of the delivery: `DELIVERED` after a success, else
    /// `RETRYING` with the next attempt's time, or `DEAD` when there is none.
    pub async fn record_webhook_attempt(
        &self,
        tenant: Uuid,
        delivery: Uuid,
        outcome: &AttemptOutcome,
    ) -> AppResult<()> {
        let status = if outcome.succeeded {
            DeliveryStatus::Delivered
        } else if outcome.next_retry_at.is_some() {
            DeliveryStatus::Retrying
        } else {
            DeliveryStatus::Dead
        };
        let txn = self.tenant_txn(tenant).await?;
        webhook_attempts::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
            tenant_id: Set(tenant),
            delivery_id: Set(delivery),
            attempted_at: Set(outcome.attempted_at),
            response_status: Set(outcome.response_status),
            latency_ms: Set(outcome.latency_ms),
            error: Set(outcome.error.clone()),
            succeeded: Set(outcome.succeeded),
            next_retry_at: Set(outcome.next_retry_at),
        }
        .insert(&txn)
        .await?;
        use webhook_deliveries::Column as C;
        let mut update = webhook_deliveries::Entity::update_many()
            .col_expr(C::Status, Expr::value(status.as_str()))
            .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
            .col_expr(C::NextAttemptAt, Expr::value(outcome.next_retry_at))
            .col_expr(C::LastResponseStatus, Expr::value(outcome.response_status))
            .col_expr(C::LastError, Expr::value(outcome.error.clone()))
            .col_expr(C::UpdatedAt, Expr::value(Utc::now()));
        if outcome.succeeded {
            update = update.col_expr(C::DeliveredAt, Expr::value(outcome.attempted_at));
        }
        update
            .filter(C::Id.eq(delivery))
            .filter(C::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Queues a delivery again (`PENDING`, through a new outbox row): the same message, with a
    /// fresh timestamp and signature. `None` when the tenant has no such delivery.
    pub async fn redeliver(
        &self,
        tenant: Uuid,
        delivery: Uuid,
    ) -> AppResult<Option<DeliveryRecord>> {
        use webhook_deliveries::Column as C;
        let now = Utc::now();
        let txn = self.tenant_txn(tenant).await?;
        let changed = webhook_deliveries::Entity::update_many()
            .col_expr(C::Status, Expr::value(DeliveryStatus::Pending.as_str()))
            .col_expr(C::NextAttemptAt, Expr::value(Some(now)))
            .col_expr(C::UpdatedAt, Expr::value(now))
            .filter(C::Id.eq(delivery))
            .filter(C::TenantId.eq(tenant))
            .exec(&txn)
            .await?
            .rows_affected;
        if changed == 0 {
            txn.commit().await?;
            return Ok(None);
        }
        let row = webhook_deliveries::Entity::find_by_id(delivery)
            .filter(C::TenantId.eq(tenant))
            .one(&txn)
            .await?;
        let payload = serde_json::json!({ "tenant_id": tenant, "delivery_id": delivery });
        let mut outbox_row =
            outbox::ActiveModel::from(new_outbox(DEST_WEBHOOK, payload, now, now)).reset_all();
        outbox_row.id = sea_orm::ActiveValue::NotSet;
        outbox_row.insert(&txn).await?;
        txn.commit().await?;
        Ok(row.map(Into::into))
    }
}

/// An endpoint of the tenant, its row locked for the rest of the transaction by writing it first.
async fn locked_webhook<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<webhooks::Model>, sea_orm::DbErr> {
    let locked = webhooks::Entity::update_many()
        .col_expr(webhooks::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(webhooks::Column::Id.eq(id))
        .filter(webhooks::Column::TenantId.eq(tenant))
        .exec(txn)
        .await?
        .rows_affected
        > 0;
    if !locked {
        return Ok(None);
    }
    webhooks::Entity::find_by_id(id)
        .filter(webhooks::Column::TenantId.eq(tenant))
        .one(txn)
        .await
}
