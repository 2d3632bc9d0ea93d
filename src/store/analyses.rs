//! Every analysis of a call, kept: written when a call is submitted or re-analysed, moved along
//! by the worker's attempts (in the transactions of `calls.rs`), listed per call.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entities::{analyses, calls};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use super::calls::{find_call, lock_call, Change};
use super::events::{enqueue_job, record_event};
use super::Store;
use crate::domain::{event_kind, AnalysisRecord, CallStatus, JobMessage};
use crate::error::AppResult;

impl From<analyses::Model> for AnalysisRecord {
    fn from(m: analyses::Model) -> Self {
        Self {
            id: m.id,
            tenant_id: m.tenant_id,
            call_id: m.call_id,
            analyzer: m.analyzer,
            model: m.model,
            prompt_version: m.prompt_version,
            status: m.status,
            error: m.error,
            attempts: m.attempts,
            result_key: m.result_key,
            model_responses_key: m.model_responses_key,
            usage: super::token_usage(m.prompt_tokens, m.output_tokens, m.total_tokens),
            created_at: m.created_at,
            started_at: m.started_at,
            completed_at: m.completed_at,
        }
    }
}

/// A new `QUEUED` analysis of a call by `analyzer` (`local` or `gemini`).
pub(super) async fn insert_analysis<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    call: Uuid,
    id: Uuid,
    analyzer: &str,
) -> Result<(), sea_orm::DbErr> {
    analyses::ActiveModel::from(new_analysis(tenant, call, id, analyzer, Utc::now()))
        .reset_all()
        .insert(txn)
        .await?;
    Ok(())
}

/// A new analysis of a call, `QUEUED` for `analyzer`.
pub(super) fn new_analysis(
    tenant: Uuid,
    call: Uuid,
    id: Uuid,
    analyzer: &str,
    at: DateTime<Utc>,
) -> analyses::Model {
    analyses::Model {
        id,
        tenant_id: tenant,
        call_id: call,
        analyzer: Some(analyzer.to_string()),
        model: None,
        prompt_version: None,
        status: CallStatus::Queued.as_str().into(),
        error: None,
        attempts: 0,
        result_key: None,
        model_responses_key: None,
        prompt_tokens: None,
        output_tokens: None,
        total_tokens: None,
        created_at: at,
        started_at: None,
        completed_at: None,
    }
}

pub(super) async fn find_analysis<C: ConnectionTrait>(
    db: &C,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<AnalysisRecord>, sea_orm::DbErr> {
    Ok(analyses::Entity::find_by_id(id)
        .filter(analyses::Column::TenantId.eq(tenant))
        .one(db)
        .await?
        .map(Into::into))
}

/// Sets an analysis's status (and error, when given), leaving the rest.
pub(super) async fn set_analysis_status<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    id: Uuid,
    status: CallStatus,
    error: Option<&str>,
) -> Result<(), sea_orm::DbErr> {
    analyses::Entity::update_many()
        .col_expr(analyses::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            analyses::Column::Error,
            Expr::value(error.map(str::to_string)),
        )
        .filter(analyses::Column::Id.eq(id))
        .filter(analyses::Column::TenantId.eq(tenant))
        .exec(txn)
        .await?;
    Ok(())
}

/// The blob keys every analysis of a call wrote (results and raw model responses).
pub(super) async fn blob_keys_of_call<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    call: Uuid,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let rows = analyses::Entity::find()
        .filter(analyses::Column::TenantId.eq(tenant))
        .filter(analyses::Column::CallId.eq(call))
        .all(txn)
        .await?;
    Ok(rows
        .into_iter()
        .flat_map(|a| [a.result_key, a.model_responses_key])
        .flatten()
        .collect())
}

pub(super) async fn delete_analyses_of_call<C: ConnectionTrait>(
    txn: &C,
    tenant: Uuid,
    call: Uuid,
) -> Result<(), sea_orm::DbErr> {
    analyses::Entity::delete_many()
        .filter(analyses::Column::TenantId.eq(tenant))
        .filter(analyses::Column::CallId.eq(call))
        .exec(txn)
        .await?;
    Ok(())
}

impl Store {
    /// Queues a new analysis of a finished (`COMPLETED` or `FAILED`) call by `analyzer`, with its
    /// `REANALYZED` event and job: the call is `QUEUED` again, its results stay those of its
    /// latest successful analysis until the new one succeeds. Refused while an analysis is queued
    /// or running.
    pub async fn reanalyze_call(
        &self,
        tenant: Uuid,
        id: Uuid,
        analyzer: &str,
    ) -> AppResult<Change> {
        let txn = self.tenant_txn(tenant).await?;
        if !lock_call(&txn, tenant, id).await? {
            return Ok(Change::Missing);
        }
        let Some(call) = find_call(&txn, tenant, id).await? else {
            return Ok(Change::Missing);
        };
        if ![CallStatus::Completed.as_str(), CallStatus::Failed.as_str()]
            .contains(&call.status.as_str())
        {
            txn.commit().await?;
            return Ok(Change::Refused(call));
        }
        let analysis = Uuid::new_v4();
        insert_analysis(&txn, tenant, id, analysis, analyzer).await?;
        calls::Entity::update_many()
            .col_expr(
                calls::Column::Status,
                Expr::value(CallStatus::Queued.as_str()),
            )
            .col_expr(calls::Column::CurrentAnalysisId, Expr::value(analysis))
            .col_expr(calls::Column::Error, Expr::value(Option::<String>::None))
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        record_event(
            &txn,
            tenant,
            id,
            event_kind::REANALYZED,
            CallStatus::Queued,
            Some(serde_json::json!({ "analysisId": analysis, "analyzer": analyzer })),
        )
        .await?;
        enqueue_job(
            &txn,
            &JobMessage {
                tenant_id: tenant,
                call_id: id,
                analysis_id: Some(analysis),
                traceparent: crate::telemetry::current_traceparent(),
            },
        )
        .await?;
        let call = find_call(&txn, tenant, id).await?;
        txn.commit().await?;
        Ok(call.map_or(Change::Missing, Change::Done))
    }

    /// Every analysis of some calls of a tenant (for a DataLoader), oldest first per call.
    pub async fn analyses_of_calls(
        &self,
        tenant: Uuid,
        call_ids: &[Uuid],
    ) -> anyhow::Result<HashMap<Uuid, Vec<AnalysisRecord>>> {
        let select = analyses::Entity::find()
            .filter(analyses::Column::TenantId.eq(tenant))
            .filter(analyses::Column::CallId.is_in(call_ids.iter().copied()))
            .order_by_asc(analyses::Column::CreatedAt)
            .order_by_asc(analyses::Column::Id);
        let rows = self.tenant_read(tenant, select).await?;
        let mut out: HashMap<Uuid, Vec<AnalysisRecord>> = HashMap::new();
        for r in rows {
            out.entry(r.call_id).or_default().push(r.into());
        }
        Ok(out)
    }

    /// One analysis of a tenant's.
    pub async fn get_analysis(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> anyhow::Result<Option<AnalysisRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let a = find_analysis(&txn, tenant, id).await?;
        txn.commit().await?;
        Ok(a)
    }
}
