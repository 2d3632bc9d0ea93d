//! Tenants and API keys.

use async_graphql::{Context, ErrorExtensions, Object, Result, ID};

use crate::graphql::types::{
    ApiKey, CreateApiKeyInput, CreateApiKeyPayload, CreateTenantInput, CreateTenantPayload,
};
use crate::graphql::{caller, parse_id, state};
use crate::services::auth;

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Creates a tenant. The platform admin only (FORBIDDEN otherwise). BAD_USER_INPUT for an
    /// invalid name.
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new tenant's name.")] input: CreateTenantInput,
    ) -> Result<CreateTenantPayload> {
        let t = auth::create_tenant(&state(ctx).store, caller(ctx)?, &input.name)
            .await
            .map_err(|e| e.extend())?;
        Ok(CreateTenantPayload { tenant: t.into() })
    }

    /// Creates an API key and returns its secret, once and never again. ADMIN only, for its own
    /// tenant; the platform admin for any tenant (FORBIDDEN otherwise). The new key is never a
    /// platform admin. BAD_USER_INPUT for an invalid name or tenant id; NOT_FOUND for an unknown
    /// tenant.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The key's tenant, role and name.")] input: CreateApiKeyInput,
    ) -> Result<CreateApiKeyPayload> {
        let tenant = input.tenant_id.as_ref().map(parse_id).transpose()?;
        let (key, secret) = auth::create_api_key(
            &state(ctx).store,
            caller(ctx)?,
            tenant,
            input.role,
            &input.name,
        )
        .await
        .map_err(|e| e.extend())?;
        Ok(CreateApiKeyPayload {
            secret,
            api_key: key.into(),
        })
    }

    /// Revokes an API key and returns it: from then on, requests with it fail with
    /// UNAUTHENTICATED (on other instances within a second), and the WebSockets and SSE streams
    /// it opened end within seconds (sockets close with 4403, streams with an UNAUTHENTICATED error). Revoking
    /// a revoked key changes nothing. ADMIN only, for keys of its own tenant; the platform admin
    /// for any key. NOT_FOUND when there is no such key (or it belongs to another tenant).
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The key's id (`ApiKey.id`, not its secret).")] id: ID,
    ) -> Result<ApiKey> {
        let id = parse_id(&id)?;
        let st = state(ctx);
        let key = auth::revoke_api_key(&st.store, caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?;
        st.auth.forget_key(key.id);
        st.revocations.revoked_here(key.id);
        Ok(key.into())
    }
}
