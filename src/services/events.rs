//! Call events: written with an outbox row in the caller's transaction, sequenced by the relay in
//! commit order, and streamed to subscribers — replay from the database, then live, with gaps
//! (lag, lost messages) filled from the database so that no subscriber misses or repeats one.

use std::time::Duration;

use async_stream::try_stream;
use chrono::Utc;
use entities::{call_events, outbox, sequencer};
use futures::Stream;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, TransactionTrait,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{CallStatus, EventEnvelope, JobMessage};
use crate::error::AppResult;
use crate::state::AppState;

/// Outbox destinations.
pub const DEST_JOBS: &str = "jobs";
pub const DEST_EVENTS: &str = "events";
pub const DEST_BLOB_DELETE: &str = "blob_delete";

fn outbox_row(destination: &str, payload: serde_json::Value) -> outbox::ActiveModel {
    let now = Utc::now();
    outbox::ActiveModel {
        destination: Set(destination.into()),
        payload: Set(payload),
        created_at: Set(now),
        available_at: Set(now),
        attempts: Set(0),
        last_error: Set(None),
        sent_at: Set(None),
        ..Default::default()
    }
}

/// Records an event and its outbox row; call inside the transaction that made the change.
pub async fn record_event<C: ConnectionTrait>(
    txn: &C,
    tenant_id: Uuid,
    call_id: Uuid,
    kind: &str,
    status: CallStatus,
    payload: Option<serde_json::Value>,
) -> AppResult<i64> {
    let event = call_events::ActiveModel {
        seq: Set(None),
        tenant_id: Set(tenant_id),
        call_id: Set(call_id),
        kind: Set(kind.into()),
        status: Set(status.as_str().into()),
        payload: Set(payload),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    outbox_row(DEST_EVENTS, serde_json::json!({ "event_id": event.id }))
        .insert(txn)
        .await?;
    Ok(event.id)
}

/// Queues an analysis job through the outbox; call inside the transaction that made the change.
pub async fn enqueue_job<C: ConnectionTrait>(txn: &C, message: &JobMessage) -> AppResult<()> {
    outbox_row(
        DEST_JOBS,
        serde_json::to_value(message).map_err(anyhow::Error::from)?,
    )
    .insert(txn)
    .await?;
    Ok(())
}

/// Queues blob deletions through the outbox, so they happen even if this process dies.
pub async fn enqueue_blob_delete<C: ConnectionTrait>(txn: &C, keys: Vec<String>) -> AppResult<()> {
    if !keys.is_empty() {
        outbox_row(DEST_BLOB_DELETE, serde_json::json!({ "keys": keys }))
            .insert(txn)
            .await?;
    }
    Ok(())
}

/// Queues blob deletions through the outbox for no earlier than `at` (e.g. once the signed URL
/// that could write them has expired).
pub async fn enqueue_blob_delete_at<C: ConnectionTrait>(
    txn: &C,
    keys: Vec<String>,
    at: chrono::DateTime<Utc>,
) -> AppResult<()> {
    if !keys.is_empty() {
        let mut row = outbox_row(DEST_BLOB_DELETE, serde_json::json!({ "keys": keys }));
        row.available_at = Set(at);
        row.insert(txn).await?;
    }
    Ok(())
}

/// Gives every committed, unsequenced event the next positions of the global sequence. The
/// sequencer row is locked first, so concurrent relays commit in the order of the numbers they
/// hand out and a reader never sees position n+1 before n.
pub async fn sequence_pending(db: &DatabaseConnection) -> anyhow::Result<usize> {
    let txn = db.begin().await?;
    sequencer::Entity::update_many()
        .col_expr(
            sequencer::Column::Value,
            Expr::col(sequencer::Column::Value),
        )
        .filter(sequencer::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    let pending = call_events::Entity::find()
        .filter(call_events::Column::Seq.is_null())
        .order_by_asc(call_events::Column::Id)
        .limit(1000)
        .all(&txn)
        .await?;
    if pending.is_empty() {
        txn.commit().await?;
        return Ok(0);
    }
    let current = sequencer::Entity::find_by_id(1)
        .one(&txn)
        .await?
        .map(|s| s.value)
        .unwrap_or(0);
    for (i, event) in pending.iter().enumerate() {
        call_events::Entity::update_many()
            .col_expr(
                call_events::Column::Seq,
                Expr::value(current + 1 + i as i64),
            )
            .filter(call_events::Column::Id.eq(event.id))
            .exec(&txn)
            .await?;
    }
    sequencer::Entity::update_many()
        .col_expr(
            sequencer::Column::Value,
            Expr::value(current + pending.len() as i64),
        )
        .filter(sequencer::Column::Id.eq(1))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(pending.len())
}

/// The last position handed out; every position up to it is committed and visible.
pub async fn max_seq<C: ConnectionTrait>(db: &C) -> anyhow::Result<i64> {
    Ok(sequencer::Entity::find_by_id(1)
        .one(db)
        .await?
        .map(|s| s.value)
        .unwrap_or(0))
}

pub fn envelope(m: &call_events::Model) -> Option<EventEnvelope> {
    Some(EventEnvelope {
        seq: m.seq?,
        id: m.id,
        tenant_id: m.tenant_id,
        call_id: m.call_id,
        kind: m.kind.clone(),
        status: CallStatus::parse(&m.status)?,
        at: m.created_at,
    })
}

/// Which events a subscriber wants, within its tenant.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub call_id: Option<Uuid>,
    pub kinds: Vec<String>,
    pub statuses: Vec<CallStatus>,
}

impl EventFilter {
    pub fn matches(&self, tenant_id: Uuid, e: &EventEnvelope) -> bool {
        e.tenant_id == tenant_id
            && self.call_id.is_none_or(|c| c == e.call_id)
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.statuses.is_empty() || self.statuses.contains(&e.status))
    }
}

/// What a subscriber watches, once its arguments are checked.
#[derive(Debug, Clone)]
pub struct Watch {
    pub tenant: Uuid,
    pub filter: EventFilter,
    /// Replay every event after this position first.
    pub after: Option<i64>,
    /// Without `after`, replay the call's own events first (a call has few), so that
    /// subscribe-then-act never loses an event.
    pub replay_call: bool,
}

/// Sequenced events of a tenant in (after, upto], in order, matching the filter.
pub async fn events_between(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    filter: &EventFilter,
    after: i64,
    upto: i64,
) -> anyhow::Result<Vec<EventEnvelope>> {
    sequenced(db, Some((tenant_id, filter)), after, upto).await
}

/// Sequenced events of every tenant in (after, upto], in order: the instance hub's read, the one
/// cross-tenant read of events.
pub async fn events_between_all(
    db: &DatabaseConnection,
    after: i64,
    upto: i64,
) -> anyhow::Result<Vec<EventEnvelope>> {
    sequenced(db, None, after, upto).await
}

async fn sequenced(
    db: &DatabaseConnection,
    scope: Option<(Uuid, &EventFilter)>,
    after: i64,
    upto: i64,
) -> anyhow::Result<Vec<EventEnvelope>> {
    let mut out = Vec::new();
    let mut from = after;
    loop {
        let mut q = call_events::Entity::find()
            .filter(call_events::Column::Seq.gt(from))
            .filter(call_events::Column::Seq.lte(upto));
        if let Some((tenant_id, filter)) = scope {
            q = q.filter(call_events::Column::TenantId.eq(tenant_id));
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
        }
        let page = q
            .order_by_asc(call_events::Column::Seq)
            .limit(500)
            .all(db)
            .await?;
        let full = page.len() == 500;
        from = page.last().and_then(|m| m.seq).unwrap_or(upto);
        out.extend(page.iter().filter_map(envelope));
        if !full {
            return Ok(out);
        }
    }
}

/// A subscriber's stream on its own (without a shared group): what `watch` asks to replay, then
/// the instance hub's events from the position it joined at.
pub fn stream(
    state: AppState,
    watch: Watch,
) -> impl Stream<Item = anyhow::Result<EventEnvelope>> + Send + 'static {
    try_stream! {
        let (position, mut hub) = state.hub.join();
        let from = watch.after.or(watch.replay_call.then_some(0));
        if let Some(from) = from.filter(|f| *f < position) {
            for e in events_between(&state.db, watch.tenant, &watch.filter, from, position).await? {
                yield e;
            }
        }
        let mut last = position.max(watch.after.unwrap_or(0));
        loop {
            let item = match hub.recv().await {
                Ok(item) => item,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            };
            if item.seq <= last {
                continue;
            }
            if item.prev > last {
                for e in events_between(&state.db, watch.tenant, &watch.filter, last, item.prev).await? {
                    yield e;
                }
            }
            if let Some(e) = &item.event {
                if watch.filter.matches(watch.tenant, e) {
                    yield e.clone();
                }
            }
            last = item.seq;
        }
    }
}

/// Publishes this instance's view of the last committed position, so subscribers notice events
/// that never reached them live (another process's relay, a message lost by the bus).
pub async fn run_watermark(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match max_seq(&state.db).await {
            Ok(top) => {
                state.watermark.send_if_modified(|v| {
                    let changed = top > *v;
                    *v = (*v).max(top);
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "reading the event watermark failed"),
        }
    }
}

/// The events of some calls (for the `events` field through a DataLoader), oldest first.
pub async fn events_of_calls(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    call_ids: &[Uuid],
) -> anyhow::Result<Vec<call_events::Model>> {
    Ok(call_events::Entity::find()
        .filter(call_events::Column::TenantId.eq(tenant_id))
        .filter(call_events::Column::CallId.is_in(call_ids.iter().copied()))
        .filter(call_events::Column::Seq.is_not_null())
        .order_by_asc(call_events::Column::Seq)
        .all(db)
        .await?)
}
