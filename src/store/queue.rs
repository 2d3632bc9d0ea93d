//! The embedded job queue: a table in the application database with SQS semantics — visibility
//! leases, receive counts, heartbeats, delayed nacks and dead-lettering after N receives.
//! Leases are taken with compare-and-set updates, so any number of workers may share it.
//!
//! A waiting receiver wakes when a job is sent in this process; on Postgres also when the
//! database notifies that a job was enqueued or made due sooner anywhere, and at the time the
//! next job becomes due by itself (a lease running out, a delay ending), which the same read that
//! looks for due jobs finds. Without notifications (SQLite, or while the listener reconnects) it
//! polls, since other processes may enqueue too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use entities::jobs;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio::sync::Notify;

use super::{Notifications, Store};
use crate::domain::JobMessage;
use crate::ports::{DeadLetter, JobQueue, Lease};

pub struct EmbeddedQueue {
    db: DatabaseConnection,
    name: String,
    max_receives: u32,
    /// Wakes long-polling receivers in this process when a job is sent.
    notify: Arc<Notify>,
    /// The database's notifications, which wake them for other processes' jobs.
    notifications: Arc<Notifications>,
}

/// How often a receiver looks for jobs when no notifications tell it.
const POLL: Duration = Duration::from_millis(200);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl EmbeddedQueue {
    pub fn new(store: &Store, name: impl Into<String>, max_receives: u32) -> Self {
        Self {
            db: store.db.clone(),
            name: name.into(),
            max_receives: std::cmp::max(max_receives, 1),
            notify: Arc::new(Notify::new()),
            notifications: store.notifications().clone(),
        }
    }

    /// Jobs moved to the dead-letter queue, oldest first: (job id, message, reason).
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<(i64, JobMessage, String)>> {
        let rows = jobs::Entity::find()
            .filter(jobs::Column::Queue.eq(&self.name))
            .filter(jobs::Column::DeadAt.is_not_null())
            .order_by_asc(jobs::Column::Id)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.id,
                    serde_json::from_value(r.payload)?,
                    r.dead_reason.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Leases up to `max` due jobs; also returns when the next job not due yet becomes due (in
    /// ms since the epoch), or `now` when more may be due than were read.
    async fn try_receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> anyhow::Result<(Vec<Lease>, Option<i64>)> {
        let now = now_ms();
        // The earliest jobs, due or not: those due are the candidates, and the first one that is
        // not says when to look next, in the same statement.
        let limit = max as u64 * 2;
        let mut candidates = jobs::Entity::find()
            .filter(jobs::Column::Queue.eq(&self.name))
            .filter(jobs::Column::DeadAt.is_null())
            .order_by_asc(jobs::Column::VisibleAt)
            .order_by_asc(jobs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .context("reading ready jobs")?;
        let next_due = match candidates.iter().position(|j| j.visible_at > now) {
            Some(i) => Some(candidates[i].visible_at),
            None if candidates.len() as u64 == limit => Some(now),
            None => None,
        };
        candidates.retain(|j| j.visible_at <= now);
        let mut leases = Vec::new();
        for job in candidates {
            if leases.len() >= max {
                break;
            }
            // Each update only applies if nobody else took the job since we read it.
            let unchanged = jobs::Column::Id
                .eq(job.id)
                .and(jobs::Column::ReceiveCount.eq(job.receive_count))
                .and(jobs::Column::DeadAt.is_null())
                .and(jobs::Column::VisibleAt.lte(now));
            if job.receive_count as u32 >= self.max_receives {
                jobs::Entity::update_many()
                    .col_expr(jobs::Column::DeadAt, Expr::value(now))
                    .col_expr(
                        jobs::Column::DeadReason,
                        Expr::value(format!("received {} times", job.receive_count)),
                    )
                    .filter(unchanged)
                    .exec(&self.db)
                    .await?;
                continue;
            }
            let receipt = uuid::Uuid::new_v4().to_string();
            let updated = jobs::Entity::update_many()
                .col_expr(
                    jobs::Column::ReceiveCount,
                    Expr::value(job.receive_count + 1),
                )
                .col_expr(jobs::Column::VisibleAt, Expr::value(now + ms(visibility)))
                .col_expr(jobs::Column::Receipt, Expr::value(receipt.clone()))
                .filter(unchanged)
                .exec(&self.db)
                .await?;
            if updated.rows_affected == 1 {
                let message: JobMessage = match serde_json::from_value(job.payload.clone()) {
                    Ok(m) => m,
                    Err(e) => {
                        // A message nobody can read goes straight to the dead-letter queue.
                        jobs::Entity::update_many()
                            .col_expr(jobs::Column::DeadAt, Expr::value(now))
                            .col_expr(
                                jobs::Column::DeadReason,
                                Expr::value(format!("unreadable: {e}")),
                            )
                            .filter(jobs::Column::Id.eq(job.id))
                            .exec(&self.db)
                            .await?;
                        continue;
                    }
                };
                leases.push(Lease {
                    receipt: format!("{}:{receipt}", job.id),
                    message,
                    receive_count: job.receive_count as u32 + 1,
                });
            }
        }
        Ok((leases, next_due))
    }

    /// Updates the job the lease names, only while the lease is still the current one.
    async fn with_lease(
        &self,
        lease: &Lease,
        visible_at: Option<i64>,
        delete: bool,
    ) -> anyhow::Result<()> {
        let (id, receipt) = lease.receipt.split_once(':').context("malformed receipt")?;
        let id: i64 = id.parse().context("malformed receipt")?;
        let current = jobs::Column::Id
            .eq(id)
            .and(jobs::Column::Receipt.eq(receipt))
            .and(jobs::Column::DeadAt.is_null());
        let affected = if delete {
            jobs::Entity::delete_many()
                .filter(current)
                .exec(&self.db)
                .await?
                .rows_affected
        } else {
            jobs::Entity::update_many()
                .col_expr(
                    jobs::Column::VisibleAt,
                    Expr::value(visible_at.unwrap_or_else(now_ms)),
                )
                .filter(current)
                .exec(&self.db)
                .await?
                .rows_affected
        };
        anyhow::ensure!(affected == 1, "the lease on job {id} was lost");
        Ok(())
    }
}

impl EmbeddedQueue {
    /// A new job of this queue, visible from `now`.
    fn job_row(
        &self,
        message: &JobMessage,
        dedup_key: Option<&str>,
        now: i64,
    ) -> anyhow::Result<jobs::ActiveModel> {
        Ok(jobs::ActiveModel {
            queue: Set(self.name.clone()),
            payload: Set(serde_json::to_value(message)?),
            visible_at: Set(now),
            receive_count: Set(0),
            receipt: Set(None),
            created_at: Set(now),
            dead_at: Set(None),
            dead_reason: Set(None),
            dedup_key: Set(dedup_key.map(|k| format!("{}:{k}", self.name))),
            ..Default::default()
        })
    }
}

#[async_trait]
impl JobQueue for EmbeddedQueue {
    async fn send(&self, message: &JobMessage, dedup_key: Option<&str>) -> anyhow::Result<()> {
        let row = self.job_row(message, dedup_key, now_ms())?;
        let inserted = jobs::Entity::insert(row)
            .on_conflict(
                OnConflict::column(jobs::Column::DedupKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec(&self.db)
            .await;
        match inserted {
            Ok(_) | Err(DbErr::RecordNotInserted) => {}
            Err(e) => return Err(anyhow::Error::new(e).context("enqueueing job")),
        }
        self.notify.notify_waiters();
        Ok(())
    }

    /// One statement (one transaction, one notice) for all of them.
    async fn send_batch(&self, batch: &[(JobMessage, String)]) -> Vec<anyhow::Result<()>> {
        if batch.is_empty() {
            return Vec::new();
        }
        let now = now_ms();
        let rows: anyhow::Result<Vec<jobs::ActiveModel>> = batch
            .iter()
            .map(|(message, key)| self.job_row(message, Some(key), now))
            .collect();
        let inserted = match rows {
            Ok(rows) => jobs::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(jobs::Column::DedupKey)
                        .do_nothing()
                        .to_owned(),
                )
                .exec(&self.db)
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    // Every one of them was enqueued before.
                    DbErr::RecordNotInserted => Ok(()),
                    e => Err(anyhow::Error::new(e).context("enqueueing jobs")),
                }),
            Err(e) => Err(e),
        };
        match inserted {
            Ok(()) => {
                self.notify.notify_waiters();
                batch.iter().map(|_| Ok(())).collect()
            }
            Err(e) => batch
                .iter()
                .map(|_| Err(anyhow::anyhow!("{e:#}")))
                .collect(),
        }
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> anyhow::Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that a job sent meanwhile wakes the wait below.
            let sent_here = self.notify.notified();
            let notified = self.notifications.jobs().notified();
            let live = self.notifications.link().is_up();
            let (leases, next_due) = self.try_receive(max.max(1), visibility).await?;
            let now = tokio::time::Instant::now();
            if !leases.is_empty() || now >= deadline {
                return Ok(leases);
            }
            let nap = if live {
                // Until the next job is due by itself; notices announce the others.
                match next_due {
                    Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                    None => deadline - now,
                }
            } else {
                // Other processes may enqueue too, so poll as well as listen.
                POLL
            };
            tokio::select! {
                _ = sent_here => {}
                _ = notified => {}
                _ = tokio::time::sleep(nap.min(deadline - now)) => {}
            }
        }
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> anyhow::Result<()> {
        self.with_lease(lease, Some(now_ms() + ms(visibility)), false)
            .await
    }

    async fn ack(&self, lease: &Lease) -> anyhow::Result<()> {
        self.with_lease(lease, None, true).await
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> anyhow::Result<()> {
        self.with_lease(lease, Some(now_ms() + ms(delay)), false)
            .await?;
        // The job is due sooner than its lease said: waiters here look again (and sleep until
        // the delay ends).
        self.notify.notify_waiters();
        Ok(())
    }

    fn max_receives(&self) -> u32 {
        self.max_receives
    }

    /// Dead rows not handled yet, oldest first (it does not wait: a reader polls).
    async fn receive_dead(&self, max: usize, _wait: Duration) -> anyhow::Result<Vec<DeadLetter>> {
        let rows = jobs::Entity::find()
            .filter(jobs::Column::Queue.eq(&self.name))
            .filter(jobs::Column::DeadAt.is_not_null())
            .filter(jobs::Column::DeadHandledAt.is_null())
            .order_by_asc(jobs::Column::Id)
            .limit(max as u64)
            .all(&self.db)
            .await
            .context("reading dead letters")?;
        let mut dead = Vec::new();
        for row in rows {
            match serde_json::from_value(row.payload) {
                Ok(message) => dead.push(DeadLetter {
                    handle: row.id.to_string(),
                    message,
                }),
                // An unreadable one names no call: there is nothing to mark.
                Err(_) => {
                    self.forget_dead(&DeadLetter {
                        handle: row.id.to_string(),
                        message: JobMessage {
                            tenant_id: uuid::Uuid::nil(),
                            call_id: uuid::Uuid::nil(),
                            analysis_id: None,
                            traceparent: None,
                        },
                    })
                    .await?
                }
            }
        }
        Ok(dead)
    }

    /// The row stays, for operators (`dead_letters`), marked as handled.
    async fn forget_dead(&self, dead: &DeadLetter) -> anyhow::Result<()> {
        let id: i64 = dead
            .handle
            .parse()
            .context("malformed dead-letter handle")?;
        jobs::Entity::update_many()
            .col_expr(jobs::Column::DeadHandledAt, Expr::value(now_ms()))
            .filter(jobs::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .context("marking a dead letter handled")?;
        Ok(())
    }

    async fn depth(&self) -> anyhow::Result<u64> {
        Ok(jobs::Entity::find()
            .filter(jobs::Column::Queue.eq(&self.name))
            .filter(jobs::Column::DeadAt.is_null())
            .count(&self.db)
            .await?)
    }
}
