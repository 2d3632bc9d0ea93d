//! The outbox relay: sequences new events in commit order, then delivers outbox rows — jobs to
//! the queue, events to the publisher, blob deletions to the store — marking each sent only after
//! its destination accepted it. Failed deliveries back off and are tried again.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use entities::{call_events, outbox};
use futures::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::{ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use tokio_util::sync::CancellationToken;

use crate::domain::{EventEnvelope, JobMessage};
use crate::services::events::{
    envelope, sequence_pending, DEST_BLOB_DELETE, DEST_EVENTS, DEST_JOBS,
};
use crate::state::AppState;

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
    row: &outbox::Model,
    event: Option<&EventEnvelope>,
) -> anyhow::Result<Delivery> {
    match row.destination.as_str() {
        DEST_JOBS => {
            let msg: JobMessage =
                serde_json::from_value(row.payload.clone()).context("job payload")?;
            state
                .queue
                .send(&msg, Some(&format!("outbox-{}", row.id)))
                .await?;
        }
        DEST_EVENTS => match event {
            Some(e) => state.publisher.publish(e).await?,
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

async fn deliver_row<'a, C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    row: &'a outbox::Model,
    event: Option<&EventEnvelope>,
) -> (&'a outbox::Model, anyhow::Result<Delivery>) {
    let result = match (
        row.destination.as_str(),
        event,
        row.payload["event_id"].as_i64(),
    ) {
        (DEST_EVENTS, None, Some(id)) => {
            // Not sequenced yet (next round), or deleted with its call before it went out.
            match call_events::Entity::find_by_id(id).one(conn).await {
                Ok(found) => Ok(if found.is_some() {
                    Delivery::NotYet
                } else {
                    Delivery::Sent
                }),
                Err(e) => Err(e.into()),
            }
        }
        _ => deliver(state, row, event).await,
    };
    (row, result)
}

/// One round: returns how many rows were delivered.
pub async fn relay_once(state: &AppState) -> anyhow::Result<usize> {
    sequence_pending(&state.db).await?;
    if state.db.get_database_backend() == DbBackend::Postgres {
        // Rows are claimed with FOR UPDATE SKIP LOCKED, so relays on several instances share the
        // outbox instead of sending the same rows; the claim lasts until the marks commit.
        let txn = state.db.begin().await?;
        let rows = pending(Some(&txn), state).await?;
        let sent = deliver_all(state, &txn, rows).await?;
        txn.commit().await?;
        Ok(sent)
    } else {
        // SQLite serialises writers anyway; a long read transaction there would only turn the
        // marks into snapshot conflicts.
        let rows = pending(None, state).await?;
        deliver_all(state, &state.db, rows).await
    }
}

async fn pending(
    txn: Option<&DatabaseTransaction>,
    state: &AppState,
) -> anyhow::Result<Vec<outbox::Model>> {
    let query = outbox::Entity::find()
        .filter(outbox::Column::SentAt.is_null())
        .filter(outbox::Column::AvailableAt.lte(Utc::now()))
        .order_by_asc(outbox::Column::Id)
        .limit(BATCH);
    Ok(match txn {
        Some(txn) => {
            query
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(txn)
                .await?
        }
        None => query.all(&state.db).await?,
    })
}

async fn deliver_all<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    rows: Vec<outbox::Model>,
) -> anyhow::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let event_ids: Vec<i64> = rows
        .iter()
        .filter(|r| r.destination == DEST_EVENTS)
        .filter_map(|r| r.payload["event_id"].as_i64())
        .collect();
    let events: std::collections::HashMap<i64, EventEnvelope> = if event_ids.is_empty() {
        Default::default()
    } else {
        call_events::Entity::find()
            .filter(call_events::Column::Id.is_in(event_ids))
            .all(conn)
            .await?
            .iter()
            .filter_map(envelope)
            .map(|e| (e.id, e))
            .collect()
    };
    // Deliveries run concurrently: the destinations (SQS, SNS) do not keep order anyway, and
    // subscribers order events by their sequence position.
    let deliveries: Vec<_> = rows
        .iter()
        .map(|row| {
            let event = row.payload["event_id"]
                .as_i64()
                .and_then(|id| events.get(&id));
            deliver_row(state, conn, row, event)
        })
        .collect();
    let outcomes: Vec<(&outbox::Model, anyhow::Result<Delivery>)> =
        futures::stream::iter(deliveries)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let mut sent_ids = Vec::new();
    for (row, result) in outcomes {
        match result {
            Ok(Delivery::Sent) => sent_ids.push(row.id),
            Ok(Delivery::NotYet) => {}
            Err(e) => {
                let delay = Duration::from_millis(500)
                    * 2u32.saturating_pow(row.attempts.clamp(0, 10) as u32);
                let delay = delay.min(Duration::from_secs(300));
                tracing::warn!(outbox = row.id, destination = %row.destination, attempts = row.attempts + 1, error = %e, "outbox delivery failed; will retry");
                outbox::Entity::update_many()
                    .col_expr(outbox::Column::Attempts, Expr::value(row.attempts + 1))
                    .col_expr(outbox::Column::LastError, Expr::value(format!("{e:#}")))
                    .col_expr(
                        outbox::Column::AvailableAt,
                        Expr::value(
                            Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                        ),
                    )
                    .filter(outbox::Column::Id.eq(row.id))
                    .exec(conn)
                    .await?;
            }
        }
    }
    if !sent_ids.is_empty() {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::SentAt, Expr::value(Utc::now()))
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .filter(outbox::Column::Id.is_in(sent_ids.clone()))
            .exec(conn)
            .await?;
    }
    Ok(sent_ids.len())
}

/// Removes delivered outbox rows older than a day so the table stays small.
async fn purge(state: &AppState) -> anyhow::Result<()> {
    outbox::Entity::delete_many()
        .filter(outbox::Column::SentAt.lt(Utc::now() - chrono::Duration::days(1)))
        .exec(&state.db)
        .await?;
    Ok(())
}

pub async fn run(state: AppState, shutdown: CancellationToken) {
    tracing::info!("relay started");
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
        let wait = state.settings.relay_poll * std::cmp::min(failures + 1, 20);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = state.relay_wakeup.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("relay stopped");
}
