//! Who am I, the tenant's keys, and its audit log.

use async_graphql::{Context, Object, Result, ID};

use crate::graphql::types::{ApiKey, AuditLogPage, Viewer};
use crate::graphql::{caller, parse_id, state};
use crate::services::{audit, auth};
use async_graphql::ErrorExtensions;

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The caller: tenant, role and whether it is the platform admin. Any role.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        // The credential's own details (a JWT's expiry): not an answer to keep.
        crate::graphql::response_cache::not_cacheable(ctx);
        let c = caller(ctx)?;
        let tenant = auth::get_tenant(&state(ctx).store, c, c.tenant_id)
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
        Ok(auth::list_api_keys(&state(ctx).store, caller(ctx)?)
            .await
            .map_err(|e| e.extend())?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The audit log of the caller's tenant: keys created and revoked, the tenant's creation,
    /// each with who made the change and when; newest first. ADMIN only (FORBIDDEN otherwise);
    /// another tenant's log needs the platform admin (FORBIDDEN otherwise).
    #[graphql(complexity = "(first.unwrap_or(20).clamp(0, 1000) as usize) * child_complexity + 1")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "How many entries: 0 to the page-size limit (100 unless configured; BAD_USER_INPUT otherwise). Default 20."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "The `endCursor` of the previous page, for the entries older than it (BAD_USER_INPUT for an invalid one)."
        )]
        after: Option<String>,
        #[graphql(
            desc = "Whose log: the platform admin may name any tenant. Default: the caller's tenant."
        )]
        tenant_id: Option<ID>,
    ) -> Result<AuditLogPage> {
        let tenant = tenant_id.as_ref().map(parse_id).transpose()?;
        let st = state(ctx);
        let page = audit::list(
            &st.store,
            caller(ctx)?,
            tenant,
            first,
            after.as_deref(),
            st.settings.max_page_size,
        )
        .await
        .map_err(|e| e.extend())?;
        Ok(AuditLogPage {
            entries: page.entries.into_iter().map(Into::into).collect(),
            has_next_page: page.has_next_page,
            end_cursor: page.end_cursor,
        })
    }
}
