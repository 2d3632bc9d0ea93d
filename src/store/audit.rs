//! The audit log: written by the store's own key and tenant methods inside the transaction of
//! the change (no change without its record, no record of a change that rolled back), read a page
//! at a time, newest first.

use chrono::Utc;
use entities::audit_log;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::Store;
use crate::domain::{Actor, AuditRecord};
use crate::error::AppResult;

/// The actions recorded, as stored.
pub(super) const TENANT_CREATED: &str = "tenant.created";
pub(super) const API_KEY_CREATED: &str = "api_key.created";
pub(super) const API_KEY_REVOKED: &str = "api_key.revoked";

impl From<audit_log::Model> for AuditRecord {
    fn from(e: audit_log::Model) -> Self {
        Self {
            id: e.id,
            tenant_id: e.tenant_id,
            actor_tenant_id: e.actor_tenant_id,
            actor_key_id: e.actor_key_id,
            actor_subject: e.actor_subject,
            actor_role: e.actor_role,
            actor_platform_admin: e.actor_platform_admin,
            action: e.action,
            target: e.target,
            details: e.details,
            created_at: e.created_at,
        }
    }
}

/// Records a change of `tenant_id` made by `actor` (`None`: the service itself).
pub(super) async fn record<C: ConnectionTrait>(
    txn: &C,
    tenant_id: Uuid,
    actor: Option<&Actor>,
    action: &str,
    target: Uuid,
    details: serde_json::Value,
) -> AppResult<()> {
    audit_log::ActiveModel {
        tenant_id: Set(tenant_id),
        actor_tenant_id: Set(actor.map(|a| a.tenant_id)),
        actor_key_id: Set(actor.and_then(|a| a.key_id)),
        actor_subject: Set(actor.and_then(|a| a.subject.clone())),
        actor_role: Set(actor.map(|a| a.role.clone())),
        actor_platform_admin: Set(actor.is_some_and(|a| a.platform_admin)),
        action: Set(action.into()),
        target: Set(target.to_string()),
        details: Set(Some(details)),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(())
}

impl Store {
    /// Up to `limit + 1` entries of a tenant's audit log older than entry `before`, newest
    /// first.
    pub async fn audit_page(
        &self,
        tenant: Uuid,
        before: Option<i64>,
        limit: usize,
    ) -> AppResult<Vec<AuditRecord>> {
        let mut query = audit_log::Entity::find().filter(audit_log::Column::TenantId.eq(tenant));
        if let Some(id) = before {
            query = query.filter(audit_log::Column::Id.lt(id));
        }
        let txn = self.tenant_txn(tenant).await?;
        let rows = query
            .order_by_desc(audit_log::Column::Id)
            .limit(limit as u64 + 1)
            .all(&txn)
            .await?;
        txn.commit().await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
