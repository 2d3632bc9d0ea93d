//! A category a tenant defined: what each analysis looks for in its calls.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "categories")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// The name lower-cased: unique per tenant.
    pub name_key: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub instructions: Option<String>,
    /// A JSON array of strings.
    pub keywords: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
