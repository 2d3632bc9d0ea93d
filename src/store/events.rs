//! Call events and the outbox rows that carry them: written inside the transaction of the change
//! they record (only the store's own methods call these), sequenced in commit order, read back
//! by position for subscribers and per call for the `events` field.

use chrono::{DateTime, Utc};
use entities::{call_events, outbox, sequencer};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::Store;
use crate::domain::{CallStatus, EventEnvelope, EventFilter, JobMessage};
use crate::error::AppResult;
use crate::telemetry::TRACEPARENT;

/// Outbox destinations.
pub const DEST_JOBS: &str = "jobs";
pub const DEST_EVENTS: &str = "events";
pub const DEST_BLOB_DELETE: &str = "blob_delete";

/// A new outbox row, due at `at`; its id (0 here) is the database's to give.
pub(super) fn new_outbox(
    destination: &str,
    payload: serde_json::Value,
    now: DateTime<Utc>,
    at: DateTime<Utc>,
) -> outbox::Model {
    outbox::Model {
        id: 0,
        destination: destination.into(),
        payload,
        created_at: now,
        available_at: at,
        attempts: 0,
        last_error: None,
        sent_at: None,
        dead_at: None,
        leased_until: None,
    }
}

/// A new, unsequenced event; its id (0 here) is the database's to give. When traces are
/// exported, its payload keeps the trace context of the span that writes it (`traceparent`), so
/// that the relay's publication, and whoever reads the event from the database later, continue
/// that trace.
pub(super) fn new_event(
    tenant_id: Uuid,
    call_id: Uuid,
    kind: &str,
    status: CallStatus,
    payload: Option<serde_json::Value>,
    now: DateTime<Utc>,
) -> call_events::Model {
    let payload = match crate::telemetry::current_traceparent() {
        None => payload,
        Some(tp) => {
            let mut p = payload.unwrap_or_else(|| serde_json::json!({}));
            if let Some(object) = p.as_object_mut() {
                object.insert(TRACEPARENT.into(), tp.into());
            }
            Some(p)
        }
    };
    call_events::Model {
        id: 0,
        seq: None,
        tenant_id,
        call_id,
        kind: kind.into(),
        status: status.as_str().into(),
        payload,
        created_at: now,
    }
}

fn outbox_row(destination: &str, payload: serde_json::Value) -> outbox::ActiveModel {
    let now = Utc::now();
    let mut row = outbox::ActiveModel::from(new_outbox(destination, payload, now, now)).reset_all();
    row.id = sea_orm::ActiveValue::NotSet;
    row
}

/// Records an event and its outbox row, inside the transaction that made the change.
pub(super) async fn record_event<C: ConnectionTrait>(
    txn: &C,
    tenant_id: Uuid,
    call_id: Uuid,
    kind: &str,
    status: CallStatus,
    payload: Option<serde_json::Value>,
) -> AppResult<i64> {
    let mut event = call_events::ActiveModel::from(new_event(
        tenant_id,
        call_id,
        kind,
        status,
        payload,
        Utc::now(),
    ))
    .reset_all();
    event.id = sea_orm::ActiveValue::NotSet;
    let event = event.insert(txn).await?;
    outbox_row(DEST_EVENTS, serde_json::json!({ "event_id": event.id }))
        .insert(txn)
        .await?;
    Ok(event.id)
}

/// Queues an analysis job through the outbox, inside the transaction that made the change.
pub(super) async fn enqueue_job<C: ConnectionTrait>(
    txn: &C,
    message: &JobMessage,
) -> AppResult<()> {
    outbox_row(
        DEST_JOBS,
        serde_json::to_value(message).map_err(anyhow::Error::from)?,
    )
    .insert(txn)
    .await?;
    Ok(())
}

/// Queues blob deletions through the outbox, so they happen even if this process dies; for no
/// earlier than `at` when given (e.g. once the signed URL that could write them has expired).
pub(super) async fn enqueue_blob_delete<C: ConnectionTrait>(
    txn: &C,
    keys: Vec<String>,
    at: Option<DateTime<Utc>>,
) -> AppResult<()> {
    if !keys.is_empty() {
        let mut row = outbox_row(DEST_BLOB_DELETE, serde_json::json!({ "keys": keys }));
        if let Some(at) = at {
            row.available_at = Set(at);
        }
        row.insert(txn).await?;
    }
    Ok(())
}

/// A sequenced event as subscribers see it (`None` while it has no position yet).
pub(super) fn envelope(m: &call_events::Model) -> Option<EventEnvelope> {
    Some(EventEnvelope {
        seq: m.seq?,
        id: m.id,
        tenant_id: m.tenant_id,
        call_id: m.call_id,
        kind: m.kind.clone(),
        status: CallStatus::parse(&m.status)?,
        at: m.created_at,
        analysis_id: m
            .payload
            .as_ref()
            .and_then(|p| p.get("analysisId"))
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok()),
        traceparent: m
            .payload
            .as_ref()
            .and_then(|p| p.get(TRACEPARENT))
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

/// Rows read per statement when replaying a range of positions.
pub(super) const REPLAY_PAGE: u64 = 500;

impl Store {
    /// Sequenced events of a tenant in (after, upto], in order, matching the filter.
    pub async fn events_between(
        &self,
        tenant: Uuid,
        filter: &EventFilter,
        after: i64,
        upto: i64,
    ) -> anyhow::Result<Vec<EventEnvelope>> {
        let mut out = Vec::new();
        let mut from = after;
        let txn = self.tenant_txn(tenant).await?;
        loop {
            let mut q = call_events::Entity::find()
                .filter(call_events::Column::Seq.gt(from))
                .filter(call_events::Column::Seq.lte(upto))
                .filter(call_events::Column::TenantId.eq(tenant));
            if let Some(call) = filter.call_id {
                q = q.filter(call_events::Column::CallId.eq(call));
            }
            if !filter.kinds.is_empty() {
                q = q.filter(call_events::Column::Kind.is_in(filter.kinds.clone()));
            }
            if !filter.statuses.is_empty() {
                q = q.filter(
                    call_events::Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())),
                );
            }
            let page = q
                .order_by_asc(call_events::Column::Seq)
                .limit(REPLAY_PAGE)
                .all(&txn)
                .await?;
            let full = page.len() as u64 == REPLAY_PAGE;
            from = page.last().and_then(|m| m.seq).unwrap_or(upto);
            out.extend(page.iter().filter_map(envelope));
            if !full {
                txn.commit().await?;
                return Ok(out);
            }
        }
    }

    /// The sequenced events of some calls of a tenant (for the `events` field through a
    /// DataLoader), oldest first.
    pub async fn events_of_calls(
        &self,
        tenant: Uuid,
        call_ids: &[Uuid],
    ) -> anyhow::Result<Vec<EventEnvelope>> {
        let select = call_events::Entity::find()
            .filter(call_events::Column::TenantId.eq(tenant))
            .filter(call_events::Column::CallId.is_in(call_ids.iter().copied()))
            .filter(call_events::Column::Seq.is_not_null())
            .order_by_asc(call_events::Column::Seq);
        let rows = self.tenant_read(tenant, select).await?;
        Ok(rows.iter().filter_map(envelope).collect())
    }

    /// The last position handed out; every position up to it is committed and visible.
    pub async fn max_seq(&self) -> anyhow::Result<i64> {
        Ok(sequencer::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .map(|s| s.value)
            .unwrap_or(0))
    }
}
