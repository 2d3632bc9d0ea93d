//! The audit log: every change to a tenant or its keys, with who made it and when, recorded in
//! the transaction of the change itself (so there is no change without its record, and no record
//! of a change that rolled back); read by admins a page at a time, newest first.

use chrono::Utc;
use entities::audit_log;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::services::auth::{Caller, Permission};

/// What an audit log entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum AuditAction {
    /// A tenant was created, by the platform admin or, at first start, by the service itself.
    /// `target` is the tenant's id; `details` holds its `name`.
    TenantCreated,
    /// An API key was created. `target` is the key's id; `details` holds its `name`, `role`,
    /// `prefix` and `platformAdmin`.
    ApiKeyCreated,
    /// An API key was revoked: from then on it authenticates nothing, and the WebSockets and
    /// SSE streams it opened are closed. `target` is the key's id; `details` holds its `name`
    /// and `role`.
    ApiKeyRevoked,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantCreated => "tenant.created",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tenant.created" => Some(Self::TenantCreated),
            "api_key.created" => Some(Self::ApiKeyCreated),
            "api_key.revoked" => Some(Self::ApiKeyRevoked),
            _ => None,
        }
    }
}

/// Records a change of `tenant_id`, made by `actor` (`None`: the service itself, e.g. the
/// bootstrap at first start). Call it inside the transaction that makes the change.
pub async fn record<C: ConnectionTrait>(
    txn: &C,
    tenant_id: Uuid,
    actor: Option<&Caller>,
    action: AuditAction,
    target: Uuid,
    details: serde_json::Value,
) -> AppResult<()> {
    audit_log::ActiveModel {
        tenant_id: Set(tenant_id),
        actor_tenant_id: Set(actor.map(|a| a.tenant_id)),
        actor_key_id: Set(actor.and_then(|a| a.key_id)),
        actor_subject: Set(actor.and_then(|a| a.subject.clone())),
        actor_role: Set(actor.map(|a| a.role.as_str().to_string())),
        actor_platform_admin: Set(actor.is_some_and(|a| a.platform_admin)),
        action: Set(action.as_str().into()),
        target: Set(target.to_string()),
        details: Set(Some(details)),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// One page of the audit log, newest first.
pub struct AuditPage {
    pub entries: Vec<audit_log::Model>,
    /// Pass it as `after` for the next (older) page; `None` when the page is empty.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// The audit log of the caller's tenant, or of `tenant` for the platform admin. Admins only.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    tenant: Option<Uuid>,
    first: Option<i32>,
    after: Option<&str>,
    max_page_size: usize,
) -> AppResult<AuditPage> {
    caller.require(Permission::ReadAuditLog)?;
    let tenant = tenant.unwrap_or(caller.tenant_id);
    if tenant != caller.tenant_id && !caller.platform_admin {
        return Err(AppError::Forbidden(
            "admins read their own tenant's audit log only".into(),
        ));
    }
    let limit = match first {
        None => 20.min(max_page_size),
        Some(n) if n >= 0 && n as usize <= max_page_size => n as usize,
        Some(_) => {
            return Err(AppError::bad_input(format!(
                "first must be between 0 and {max_page_size}"
            )))
        }
    };
    let mut query = audit_log::Entity::find().filter(audit_log::Column::TenantId.eq(tenant));
    if let Some(after) = after {
        let id: i64 = after
            .parse()
            .map_err(|_| AppError::bad_input("invalid cursor"))?;
        query = query.filter(audit_log::Column::Id.lt(id));
    }
    let mut entries = query
        .order_by_desc(audit_log::Column::Id)
        .limit(limit as u64 + 1)
        .all(db)
        .await?;
    let has_next_page = entries.len() > limit;
    entries.truncate(limit);
    Ok(AuditPage {
        end_cursor: entries.last().map(|e| e.id.to_string()),
        entries,
        has_next_page,
    })
}
