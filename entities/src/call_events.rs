//! Everything that happens to a call. `seq` is assigned by the relay in commit order and is
//! the subscription cursor; it stays NULL until the relay has sequenced the event.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "call_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub seq: Option<i64>,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub kind: String,
    pub status: String,
    pub payload: Option<Json>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
