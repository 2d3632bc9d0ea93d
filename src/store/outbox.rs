//! The outbox, as the relay works it: claim a batch of due rows, mark the delivered ones sent,
//! reschedule the failed ones with a backoff, and purge what was sent long ago. The outbox holds
//! no tenant's data (ids and blob keys only), so it is a system table without row-level security.

use chrono::{DateTime, Utc};
use entities::outbox;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
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

/// A claimed batch of outbox rows. On Postgres the rows are locked (`FOR UPDATE SKIP LOCKED`)
/// until [`OutboxClaim::finish`], so relays on several instances share the outbox instead of
/// sending the same rows; SQLite serialises writers anyway, and a long read transaction there
/// would only turn the marks into snapshot conflicts.
pub struct OutboxClaim {
    txn: Option<DatabaseTransaction>,
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
    /// Claims up to `batch` due rows, oldest first.
    pub async fn claim_outbox(&self, batch: u64) -> anyhow::Result<OutboxClaim> {
        let query = outbox::Entity::find()
            .filter(outbox::Column::SentAt.is_null())
            .filter(outbox::Column::AvailableAt.lte(Utc::now()))
            .order_by_asc(outbox::Column::Id)
            .limit(batch);
        let (txn, rows) = if self.is_postgres() {
            let txn = self.db.begin().await?;
            let rows = query
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(&txn)
                .await?;
            (Some(txn), rows)
        } else {
            (None, query.all(&self.db).await?)
        };
        Ok(OutboxClaim {
            txn,
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
            .into_tuple()
            .one(&self.db)
            .await?;
        let (next_due, oldest) = row.unwrap_or_default();
        Ok(OutboxPending { next_due, oldest })
    }

    /// Removes rows sent before `before`, so the table stays small.
    pub async fn purge_outbox(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        Ok(outbox::Entity::delete_many()
            .filter(outbox::Column::SentAt.lt(before))
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
        let update = outbox::Entity::update_many()
            .col_expr(outbox::Column::SentAt, Expr::value(Utc::now()))
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .filter(outbox::Column::Id.is_in(ids.iter().copied()));
        match &self.txn {
            Some(txn) => update.exec(txn).await?,
            None => update.exec(&self.db).await?,
        };
        Ok(())
    }

    /// Records a failed delivery of `row` and makes it due again at `at`.
    pub async fn reschedule(
        &self,
        row: &OutboxRecord,
        error: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let update = outbox::Entity::update_many()
            .col_expr(outbox::Column::Attempts, Expr::value(row.attempts + 1))
            .col_expr(outbox::Column::LastError, Expr::value(error.to_string()))
            .col_expr(outbox::Column::AvailableAt, Expr::value(at))
            .filter(outbox::Column::Id.eq(row.id));
        match &self.txn {
            Some(txn) => update.exec(txn).await?,
            None => update.exec(&self.db).await?,
        };
        Ok(())
    }

    /// Commits the marks and releases the claim.
    pub async fn finish(self) -> anyhow::Result<()> {
        if let Some(txn) = self.txn {
            txn.commit().await?;
        }
        Ok(())
    }
}
