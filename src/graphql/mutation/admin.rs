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
    /// Creates a tenant (platform admin only).
    async fn create_tenant(
        &self,
        ctx: &Context<'_>,
        input: CreateTenantInput,
    ) -> Result<CreateTenantPayload> {
        let t = auth::create_tenant(&state(ctx).db, caller(ctx)?, &input.name)
            .await
            .map_err(|e| e.extend())?;
        Ok(CreateTenantPayload { tenant: t.into() })
    }

    /// Creates an API key; its secret is returned once and never again.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<CreateApiKeyPayload> {
        let tenant = input.tenant_id.as_ref().map(parse_id).transpose()?;
        let (key, secret) = auth::create_api_key(
            &state(ctx).db,
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

    /// Revokes an API key; it stops working at once.
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<ApiKey> {
        let id = parse_id(&id)?;
        Ok(auth::revoke_api_key(&state(ctx).db, caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?
            .into())
    }
}
