//! Tenants and API keys, each change with its audit entry in the same transaction. Keys are
//! stored as a SHA-256 hash and a display prefix; the secret never reaches the store.

use chrono::Utc;
use entities::{api_keys, tenants};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};
use uuid::Uuid;

use super::audit::{self, API_KEY_CREATED, API_KEY_REVOKED, TENANT_CREATED};
use super::Store;
use crate::domain::{Actor, ApiKeyRecord, TenantRecord};
use crate::error::AppResult;

impl From<api_keys::Model> for ApiKeyRecord {
    fn from(k: api_keys::Model) -> Self {
        Self {
            id: k.id,
            tenant_id: k.tenant_id,
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            platform_admin: k.platform_admin,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

impl From<tenants::Model> for TenantRecord {
    fn from(t: tenants::Model) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

/// A key to create: its hash and prefix (computed by the service from the secret).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub role: String,
    pub platform_admin: bool,
}

/// What the audit log keeps of a key: never its hash.
fn key_details(key: &api_keys::Model) -> serde_json::Value {
    serde_json::json!({
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "platformAdmin": key.platform_admin,
    })
}

async fn insert_key<C: ConnectionTrait>(
    txn: &C,
    tenant_id: Uuid,
    key: NewKey,
    actor: Option<&Actor>,
) -> AppResult<api_keys::Model> {
    let key = api_keys::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant_id),
        name: Set(key.name),
        prefix: Set(key.prefix),
        key_hash: Set(key.key_hash),
        role: Set(key.role),
        platform_admin: Set(key.platform_admin),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(txn)
    .await?;
    audit::record(
        txn,
        tenant_id,
        actor,
        API_KEY_CREATED,
        key.id,
        key_details(&key),
    )
    .await?;
    Ok(key)
}

async fn insert_tenant<C: ConnectionTrait>(
    txn: &C,
    id: Uuid,
    name: String,
    actor: Option<&Actor>,
) -> AppResult<tenants::Model> {
    let tenant = tenants::ActiveModel {
        id: Set(id),
        name: Set(name),
        created_at: Set(Utc::now()),
    }
    .insert(txn)
    .await?;
    audit::record(
        txn,
        tenant.id,
        actor,
        TENANT_CREATED,
        tenant.id,
        serde_json::json!({ "name": tenant.name }),
    )
    .await?;
    Ok(tenant)
}

impl Store {
    pub async fn tenant_count(&self) -> AppResult<u64> {
        Ok(tenants::Entity::find().count(&self.db).await?)
    }

    pub async fn get_tenant(&self, id: Uuid) -> AppResult<Option<TenantRecord>> {
        Ok(tenants::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    /// Creates a tenant (audited) and, for the bootstrap at first start, its first key.
    pub async fn create_tenant(
        &self,
        name: String,
        actor: Option<&Actor>,
        first_key: Option<NewKey>,
    ) -> AppResult<TenantRecord> {
        let id = Uuid::new_v4();
        let txn = self.tenant_txn(id).await?;
        let tenant = insert_tenant(&txn, id, name, actor).await?;
        if let Some(key) = first_key {
            insert_key(&txn, id, key, actor).await?;
        }
        txn.commit().await?;
        Ok(tenant.into())
    }

    /// Creates a key in `tenant` (audited); `None` when there is no such tenant.
    pub async fn create_key(
        &self,
        tenant: Uuid,
        key: NewKey,
        actor: &Actor,
    ) -> AppResult<Option<ApiKeyRecord>> {
        // Tenants are never deleted: checked before the transaction, which then only writes.
        if tenants::Entity::find_by_id(tenant)
            .one(&self.db)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let txn = self.tenant_txn(tenant).await?;
        let key = insert_key(&txn, tenant, key, Some(actor)).await?;
        txn.commit().await?;
        Ok(Some(key.into()))
    }

    /// Revokes a key of `tenant`; only the first of concurrent revocations changes the row, and
    /// only it is audited. `None` when the tenant has no such key.
    pub async fn revoke_key(
        &self,
        tenant: Uuid,
        id: Uuid,
        actor: &Actor,
    ) -> AppResult<Option<ApiKeyRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let changed = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(api_keys::Column::Id.eq(id))
            .filter(api_keys::Column::TenantId.eq(tenant))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        let key = api_keys::Entity::find_by_id(id)
            .filter(api_keys::Column::TenantId.eq(tenant))
            .one(&txn)
            .await?;
        if let (Some(key), true) = (&key, changed > 0) {
            audit::record(
                &txn,
                tenant,
                Some(actor),
                API_KEY_REVOKED,
                key.id,
                serde_json::json!({ "name": key.name, "role": key.role }),
            )
            .await?;
        }
        txn.commit().await?;
        Ok(key.map(Into::into))
    }

    pub async fn list_keys(&self, tenant: Uuid) -> AppResult<Vec<ApiKeyRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let keys = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(tenant))
            .order_by_asc(api_keys::Column::CreatedAt)
            .all(&txn)
            .await?;
        txn.commit().await?;
        Ok(keys.into_iter().map(Into::into).collect())
    }

    /// Records that a key was just used.
    pub async fn touch_key(&self, tenant: Uuid, id: Uuid) -> AppResult<()> {
        let txn = self.tenant_txn(tenant).await?;
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::LastUsedAt, Expr::value(Utc::now()))
            .filter(api_keys::Column::Id.eq(id))
            .filter(api_keys::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}
