//! Who am I, and the tenant's keys.

use async_graphql::{Context, Object, Result};

use crate::graphql::types::{ApiKey, Viewer};
use crate::graphql::{caller, state};
use crate::services::auth;
use async_graphql::ErrorExtensions;

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The caller: tenant, role and whether it is the platform admin. Any role.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let c = caller(ctx)?;
        let tenant = auth::get_tenant(&state(ctx).db, c, c.tenant_id)
            .await
            .map_err(|e| e.extend())?;
        Ok(Viewer {
            tenant: tenant.into(),
            role: c.role,
            platform_admin: c.platform_admin,
        })
    }

    /// The API keys of the caller's tenant, oldest first, revoked ones included (see
    /// `revokedAt`). ADMIN only (FORBIDDEN otherwise).
    async fn api_keys(&self, ctx: &Context<'_>) -> Result<Vec<ApiKey>> {
        Ok(auth::list_api_keys(&state(ctx).db, caller(ctx)?)
            .await
            .map_err(|e| e.extend())?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}
