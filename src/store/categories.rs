//! A tenant's categories: created, changed and deleted by its analysts, read by every analysis.

use chrono::Utc;
use entities::categories;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use super::Store;
use crate::domain::CategoryRecord;
use crate::error::AppResult;

impl From<categories::Model> for CategoryRecord {
    fn from(m: categories::Model) -> Self {
        Self {
            id: m.id,
            tenant_id: m.tenant_id,
            name: m.name,
            instructions: m.instructions,
            keywords: serde_json::from_value(m.keywords).unwrap_or_default(),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A category's fields, checked by the service.
#[derive(Debug, Clone)]
pub struct CategoryFields {
    pub name: String,
    pub instructions: Option<String>,
    pub keywords: Vec<String>,
}

/// A category of the tenant, its row locked for the rest of the transaction by writing it first
/// (`updated_at`), as `calls::lock_call` does, so that a SQLite transaction never has to upgrade
/// a read lock. `None` when the tenant has no such category.
async fn locked_category(
    txn: &sea_orm::DatabaseTransaction,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<categories::Model>, sea_orm::DbErr> {
    let locked = categories::Entity::update_many()
        .col_expr(categories::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(categories::Column::Id.eq(id))
        .filter(categories::Column::TenantId.eq(tenant))
        .exec(txn)
        .await?
        .rows_affected
        > 0;
    if !locked {
        return Ok(None);
    }
    categories::Entity::find_by_id(id)
        .filter(categories::Column::TenantId.eq(tenant))
        .one(txn)
        .await
}

impl Store {
    /// A tenant's categories, by name.
    pub async fn list_categories(&self, tenant: Uuid) -> AppResult<Vec<CategoryRecord>> {
        let select = categories::Entity::find()
            .filter(categories::Column::TenantId.eq(tenant))
            .order_by_asc(categories::Column::Name)
            .order_by_asc(categories::Column::Id);
        let rows = self.tenant_read(tenant, select).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// How many categories a tenant has.
    pub async fn count_categories(&self, tenant: Uuid) -> AppResult<u64> {
        use sea_orm::PaginatorTrait;
        let txn = self.tenant_txn(tenant).await?;
        let n = categories::Entity::find()
            .filter(categories::Column::TenantId.eq(tenant))
            .count(&txn)
            .await?;
        txn.commit().await?;
        Ok(n)
    }

    /// Creates a category. A name taken in the tenant (whatever its case) is a unique violation,
    /// returned as it is.
    pub async fn create_category(
        &self,
        tenant: Uuid,
        fields: CategoryFields,
    ) -> AppResult<CategoryRecord> {
        let now = Utc::now();
        let txn = self.tenant_txn(tenant).await?;
        let row = categories::ActiveModel {
            id: Set(Uuid::new_v4()),
            tenant_id: Set(tenant),
            name_key: Set(fields.name.to_lowercase()),
            name: Set(fields.name),
            instructions: Set(fields.instructions),
            keywords: Set(serde_json::json!(fields.keywords)),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(row.into())
    }

    /// Changes a category with what `change` makes of it; `None` when the tenant has no such
    /// category. A name taken in the tenant (whatever its case) is a unique violation, returned
    /// as it is.
    pub async fn update_category(
        &self,
        tenant: Uuid,
        id: Uuid,
        change: impl FnOnce(CategoryRecord) -> AppResult<CategoryFields>,
    ) -> AppResult<Option<CategoryRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(current) = locked_category(&txn, tenant, id).await? else {
            return Ok(None);
        };
        let fields = change(current.clone().into())?;
        let mut row: categories::ActiveModel = current.into();
        row.name_key = Set(fields.name.to_lowercase());
        row.name = Set(fields.name);
        row.instructions = Set(fields.instructions);
        row.keywords = Set(serde_json::json!(fields.keywords));
        row.updated_at = Set(Utc::now());
        let row = row.update(&txn).await?;
        txn.commit().await?;
        Ok(Some(row.into()))
    }

    /// Deletes a category; the analyses that matched it keep its name. `None` when the tenant
    /// has no such category.
    pub async fn delete_category(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> AppResult<Option<CategoryRecord>> {
        let txn = self.tenant_txn(tenant).await?;
        let Some(current) = locked_category(&txn, tenant, id).await? else {
            return Ok(None);
        };
        categories::Entity::delete_many()
            .filter(categories::Column::Id.eq(id))
            .filter(categories::Column::TenantId.eq(tenant))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Some(current.into()))
    }
}
