//! One event for one webhook: created when the relay sequences the event, attempted through the
//! outbox until the endpoint accepts it or the retries run out.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: i64,
    pub event_seq: Option<i64>,
    pub event_kind: String,
    pub event_status: String,
    pub call_id: Uuid,
    pub event_created_at: DateTimeUtc,
    /// The `webhook-id` header: the same for every attempt.
    pub message_id: String,
    /// The request body, fixed by the first attempt.
    #[sea_orm(column_type = "Text", nullable)]
    pub body: Option<String>,
    /// `PENDING`, `RETRYING`, `DELIVERED` or `DEAD`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTimeUtc>,
    pub last_response_status: Option<i32>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
