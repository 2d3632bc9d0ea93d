//! Calls and their segments: submission with its event, job and upload clean-up; the attempt
//! lifecycle the worker drives (claim, complete with fencing, fail); retry, tags, deletion; and
//! the reads — by id, by page with filters and keyset pagination, for DataLoaders, for stats.

use chrono::{DateTime, Utc};
use entities::{analyses, call_events, call_segments, calls};
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, IdenStatic,
    Iterable, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select, Set,
};
use uuid::Uuid;

use super::analyses::{
    blob_keys_of_call, delete_analyses_of_call, find_analysis, insert_analysis, new_analysis,
    set_analysis_status,
};
use super::events::{
    enqueue_blob_delete, enqueue_job, new_event, new_outbox, record_event, DEST_BLOB_DELETE,
    DEST_EVENTS, DEST_JOBS,
};
use super::Store;
use crate::domain::{
    event_kind, Analysis, AnalysisRecord, CallColumns, CallDirection, CallRecord, CallStatus,
    JobMessage, SegmentRecord, StatsRow,
};
use crate::error::AppResult;

impl From<calls::Model> for CallRecord {
    fn from(m: calls::Model) -> Self {
        Self {
            id: m.id,
            tenant_id: m.tenant_id,
            external_id: m.external_id,
            idempotency_key: m.idempotency_key,
            status: m.status,
            direction: m.direction,
            from_number: m.from_number,
            to_number: m.to_number,
            agent: m.agent,
            started_at: m.started_at,
            duration_ms: m.duration_ms,
            channels: m.channels,
            recording_key: m.recording_key,
            recording_type: m.recording_type,
            recording_bytes: m.recording_bytes,
            recording_sha256: m.recording_sha256,
            result_key: m.result_key,
            language: m.language,
            transcript_text: m.transcript_text,
            transcript_input: m.transcript_input,
            summary: m.summary,
            sentiment_score: m.sentiment_score,
            sentiment_label: m.sentiment_label,
            topics: m.topics,
            action_items: m.action_items,
            metrics: m.metrics,
            tags: m.tags,
            metadata: m.metadata,
            analyzer: m.analyzer,
            attempts: m.attempts,
            error: m.error,
            created_at: m.created_at,
            updated_at: m.updated_at,
            completed_at: m.completed_at,
            upload_key: m.upload_key,
            usage: super::token_usage(m.prompt_tokens, m.output_tokens, m.total_tokens),
            current_analysis_id: m.current_analysis_id,
            issues: m.issues,
            intent: m.intent,
            outcome: m.outcome,
            category_matches: m.category_matches,
            redaction: m.redaction.and_then(|v| serde_json::from_value(v).ok()),
            redactions: m.redactions,
            original_recording_key: m.original_recording_key,
        }
    }
}

impl From<call_segments::Model> for SegmentRecord {
    fn from(s: call_segments::Model) -> Self {
        Self {
            call_id: s.call_id,
            idx: s.idx,
            speaker: s.speaker,
            channel: s.channel,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text,
            sentiment: s.sentiment,
            grounded: s.grounded,
        }
    }
}

/// A call to create, checked by the service: its recording is stored and hashed already.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub external_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub direction: Option<CallDirection>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub agent: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub channels: Option<Vec<String>>,
    pub recording_key: String,
    pub recording_type: String,
    pub recording_bytes: i64,
    pub recording_sha256: String,
    pub language: Option<String>,
    pub transcript_input: Option<serde_json::Value>,
    pub tags: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    /// The signed upload the recording was copied from, deleted (through the outbox) at
    /// `delete_upload_at`.
    pub upload_key: Option<String>,
    pub delete_upload_at: DateTime<Utc>,
    /// The analyser of its first analysis (`local` or `gemini`).
    pub analyzer: String,
    /// The redaction its analyses apply (the tenant's policy with the call's override), if any.
    pub redaction: Option<crate::domain::redaction::RedactionPolicy>,
}

/// Where an analysis's documents went in the blob store.
#[derive(Debug, Clone)]
pub struct ResultKeys {
    pub results: String,
    /// The raw model responses, when a model answered.
    pub model_responses: Option<String>,
}

/// Filters for listing calls and statistics, within one tenant. Checked by the service (tags
/// normalised, text bounded) before they reach the store.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub statuses: Vec<CallStatus>,
    /// Calls carrying every one of these tags.
    pub tags: Vec<String>,
    pub directions: Vec<CallDirection>,
    pub agent: Option<String>,
    pub external_id: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    /// Case-insensitive text in the summary or transcript.
    pub text: Option<String>,
}

fn like_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl CallFilter {
    fn condition(&self, tenant: Uuid) -> AppResult<Condition> {
        let mut c = Condition::all().add(calls::Column::TenantId.eq(tenant));
        if !self.statuses.is_empty() {
            c = c.add(calls::Column::Status.is_in(self.statuses.iter().map(|s| s.as_str())));
        }
        if !self.directions.is_empty() {
            c = c.add(calls::Column::Direction.is_in(self.directions.iter().map(|s| s.as_str())));
        }
        for tag in &self.tags {
            let json = serde_json::to_string(tag).map_err(anyhow::Error::from)?;
            c = c.add(
                Expr::col(calls::Column::Tags)
                    .cast_as("TEXT")
                    .like(LikeExpr::new(like_pattern(&json)).escape('\\')),
            );
        }
        if let Some(agent) = &self.agent {
            c = c.add(calls::Column::Agent.eq(agent.as_str()));
        }
        if let Some(ext) = &self.external_id {
            c = c.add(calls::Column::ExternalId.eq(ext.as_str()));
        }
        if let Some(t) = self.created_after {
            c = c.add(calls::Column::CreatedAt.gte(t));
        }
        if let Some(t) = self.created_before {
            c = c.add(calls::Column::CreatedAt.lt(t));
        }
        if let Some(t) = self.started_after {
            c = c.add(calls::Column::StartedAt.gte(t));
        }
        if let Some(t) = self.started_before {
            c = c.add(calls::Column::StartedAt.lt(t));
        }
        if let Some(text) = self
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let pattern = like_pattern(&text.to_lowercase());
            let lower = |col: calls::Column| Expr::expr(Func::lower(Expr::col(col)));
            c = c.add(
                Condition::any()
                    .add(
                        lower(calls::Column::Summary)
                            .like(LikeExpr::new(pattern.clone()).escape('\\')),
                    )
                    .add(
                        lower(calls::Column::TranscriptText)
                            .like(LikeExpr::new(pattern).escape('\\')),
                    ),
            );
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallOrder {
    #[default]
    CreatedAt,
    UpdatedAt,
}

impl CallOrder {
    /// The value a page is ordered by (with the id breaking ties).
    pub fn value_of(self, call: &CallRecord) -> DateTime<Utc> {
        match self {
            Self::CreatedAt => call.created_at,
            Self::UpdatedAt => call.updated_at,
        }
    }
}

/// A position in a listing: the ordering value and the id that breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyset {
    pub t: DateTime<Utc>,
    pub id: Uuid,
}

/// One page to read: `limit` calls after `after` and before `before` in `order`, walked from
/// the end when `backward`. Returns up to `limit + 1` rows in page order, so the caller learns
/// whether there are more.
#[derive(Debug, Clone)]
pub struct PageQuery {
    pub order: CallOrder,
    pub descending: bool,
    pub after: Option<Keyset>,
    pub before: Option<Keyset>,
    pub backward: bool,
    pub limit: usize,
}

/// What became of a state change asked of one call.
#[derive(Debug)]
pub enum Change {
    Done(CallRecord),
    /// The call exists but is in a state the change does not apply to.
    Refused(CallRecord),
    Missing,
}

/// A `SELECT` of calls that reads the large columns `cols` names and, in place of the others,
/// a placeholder of their type (null, or an empty list for the lists that are never null), so
/// that the rows still decode as whole models.
fn select_calls(cols: &CallColumns, backend: DbBackend) -> Select<calls::Entity> {
    use calls::Column as C;
    let skipped: &[(C, bool)] = &[
        (C::TranscriptText, cols.transcript),
        (C::TranscriptInput, cols.transcript),
        (C::Summary, cols.summary),
        (C::Topics, cols.topics),
        (C::ActionItems, cols.action_items),
        (C::Issues, cols.issues),
        (C::Intent, cols.intent),
        (C::CategoryMatches, cols.categories),
        (C::Metrics, cols.metrics),
        (C::Tags, cols.tags),
        (C::Metadata, cols.metadata),
        (C::Error, cols.error),
        (C::Channels, cols.channels),
    ];
    if *cols == CallColumns::ALL {
        return calls::Entity::find();
    }
    let postgres = backend == DbBackend::Postgres;
    let mut select = calls::Entity::find().select_only();
    for col in C::iter() {
        let wanted = skipped
            .iter()
            .find(|(c, _)| c.as_str() == col.as_str())
            .is_none_or(|(_, wanted)| *wanted);
        select = if wanted {
            select.column(col)
        } else {
            let placeholder = match (col, postgres) {
                (C::Topics | C::ActionItems | C::Tags, true) => "'[]'::jsonb",
                (C::Topics | C::ActionItems | C::Tags, false) => "'[]'",
                (C::TranscriptText | C::Summary | C::Intent | C::Error, true) => "NULL::text",
                (_, true) => "NULL::jsonb",
                (_, false) => "NULL",
            };
            select.column_as(Expr::cust(placeholder), col.as_str())
        };
    }
    select
}

pub(super) async fn find_call<C: ConnectionTrait>(
    db: &C,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<CallRecord>, sea_orm::DbErr> {
    Ok(calls::Entity::find_by_id(id)
        .filter(calls::Column::TenantId.eq(tenant))
        .one(db)
        .await?
        .map(Into::into))
}

/// Locks a call's row for the rest of the transaction by writing it first (`updated_at`): a row
/// lock on Postgres, the database's write lock on SQLite — taken before any read, so that a
/// SQLite transaction never has to upgrade a read lock (which fails at once when another writer
/// holds the lock, instead of waiting). Returns whether the call exists.
pub(super) async fn lock_call<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    id: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    Ok(calls::Entity::update_many()
        .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(calls::Column::Id.eq(id))
        .filter(calls::Column::TenantId.eq(tenant))
        .exec(txn)
        .await?
        .rows_affected
        > 0)
}

/// The sum of `column` over the analyses of the row's call (NULL when none spent tokens), as a
/// BIGINT on either backend (Postgres sums BIGINTs to NUMERIC).
fn analyses_tokens(column: &str) -> sea_orm::sea_query::SimpleExpr {
    Expr::cust(format!(
        "(SELECT CAST(SUM(a.{column}) AS BIGINT) FROM analyses a \
         WHERE a.call_id = calls.id AND a.tenant_id = calls.tenant_id)"
    ))
}

impl Store {
    /// Creates a call with its `SUBMITTED` event, its analysis job and the deferred deletion of
    /// the upload it came from, in one transaction. A unique violation (the idempotency key or
    /// the upload, raced by another submission) is returned as it is, for the caller to resolve.
    /// On Postgres that transaction is one statement, the
    /// `voicegraph_submit_call` function (migration `m20261206_000001_submit_function`), which
    /// sets the tenant and writes the rows under row-level security like any statement.
    pub async fn submit_call(&self, c: NewCall) -> AppResult<CallRecord> {
        use chrono::SubsecRound;
        // What Postgres stores (microseconds), so the record answered is the row as stored.
        let now = Utc::now().trunc_subsecs(6);
        let analysis = Uuid::new_v4();
        let call = calls::Model {
            id: c.id,
            tenant_id: c.tenant_id,
            external_id: c.external_id,
            idempotency_key: c.idempotency_key,
            status: CallStatus::Queued.as_str().into(),
            direction: c.direction.map(|d| d.as_str().to_string()),
            from_number: c.from,
            to_number: c.to,
            agent: c.agent,
            started_at: c.started_at.map(|t| t.trunc_subsecs(6)),
            duration_ms: c.duration_ms,
            channels: c.channels.map(|ch| serde_json::json!(ch)),
            recording_key: Some(c.recording_key),
            recording_type: Some(c.recording_type),
            recording_bytes: Some(c.recording_bytes),
            recording_sha256: Some(c.recording_sha256),
            result_key: None,
            language: c.language,
            transcript_text: None,
            transcript_input: c.transcript_input,
            summary: None,
            sentiment_score: None,
            sentiment_label: None,
            topics: serde_json::json!([]),
            action_items: serde_json::json!([]),
            metrics: None,
            tags: serde_json::json!(c.tags),
            metadata: c.metadata,
            analyzer: None,
            attempts: 0,
            error: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            upload_key: c.upload_key.clone(),
            prompt_tokens: None,
            output_tokens: None,
            total_tokens: None,
            current_analysis_id: Some(analysis),
            issues: None,
            intent: None,
            outcome: None,
            category_matches: None,
            redaction: c.redaction.map(|p| serde_json::json!(p)),
            redactions: None,
            original_recording_key: None,
        };
        let event_payload = serde_json::json!({ "analysisId": analysis, "analyzer": c.analyzer });
        let job = JobMessage {
            tenant_id: c.tenant_id,
            call_id: c.id,
            analysis_id: Some(analysis),
            traceparent: crate::telemetry::current_traceparent(),
        };
        if self.is_postgres() {
            let analysis_row = new_analysis(c.tenant_id, c.id, analysis, &c.analyzer, now);
            let event = new_event(
                c.tenant_id,
                c.id,
                event_kind::SUBMITTED,
                CallStatus::Queued,
                Some(event_payload),
                now,
            );
            let job = serde_json::to_value(&job).map_err(anyhow::Error::from)?;
            // The events row's payload is filled in with the event's id by the function.
            let mut outbox = vec![
                new_outbox(DEST_EVENTS, serde_json::json!({}), now, now),
                new_outbox(DEST_JOBS, job, now, now),
            ];
            if let Some(key) = &c.upload_key {
                let keys = serde_json::json!({ "keys": [key] });
                outbox.push(new_outbox(DEST_BLOB_DELETE, keys, now, c.delete_upload_at));
            }
            let outbox = outbox
                .iter()
                .map(super::row_json)
                .collect::<AppResult<Vec<_>>>()?;
            self.db
                .execute_raw(sea_orm::Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT voicegraph_submit_call($1, $2, $3, $4, $5)",
                    [
                        c.tenant_id.into(),
                        super::row_json(&call)?.into(),
                        super::row_json(&analysis_row)?.into(),
                        super::row_json(&event)?.into(),
                        serde_json::Value::Array(outbox).into(),
                    ],
                ))
                .await?;
            self.notifications().defer_outbox_notice();
            return Ok(call.into());
        }
        let txn = self.tenant_txn(c.tenant_id).await?;
        let call: CallRecord = calls::ActiveModel::from(call)
            .reset_all()
            .insert(&txn)
            .await?
            .into();
        insert_analysis(&txn, c.tenant_id, c.id, analysis, &c.analyzer).await?;
        record_event(
            &txn,
            c.tenant_id,
            c.id,
            event_kind::SUBMITTED,
            CallStatus::Queued,
            Some(event_payload),
        )
        .await?;
        enqueue_job(&txn, &job).await?;
        if let Some(key) = c.upload_key {
            enqueue_blob_delete(&txn, vec![key], Some(c.delete_upload_at)).await?;
        }
        txn.commit().await?;
        Ok(call)
    }

    pub async fn get_call(&self, tenant: Uuid, id: Uuid) -> AppResult<Option<CallRecord>> {
        self.get_call_columns(tenant, id, &CallColumns::ALL).await
    }

    /// A call with only the large columns `cols` names (see [`CallColumns`]).
    pub async fn get_call_columns(
        &self,
        tenant: Uuid,
        id: Uuid,
        cols: &CallColumns,
    ) -> AppResult<Option<CallRecord>> {
        let select = select_calls(cols, self.db.get_database_backend())
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::TenantId.eq(tenant));
        let rows = self.tenant_read(tenant, select).await?;
        Ok(rows.into_iter().next().map(Into::into))
    }

    pub async fn call_by_idempotency_key(
        &self,
        tenant: Uuid,
        key: &str,
    ) -> AppResult<Option<CallRecord>> {
        self.call_where(tenant, calls::Column::IdempotencyKey.eq(key))
            .await
    }

    pub async fn call_by_upload(
        &self,
        tenant: Uuid,
        upload_key: &str,
    ) -> AppResult<Option<CallRecord>> {
        self.call_where(tenant, calls::Column::UploadKey.eq(upload_key))
            .await
    }

    async fn call_where(
        &self,
        tenant: Uuid,
        cond: sea_orm::sea_query::SimpleExpr,
    ) -> AppResult<Option<CallRecord>> {
        let select = calls::Entity::find()
            .filter(calls::Column::TenantId.eq(tenant))
            .filter(cond)
            .limit(1);
        Ok(self
            .tenant_read(tenant, select)
            .await?
            .into_iter()
            .next()
            .map(Into::into))
    }

    /// Puts a `FAILED` call back on the queue, with its `RETRIED` event and a new job.
    pub async fn retry_call(&self, tenant: Uuid, id: Uuid) -> AppResult<Change> {
        let txn = self.tenant_txn(tenant).await?;
        let updated = calls::Entity::update_many()
            .col_expr(
                calls::Column::Status,
                Expr::value(CallStatus::Queued.as_str()),
            )
            .col_expr(calls::Column::Error, Expr::value(Option::<String>::None))
            .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::TenantId.eq(tenant))
            .filter(calls::Column::Status.eq(CallStatus::Failed.as_str()))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            let call = find_call(&txn, tenant, id).await?;
            txn.commit().await?;
            return Ok(call.map_or(Change::Missing, Change::Refused));
        }
        let call = find_call(&txn, tenant, id).await?;
        // The failed analysis is the one tried again.
        let analysis = call.as_ref().and_then(|c| c.current_analysis_id);
        if let Some(a) = analysis {
            set_analysis_status(&txn, tenant, a, CallStatus::Queued, None).await?;
        }
        record_event(
            &txn,
            tenant,
            id,
            event_kind::RETRIED,
            CallStatus::Queued,
            analysis.map(|a| serde_json::json!({ "analysisId": a })),
        )
        .await?;
        enqueue_job(
            &txn,
            &JobMessage {
                tenant_id: tenant,
                call_id: id,
                analysis_id: analysis,
                traceparent: crate::telemetry::current_traceparent(),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(call.map_or(Change::Missing, Change::Done))
    }

    /// Sets a call's tags to what `merge` makes of the current ones, with a `TAGGED` event. The
    /// row is locked while merging, so concurrent taggers lose nothing.
    pub async fn tag_call(
        &self,
        tenant: Uuid,
        id: Uuid,
        merge: impl FnOnce(Vec<String>) -> AppResult<Vec<String>>,
    ) -> AppResult<Change> {
        let txn = self.tenant_txn(tenant).await?;
        if !lock_call(&txn, tenant, id).await? {
            return Ok(Change::Missing);
        }
        let Some(call) = calls::Entity::find_by_id(id)
            .filter(calls::Column::TenantId.eq(tenant))
            .one(&txn)
            .await?
        else {
            return Ok(Change::Missing);
        };
        let all = merge(serde_json::from_value(call.tags.clone()).unwrap_or_default())?;
        let status = CallStatus::parse(&call.status).unwrap_or(CallStatus::Queued);
        let mut active: calls::ActiveModel = call.into();
        active.tags = Set(serde_json::json!(all));
        active.updated_at = Set(Utc::now());
        let call = active.update(&txn).await?;
        record_event(
            &txn,
            tenant,
            id,
            event_kind::TAGGED,
            status,
            Some(serde_json::json!({ "tags": all })),
        )
        .await?;
        txn.commit().await?;
        Ok(Change::Done(call.into()))
    }

    /// Deletes a call with its segments and events, leaving a `DELETED` event so subscribers
    /// learn of it; its recording and results are deleted through the outbox.
    pub async fn delete_call(&self, tenant: Uuid, id: Uuid) -> AppResult<Change> {
        let txn = self.tenant_txn(tenant).await?;
        if !lock_call(&txn, tenant, id).await? {
            return Ok(Change::Missing);
        }
        let Some(call) = find_call(&txn, tenant, id).await? else {
            return Ok(Change::Missing);
        };
        let mut blobs = blob_keys_of_call(&txn, tenant, id).await?;
        delete_analyses_of_call(&txn, tenant, id).await?;
        call_segments::Entity::delete_many()
            .filter(call_segments::Column::CallId.eq(id))
            .filter(call_segments::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        call_events::Entity::delete_many()
            .filter(call_events::Column::CallId.eq(id))
            .filter(call_events::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        let deleted = calls::Entity::delete_many()
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Ok(Change::Missing);
        }
        let status = CallStatus::parse(&call.status).unwrap_or(CallStatus::Queued);
        record_event(&txn, tenant, id, event_kind::DELETED, status, None).await?;
        // Calls analysed before analyses were kept have their documents under the older keys.
        for key in [
            call.recording_key.clone(),
            call.original_recording_key.clone(),
            call.result_key.clone(),
            call.result_key
                .as_ref()
                .map(|_| crate::domain::legacy_model_responses_key(tenant, id)),
        ]
        .into_iter()
        .flatten()
        {
            if !blobs.contains(&key) {
                blobs.push(key);
            }
        }
        enqueue_blob_delete(&txn, blobs, None).await?;
        txn.commit().await?;
        Ok(Change::Done(call))
    }

    /// One page of a tenant's calls (see [`PageQuery`]).
    pub async fn list_calls(
        &self,
        tenant: Uuid,
        filter: &CallFilter,
        page: &PageQuery,
        cols: &CallColumns,
    ) -> AppResult<Vec<CallRecord>> {
        let col = match page.order {
            CallOrder::CreatedAt => calls::Column::CreatedAt,
            CallOrder::UpdatedAt => calls::Column::UpdatedAt,
        };
        let mut cond = filter.condition(tenant)?;
        // Forward pages walk in the requested order; backward pages walk it in reverse.
        let keyset = |cursor: &Keyset, towards_end: bool| -> Condition {
            let ahead = towards_end != page.descending;
            if ahead {
                Condition::any().add(col.gt(cursor.t)).add(
                    Condition::all()
                        .add(col.eq(cursor.t))
                        .add(calls::Column::Id.gt(cursor.id)),
                )
            } else {
                Condition::any().add(col.lt(cursor.t)).add(
                    Condition::all()
                        .add(col.eq(cursor.t))
                        .add(calls::Column::Id.lt(cursor.id)),
                )
            }
        };
        if let Some(after) = &page.after {
            cond = cond.add(keyset(after, true));
        }
        if let Some(before) = &page.before {
            cond = cond.add(keyset(before, false));
        }
        let walk_desc = page.descending != page.backward;
        let mut query = select_calls(cols, self.db.get_database_backend()).filter(cond);
        query = if walk_desc {
            query.order_by_desc(col).order_by_desc(calls::Column::Id)
        } else {
            query.order_by_asc(col).order_by_asc(calls::Column::Id)
        };
        let rows = self
            .tenant_read(tenant, query.limit(page.limit as u64 + 1))
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn count_calls(&self, tenant: Uuid, filter: &CallFilter) -> AppResult<u64> {
        let txn = self.tenant_txn(tenant).await?;
        let n = calls::Entity::find()
            .filter(filter.condition(tenant)?)
            .count(&txn)
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    /// What statistics aggregate, for every call the filter selects.
    pub async fn call_stat_rows(
        &self,
        tenant: Uuid,
        filter: &CallFilter,
    ) -> AppResult<Vec<StatsRow>> {
        let txn = self.tenant_txn(tenant).await?;
        let rows: Vec<StatsRow> = calls::Entity::find()
            .select_only()
            .column(calls::Column::CreatedAt)
            .column(calls::Column::Status)
            .column(calls::Column::DurationMs)
            .column(calls::Column::SentimentScore)
            .column(calls::Column::SentimentLabel)
            .column(calls::Column::Metrics)
            // Tokens of every analysis of the call, re-analyses included: what was spent.
            .column_as(analyses_tokens("prompt_tokens"), "prompt_tokens")
            .column_as(analyses_tokens("output_tokens"), "output_tokens")
            .column_as(analyses_tokens("total_tokens"), "total_tokens")
            .filter(filter.condition(tenant)?)
            .into_tuple()
            .all(&txn)
            .await?;
        txn.commit().await?;
        Ok(rows)
    }

    /// Segments of some calls of a tenant (for a DataLoader), in order.
    pub async fn segments_of_calls(
        &self,
        tenant: Uuid,
        call_ids: &[Uuid],
    ) -> anyhow::Result<Vec<SegmentRecord>> {
        let select = call_segments::Entity::find()
            .filter(call_segments::Column::TenantId.eq(tenant))
            .filter(call_segments::Column::CallId.is_in(call_ids.iter().copied()))
            .order_by_asc(call_segments::Column::CallId)
            .order_by_asc(call_segments::Column::Idx);
        let rows = self.tenant_read(tenant, select).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Calls of a tenant by id (for a DataLoader).
    pub async fn calls_by_ids(
        &self,
        tenant: Uuid,
        ids: &[Uuid],
    ) -> anyhow::Result<Vec<CallRecord>> {
        let select = calls::Entity::find()
            .filter(calls::Column::TenantId.eq(tenant))
            .filter(calls::Column::Id.is_in(ids.iter().copied()));
        let rows = self.tenant_read(tenant, select).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Marks the call and its analysis `PROCESSING` and claims the next attempt number, with its
    /// `PROCESSING` event. `None` when there is nothing to do (the call is finished or deleted, or
    /// the job's analysis is no longer the call's current one).
    pub async fn start_attempt(
        &self,
        job: &JobMessage,
    ) -> anyhow::Result<Option<(CallRecord, AnalysisRecord)>> {
        let now = Utc::now();
        let txn = self.tenant_txn(job.tenant_id).await?;
        let mut update = calls::Entity::update_many()
            .col_expr(
                calls::Column::Status,
                Expr::value(CallStatus::Processing.as_str()),
            )
            .col_expr(
                calls::Column::Attempts,
                Expr::col(calls::Column::Attempts).add(1),
            )
            .col_expr(calls::Column::UpdatedAt, Expr::value(now))
            .filter(calls::Column::Id.eq(job.call_id))
            .filter(calls::Column::TenantId.eq(job.tenant_id))
            .filter(
                calls::Column::Status
                    .is_in([CallStatus::Queued.as_str(), CallStatus::Processing.as_str()]),
            );
        if let Some(analysis) = job.analysis_id {
            update = update.filter(calls::Column::CurrentAnalysisId.eq(analysis));
        }
        if update.exec(&txn).await?.rows_affected == 0 {
            return Ok(None);
        }
        let call = find_call(&txn, job.tenant_id, job.call_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("call vanished inside its transaction"))?;
        let analysis_id = call
            .current_analysis_id
            .ok_or_else(|| anyhow::anyhow!("call {} has no current analysis", call.id))?;
        analyses::Entity::update_many()
            .col_expr(
                analyses::Column::Status,
                Expr::value(CallStatus::Processing.as_str()),
            )
            .col_expr(
                analyses::Column::Attempts,
                Expr::col(analyses::Column::Attempts).add(1),
            )
            .col_expr(
                analyses::Column::StartedAt,
                Func::coalesce([Expr::col(analyses::Column::StartedAt), Expr::value(now)]).into(),
            )
            .filter(analyses::Column::Id.eq(analysis_id))
            .filter(analyses::Column::TenantId.eq(job.tenant_id))
            .exec(&txn)
            .await?;
        let analysis = find_analysis(&txn, job.tenant_id, analysis_id)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("analysis {analysis_id} of call {} is missing", call.id)
            })?;
        record_event(
            &txn,
            job.tenant_id,
            job.call_id,
            event_kind::PROCESSING,
            CallStatus::Processing,
            Some(serde_json::json!({ "attempt": call.attempts, "analysisId": analysis_id })),
        )
        .await?;
        txn.commit().await?;
        Ok(Some((call, analysis)))
    }

    /// Stores the results, the segments, the analysis's outcome and the `COMPLETED` event in one
    /// transaction, only if attempt `attempt` of analysis `analysis` still owns the call
    /// (fencing). Returns whether it did.
    pub async fn complete_attempt(
        &self,
        call: &CallRecord,
        analysis_id: Uuid,
        attempt: i32,
        analysis: &Analysis,
        keys: ResultKeys,
    ) -> anyhow::Result<bool> {
        let now = Utc::now();
        let txn = self.tenant_txn(call.tenant_id).await?;
        let updated = calls::Entity::update_many()
            .col_expr(
                calls::Column::Status,
                Expr::value(CallStatus::Completed.as_str()),
            )
            .col_expr(calls::Column::DurationMs, Expr::value(analysis.duration_ms))
            .col_expr(calls::Column::ResultKey, Expr::value(keys.results.clone()))
            .col_expr(
                calls::Column::Language,
                Expr::value(analysis.language.clone().or(call.language.clone())),
            )
            .col_expr(
                calls::Column::TranscriptText,
                Expr::value(analysis.transcript_text.clone()),
            )
            .col_expr(
                calls::Column::Summary,
                Expr::value(analysis.summary.clone()),
            )
            .col_expr(
                calls::Column::SentimentScore,
                Expr::value(analysis.sentiment.map(|s| s.score)),
            )
            .col_expr(
                calls::Column::SentimentLabel,
                Expr::value(analysis.sentiment.map(|s| s.label.as_str().to_string())),
            )
            .col_expr(
                calls::Column::Topics,
                Expr::value(serde_json::json!(analysis.topics)),
            )
            .col_expr(
                calls::Column::ActionItems,
                Expr::value(serde_json::to_value(&analysis.action_items)?),
            )
            .col_expr(
                calls::Column::Issues,
                Expr::value(serde_json::to_value(&analysis.issues)?),
            )
            .col_expr(calls::Column::Intent, Expr::value(analysis.intent.clone()))
            .col_expr(
                calls::Column::Outcome,
                Expr::value(analysis.outcome.map(|o| o.as_str().to_string())),
            )
            .col_expr(
                calls::Column::CategoryMatches,
                Expr::value(serde_json::to_value(&analysis.categories)?),
            )
            .col_expr(
                calls::Column::Metrics,
                Expr::value(serde_json::to_value(&analysis.metrics)?),
            )
            .col_expr(
                calls::Column::Analyzer,
                Expr::value(analysis.analyzer.clone()),
            )
            .col_expr(
                calls::Column::PromptTokens,
                Expr::value(analysis.usage.map(|u| u.prompt_tokens)),
            )
            .col_expr(
                calls::Column::OutputTokens,
                Expr::value(analysis.usage.map(|u| u.output_tokens)),
            )
            .col_expr(
                calls::Column::TotalTokens,
                Expr::value(analysis.usage.map(|u| u.total_tokens)),
            )
            .col_expr(calls::Column::Error, Expr::value(Option::<String>::None))
            .col_expr(calls::Column::UpdatedAt, Expr::value(now))
            .col_expr(calls::Column::CompletedAt, Expr::value(now))
            .filter(calls::Column::Id.eq(call.id))
            .filter(calls::Column::TenantId.eq(call.tenant_id))
            .filter(calls::Column::Attempts.eq(attempt))
            .filter(calls::Column::CurrentAnalysisId.eq(analysis_id))
            .filter(calls::Column::Status.eq(CallStatus::Processing.as_str()))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(false);
        }
        let kind = analysis
            .analyzer
            .split(':')
            .next()
            .unwrap_or(&analysis.analyzer)
            .to_string();
        analyses::Entity::update_many()
            .col_expr(
                analyses::Column::Status,
                Expr::value(CallStatus::Completed.as_str()),
            )
            .col_expr(analyses::Column::Analyzer, Expr::value(kind))
            .col_expr(analyses::Column::Model, Expr::value(analysis.model.clone()))
            .col_expr(
                analyses::Column::PromptVersion,
                Expr::value(analysis.prompt_version.clone()),
            )
            .col_expr(analyses::Column::Error, Expr::value(Option::<String>::None))
            .col_expr(analyses::Column::ResultKey, Expr::value(keys.results))
            .col_expr(
                analyses::Column::ModelResponsesKey,
                Expr::value(keys.model_responses),
            )
            .col_expr(
                analyses::Column::PromptTokens,
                Expr::value(analysis.usage.map(|u| u.prompt_tokens)),
            )
            .col_expr(
                analyses::Column::OutputTokens,
                Expr::value(analysis.usage.map(|u| u.output_tokens)),
            )
            .col_expr(
                analyses::Column::TotalTokens,
                Expr::value(analysis.usage.map(|u| u.total_tokens)),
            )
            .col_expr(analyses::Column::CompletedAt, Expr::value(now))
            .filter(analyses::Column::Id.eq(analysis_id))
            .filter(analyses::Column::TenantId.eq(call.tenant_id))
            .exec(&txn)
            .await?;
        call_segments::Entity::delete_many()
            .filter(call_segments::Column::CallId.eq(call.id))
            .filter(call_segments::Column::TenantId.eq(call.tenant_id))
            .exec(&txn)
            .await?;
        let rows: Vec<call_segments::ActiveModel> = analysis
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| call_segments::ActiveModel {
                call_id: Set(call.id),
                tenant_id: Set(call.tenant_id),
                idx: Set(i as i32),
                speaker: Set(s.speaker.clone()),
                channel: Set(s.channel),
                start_ms: Set(s.start_ms),
                end_ms: Set(s.end_ms),
                text: Set(s.text.clone()),
                sentiment: Set(s.sentiment),
                grounded: Set(s.grounded),
                ..Default::default()
            })
            .collect();
        // Bounded batches keep every statement under SQLite's bind-parameter limit.
        for chunk in rows.chunks(500) {
            call_segments::Entity::insert_many(chunk.to_vec())
                .exec(&txn)
                .await?;
        }
        record_event(
            &txn,
            call.tenant_id,
            call.id,
            event_kind::COMPLETED,
            CallStatus::Completed,
            Some(serde_json::json!({ "analysisId": analysis_id })),
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt — `FAILED` for good, or back to `QUEUED` to be retried — only if
    /// attempt `attempt` still owns the call. Returns whether it did.
    /// Marks the call of a dead-lettered job `FAILED` with `reason`, unless it finished or moved
    /// on to another analysis meanwhile: `true` when it did. Its analysis fails with it, and a
    /// `FAILED` event is recorded, so `retryCall` can bring it back.
    pub async fn fail_dead_lettered(
        &self,
        message: &JobMessage,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let txn = self.tenant_txn(message.tenant_id).await?;
        let call = if lock_call(&txn, message.tenant_id, message.call_id).await? {
            find_call(&txn, message.tenant_id, message.call_id).await?
        } else {
            None
        };
        let Some(call) = call else {
            // Deleted meanwhile.
            txn.commit().await?;
            return Ok(false);
        };
        let unfinished = [CallStatus::Queued, CallStatus::Processing]
            .iter()
            .any(|s| s.as_str() == call.status);
        let same_analysis =
            message.analysis_id.is_none() || message.analysis_id == call.current_analysis_id;
        if !unfinished || !same_analysis {
            txn.commit().await?;
            return Ok(false);
        }
        calls::Entity::update_many()
            .col_expr(
                calls::Column::Status,
                Expr::value(CallStatus::Failed.as_str()),
            )
            .col_expr(calls::Column::Error, Expr::value(reason.to_string()))
            .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(calls::Column::Id.eq(call.id))
            .filter(calls::Column::TenantId.eq(call.tenant_id))
            .exec(&txn)
            .await?;
        if let Some(analysis) = call.current_analysis_id {
            set_analysis_status(
                &txn,
                call.tenant_id,
                analysis,
                CallStatus::Failed,
                Some(reason),
            )
            .await?;
        }
        record_event(
            &txn,
            call.tenant_id,
            call.id,
            event_kind::FAILED,
            CallStatus::Failed,
            Some(serde_json::json!({
                "error": reason,
                "attempt": call.attempts,
                "analysisId": call.current_analysis_id,
            })),
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    pub async fn fail_attempt(
        &self,
        call: &CallRecord,
        analysis_id: Uuid,
        attempt: i32,
        reason: &str,
        permanent: bool,
    ) -> anyhow::Result<bool> {
        let status = if permanent {
            CallStatus::Failed
        } else {
            CallStatus::Queued
        };
        let txn = self.tenant_txn(call.tenant_id).await?;
        let updated = calls::Entity::update_many()
            .col_expr(calls::Column::Status, Expr::value(status.as_str()))
            .col_expr(calls::Column::Error, Expr::value(reason.to_string()))
            .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(calls::Column::Id.eq(call.id))
            .filter(calls::Column::TenantId.eq(call.tenant_id))
            .filter(calls::Column::Attempts.eq(attempt))
            .filter(calls::Column::CurrentAnalysisId.eq(analysis_id))
            .filter(calls::Column::Status.eq(CallStatus::Processing.as_str()))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(false);
        }
        set_analysis_status(&txn, call.tenant_id, analysis_id, status, Some(reason)).await?;
        let kind = if permanent {
            event_kind::FAILED
        } else {
            event_kind::RETRYING
        };
        record_event(
            &txn,
            call.tenant_id,
            call.id,
            kind,
            status,
            Some(serde_json::json!({
                "error": reason,
                "attempt": attempt,
                "analysisId": analysis_id,
            })),
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }
}
