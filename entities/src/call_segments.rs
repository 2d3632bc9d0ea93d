//! One stretch of speech in a call, in time order.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "call_segments")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub call_id: Uuid,
    pub tenant_id: Uuid,
    pub idx: i32,
    pub speaker: String,
    pub channel: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    #[sea_orm(column_type = "Text", nullable)]
    pub text: Option<String>,
    #[sea_orm(column_type = "Double", nullable)]
    pub sentiment: Option<f64>,
    /// False where the words lie on silence of their channel (see `domain::Segment`).
    pub grounded: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
