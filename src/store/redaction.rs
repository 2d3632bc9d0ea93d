//! A tenant's redaction policy, and what an analysis under it did to its call's recording.

use chrono::Utc;
use entities::{calls, redaction_policies};
use sea_orm::prelude::*;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, QueryFilter};

use super::Store;
use crate::domain::redaction::RedactionPolicy;
use crate::error::AppResult;

/// The recording that replaced a call's original: the redacted copy.
#[derive(Debug, Clone)]
pub struct RedactedRecording {
    pub key: String,
    pub content_type: String,
    pub bytes: i64,
    pub sha256: String,
    /// Where the original is kept (`None`: it is deleted).
    pub original_key: Option<String>,
}

impl Store {
    /// The tenant's policy (nothing redacted when it has set none).
    pub async fn redaction_policy(&self, tenant: Uuid) -> AppResult<RedactionPolicy> {
        // One round trip on Postgres (a read of the tenant's own row, see `tenant_read`): it is
        // on every submission's path.
        let row = self
            .tenant_read(tenant, redaction_policies::Entity::find_by_id(tenant))
            .await?
            .into_iter()
            .next();
        Ok(
            row.map_or_else(RedactionPolicy::default, |r| RedactionPolicy {
                transcript: r.transcript,
                audio: r.audio,
                delete_original: r.delete_original,
            }),
        )
    }

    /// Sets the tenant's policy, for the calls submitted from now on.
    pub async fn set_redaction_policy(
        &self,
        tenant: Uuid,
        policy: RedactionPolicy,
    ) -> AppResult<RedactionPolicy> {
        use redaction_policies::Column as C;
        let txn = self.tenant_txn(tenant).await?;
        redaction_policies::Entity::insert(redaction_policies::ActiveModel {
            tenant_id: Set(tenant),
            transcript: Set(policy.transcript),
            audio: Set(policy.audio),
            delete_original: Set(policy.delete_original),
            updated_at: Set(Utc::now()),
        })
        .on_conflict(
            OnConflict::column(C::TenantId)
                .update_columns([C::Transcript, C::Audio, C::DeleteOriginal, C::UpdatedAt])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        txn.commit().await?;
        Ok(policy)
    }

    /// Records what redaction found, points the call at its redacted recording, stores its
    /// integrator's transcript as redacted (when given) and queues the deletion of `delete` (the
    /// original recording and its upload) through the outbox. Done before the analysis completes, in its own transaction: the
    /// original is deleted only after this commits.
    pub async fn record_redaction(
        &self,
        tenant: Uuid,
        call: Uuid,
        recording: Option<&RedactedRecording>,
        transcript_input: Option<serde_json::Value>,
        redactions: serde_json::Value,
        delete: Vec<String>,
    ) -> AppResult<()> {
        use calls::Column as C;
        let txn = self.tenant_txn(tenant).await?;
        let mut update = calls::Entity::update_many()
            .col_expr(C::UpdatedAt, Expr::value(Utc::now()))
            .col_expr(C::Redactions, Expr::value(redactions));
        if let Some(r) = recording {
            update = update
                .col_expr(C::RecordingKey, Expr::value(r.key.clone()))
                .col_expr(C::RecordingType, Expr::value(r.content_type.clone()))
                .col_expr(C::RecordingBytes, Expr::value(r.bytes))
                .col_expr(C::RecordingSha256, Expr::value(r.sha256.clone()))
                .col_expr(C::OriginalRecordingKey, Expr::value(r.original_key.clone()));
        }
        if let Some(t) = transcript_input {
            update = update.col_expr(C::TranscriptInput, Expr::value(t));
        }
        update
            .filter(C::Id.eq(call))
            .filter(C::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        super::events::enqueue_blob_delete(&txn, delete, None).await?;
        txn.commit().await?;
        Ok(())
    }
}
