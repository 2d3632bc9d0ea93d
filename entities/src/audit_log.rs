//! One change to a tenant (a key created or revoked, the tenant created) and who made it.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The tenant the change concerns.
    pub tenant_id: Uuid,
    /// The actor's own tenant (a platform admin may act on another); none for the service itself.
    pub actor_tenant_id: Option<Uuid>,
    /// The API key that made the change, if one did.
    pub actor_key_id: Option<Uuid>,
    /// The JWT subject that made the change, if a JWT did.
    pub actor_subject: Option<String>,
    pub actor_role: Option<String>,
    pub actor_platform_admin: bool,
    /// What happened: `tenant.created`, `api_key.created`, `api_key.revoked`.
    pub action: String,
    /// The id of what changed (the key, the tenant).
    pub target: String,
    pub details: Option<Json>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
