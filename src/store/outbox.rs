//! The outbox, as the relay works it: claim a batch of due rows under a lease, mark the delivered
//! ones sent, reschedule the failed ones with a backoff, dead-letter those whose destination gave
//! up, and purge what was sent long ago. The outbox holds no tenant's data (ids and blob keys
//! only), so it is a system table without row-level security.
//!
//! A claim is one statement that leases the rows (`leased_until`) and returns them; it holds no
//! lock once it returns, so a relay never keeps a lock while a destination answers. On Postgres
//! it skips rows another relay is leasing at that instant (`FOR UPDATE SKIP LOCKED`); a lease
//! makes a row invisible to other claims until it ends, and a relay that dies mid-delivery
//! leaves its rows to be claimed again when their lease runs out (deliveries are at least once).

use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::outbox;
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QuerySelect, Statement,
};

use super::Store;
use crate::domain::OutboxRecord;

/// What [`Store::outbox_pending`] reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboxPending {
    /// When the next undelivered row that is not due yet falls due.
    pub next_due: Option<DateTime<Utc>>,
    /// When the oldest undelivered row was written.
    pub oldest: Option<DateTime<Utc>>,
}

/// Which destinations a claim takes.
#[derive(Debug, Clone, Copy)]
pub enum Destinations<'a> {
    Only(&'a str),
    AllBut(&'a str),
}

/// A claimed batch of outbox rows, leased to this relay until each is marked, rescheduled,
/// released or dead-lettered (or the lease runs out).
pub struct OutboxClaim {
    db: DatabaseConnection,
    pub rows: Vec<OutboxRecord>,
}

impl From<outbox::Model> for OutboxRecord {
    fn from(m: outbox::Model) -> Self {
        Self {
            id: m.id,
            destination: m.destination,
            payload: m.payload,
            attempts: m.attempts,
            available_at: m.available_at,
        }
    }
}

impl Store {
    /// Claims up to `batch` due rows of `destinations`, oldest first, leased for `lease`.
    pub async fn claim_outbox(
        &self,
        destinations: Destinations<'_>,
        batch: u64,
        lease: Duration,
    ) -> anyhow::Result<OutboxClaim> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease)?;
        let (op, destination) = match destinations {
            Destinations::Only(d) => ("=", d),
            Destinations::AllBut(d) => ("<>", d),
        };
        let (backend, sql) = if self.is_postgres() {
            (
                DbBackend::Postgres,
                format!(
                    "UPDATE outbox SET leased_until = $1 WHERE id IN (SELECT id FROM outbox \
                     WHERE sent_at IS NULL AND dead_at IS NULL AND available_at <= $2 \
                     AND (leased_until IS NULL OR leased_until <= $2) AND destination {op} $3 \
                     ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING *"
                ),
            )
        } else {
            (
                DbBackend::Sqlite,
                format!(
                    "UPDATE outbox SET leased_until = $1 WHERE id IN (SELECT id FROM outbox \
                     WHERE sent_at IS NULL AND dead_at IS NULL AND available_at <= $2 \
                     AND (leased_until IS NULL OR leased_until <= $2) AND destination {op} $3 \
                     ORDER BY id LIMIT $4) RETURNING *"
                ),
            )
        };
        let mut rows = outbox::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    until.into(),
                    now.into(),
                    destination.into(),
                    (batch as i64).into(),
                ],
            ))
            .all(&self.db)
            .await?;
        rows.sort_by_key(|r| r.id);
        Ok(OutboxClaim {
            db: self.db.clone(),
            rows: rows.into_iter().map(Into::into).collect(),
        })
    }

    /// The outbox's state in one statement: when the next undelivered row that is not due yet
    /// falls due (a retry's backoff), and when the oldest undelivered row was written.
    pub async fn outbox_pending(&self) -> anyhow::Result<OutboxPending> {
        let now = Utc::now();
        let due_later = Expr::case(
            outbox::Column::AvailableAt.gt(now),
            Expr::col(outbox::Column::AvailableAt),
        );
        type Times = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let row: Option<Times> = outbox::Entity::find()
            .select_only()
            .column_as(Expr::expr(Func::min(due_later)), "due")
            .column_as(outbox::Column::CreatedAt.min(), "oldest")
            .filter(outbox::Column::SentAt.is_null())
            .filter(outbox::Column::DeadAt.is_null())
            .into_tuple()
            .one(&self.db)
            .await?;
        let (next_due, oldest) = row.unwrap_or_default();
        Ok(OutboxPending { next_due, oldest })
    }

    /// Removes rows sent (or dead-lettered) before `before`, so the table stays small.
    pub async fn purge_outbox(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        Ok(outbox::Entity::delete_many()
            .filter(
                sea_orm::Condition::any()
                    .add(outbox::Column::SentAt.lt(before))
                    .add(outbox::Column::DeadAt.lt(before)),
            )
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

impl OutboxClaim {
    /// Marks rows delivered.
    pub async fn mark_sent(&self, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::update_many()
            .col_expr(outbox::Column::SentAt, Expr::value(Utc::now()))
            .col_expr(
                outbox::Column::LeasedUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ends the lease of rows that could not go yet, untouched otherwise: due again at once.
    pub async fn release(&self, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::LeasedUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records a failed delivery of `row` and makes it due again at `at`.
    pub async fn reschedule(
        &self,
        row: &OutboxRecord,
        error: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Attempts, Expr::value(row.attempts + 1))
            .col_expr(outbox::Column::LastError, Expr::value(error.to_string()))
            .col_expr(outbox::Column::AvailableAt, Expr::value(at))
            .col_expr(
                outbox::Column::LeasedUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .filter(outbox::Column::Id.eq(row.id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Gives up on `row`: its destination's retries ran out. It stays, dead, for operators.
    pub async fn dead_letter(&self, row: &OutboxRecord, error: &str) -> anyhow::Result<()> {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Attempts, Expr::value(row.attempts + 1))
            .col_expr(outbox::Column::LastError, Expr::value(error.to_string()))
            .col_expr(outbox::Column::DeadAt, Expr::value(Utc::now()))
            .col_expr(
                outbox::Column::LeasedUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .filter(outbox::Column::Id.eq(row.id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
