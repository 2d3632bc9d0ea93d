//! The audit log: every change to a tenant or its keys, with who made it and when, recorded in
//! the transaction of the change itself (so there is no change without its record, and no record
//! of a change that rolled back); read by admins a page at a time, newest first.

use uuid::Uuid;

use crate::domain::AuditRecord;
use crate::error::{AppError, AppResult};
use crate::services::auth::{Caller, Permission};
use crate::store::Store;

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

/// One page of the audit log, newest first.
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// Pass it as `after` for the next (older) page; `None` when the page is empty.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// The audit log of the caller's tenant, or of `tenant` for the platform admin. Admins only.
pub async fn list(
    store: &Store,
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
    let before = after
        .map(|a| a.parse::<i64>())
        .transpose()
        .map_err(|_| AppError::bad_input("invalid cursor"))?;
    let mut entries = store.audit_page(tenant, before, limit).await?;
    let has_next_page = entries.len() > limit;
    entries.truncate(limit);
    Ok(AuditPage {
        end_cursor: entries.last().map(|e| e.id.to_string()),
        entries,
        has_next_page,
    })
}
