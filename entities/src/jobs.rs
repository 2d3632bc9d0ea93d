//! The embedded job queue: SQS semantics (visibility lease, receive count, dead letter) in a table.
//! Times are milliseconds since the Unix epoch so that comparisons are exact on every database.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub queue: String,
    pub payload: Json,
    pub visible_at: i64,
    pub receive_count: i32,
    pub receipt: Option<String>,
    pub created_at: i64,
    pub dead_at: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub dead_reason: Option<String>,
    /// Sending the same key again while the job exists is a no-op (the relay's outbox row id).
    #[sea_orm(unique)]
    pub dedup_key: Option<String>,
    /// When a dead letter was handled (its call marked `FAILED`).
    pub dead_handled_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
