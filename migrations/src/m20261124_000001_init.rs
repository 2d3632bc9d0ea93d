//! The initial schema: tenants, keys, calls with their segments and events, the outbox,
//! the event sequencer and the embedded job queue.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    KeyHash,
    Role,
    PlatformAdmin,
    CreatedAt,
    RevokedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    TenantId,
    ExternalId,
    IdempotencyKey,
    Status,
    Direction,
    FromNumber,
    ToNumber,
    Agent,
    StartedAt,
    DurationMs,
    Channels,
    RecordingKey,
    RecordingType,
    RecordingBytes,
    RecordingSha256,
    ResultKey,
    Language,
    TranscriptText,
    TranscriptInput,
    Summary,
    SentimentScore,
    SentimentLabel,
    Topics,
    ActionItems,
    Metrics,
    Tags,
    Metadata,
    Analyzer,
    Attempts,
    Error,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum CallSegments {
    Table,
    Id,
    CallId,
    TenantId,
    Idx,
    Speaker,
    Channel,
    StartMs,
    EndMs,
    Text,
    Sentiment,
}

#[derive(DeriveIden)]
enum CallEvents {
    Table,
    Id,
    Seq,
    TenantId,
    CallId,
    Kind,
    Status,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    Destination,
    Payload,
    CreatedAt,
    AvailableAt,
    Attempts,
    LastError,
    SentAt,
}

#[derive(DeriveIden)]
enum Sequencer {
    Table,
    Id,
    Value,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Queue,
    Payload,
    VisibleAt,
    ReceiveCount,
    Receipt,
    CreatedAt,
    DeadAt,
    DeadReason,
    DedupKey,
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn text_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string().null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(ColumnDef::new(Tenants::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Tenants::Name).string().not_null())
                    .col(ts(Tenants::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(ColumnDef::new(ApiKeys::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(ApiKeys::TenantId).uuid().not_null())
                    .col(ColumnDef::new(ApiKeys::Name).string().not_null())
                    .col(ColumnDef::new(ApiKeys::Prefix).string().not_null())
                    .col(
                        ColumnDef::new(ApiKeys::KeyHash)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(ApiKeys::Role).string().not_null())
                    .col(ColumnDef::new(ApiKeys::PlatformAdmin).boolean().not_null())
                    .col(ts(ApiKeys::CreatedAt))
                    .col(ts_null(ApiKeys::RevokedAt))
                    .col(ts_null(ApiKeys::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ApiKeys::Table, ApiKeys::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .col(ColumnDef::new(Calls::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Calls::TenantId).uuid().not_null())
                    .col(text_null(Calls::ExternalId))
                    .col(text_null(Calls::IdempotencyKey))
                    .col(ColumnDef::new(Calls::Status).string().not_null())
                    .col(text_null(Calls::Direction))
                    .col(text_null(Calls::FromNumber))
                    .col(text_null(Calls::ToNumber))
                    .col(text_null(Calls::Agent))
                    .col(ts_null(Calls::StartedAt))
                    .col(ColumnDef::new(Calls::DurationMs).big_integer().null())
                    .col(ColumnDef::new(Calls::Channels).json_binary().null())
                    .col(text_null(Calls::RecordingKey))
                    .col(text_null(Calls::RecordingType))
                    .col(ColumnDef::new(Calls::RecordingBytes).big_integer().null())
                    .col(text_null(Calls::RecordingSha256))
                    .col(text_null(Calls::ResultKey))
                    .col(text_null(Calls::Language))
                    .col(ColumnDef::new(Calls::TranscriptText).text().null())
                    .col(ColumnDef::new(Calls::TranscriptInput).json_binary().null())
                    .col(ColumnDef::new(Calls::Summary).text().null())
                    .col(ColumnDef::new(Calls::SentimentScore).double().null())
                    .col(text_null(Calls::SentimentLabel))
                    .col(ColumnDef::new(Calls::Topics).json_binary().not_null())
                    .col(ColumnDef::new(Calls::ActionItems).json_binary().not_null())
                    .col(ColumnDef::new(Calls::Metrics).json_binary().null())
                    .col(ColumnDef::new(Calls::Tags).json_binary().not_null())
                    .col(ColumnDef::new(Calls::Metadata).json_binary().null())
                    .col(text_null(Calls::Analyzer))
                    .col(
                        ColumnDef::new(Calls::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Calls::Error).text().null())
                    .col(ts(Calls::CreatedAt))
                    .col(ts(Calls::UpdatedAt))
                    .col(ts_null(Calls::CompletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Calls::Table, Calls::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("calls_tenant_idempotency")
                    .table(Calls::Table)
                    .col(Calls::TenantId)
                    .col(Calls::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("calls_tenant_created")
                    .table(Calls::Table)
                    .col(Calls::TenantId)
                    .col(Calls::CreatedAt)
                    .col(Calls::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CallSegments::Table)
                    .col(
                        ColumnDef::new(CallSegments::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(CallSegments::CallId).uuid().not_null())
                    .col(ColumnDef::new(CallSegments::TenantId).uuid().not_null())
                    .col(ColumnDef::new(CallSegments::Idx).integer().not_null())
                    .col(ColumnDef::new(CallSegments::Speaker).string().not_null())
                    .col(ColumnDef::new(CallSegments::Channel).integer().not_null())
                    .col(
                        ColumnDef::new(CallSegments::StartMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(CallSegments::EndMs).big_integer().not_null())
                    .col(ColumnDef::new(CallSegments::Text).text().null())
                    .col(ColumnDef::new(CallSegments::Sentiment).double().null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(CallSegments::Table, CallSegments::CallId)
                            .to(Calls::Table, Calls::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("call_segments_call")
                    .table(CallSegments::Table)
                    .col(CallSegments::CallId)
                    .col(CallSegments::Idx)
                    .to_owned(),
            )
            .await?;

        // Events outlive their call: a DELETED event must still reach subscribers.
        manager
            .create_table(
                Table::create()
                    .table(CallEvents::Table)
                    .col(
                        ColumnDef::new(CallEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(CallEvents::Seq)
                            .big_integer()
                            .null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(CallEvents::TenantId).uuid().not_null())
                    .col(ColumnDef::new(CallEvents::CallId).uuid().not_null())
                    .col(ColumnDef::new(CallEvents::Kind).string().not_null())
                    .col(ColumnDef::new(CallEvents::Status).string().not_null())
                    .col(ColumnDef::new(CallEvents::Payload).json_binary().null())
                    .col(ts(CallEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("call_events_tenant_seq")
                    .table(CallEvents::Table)
                    .col(CallEvents::TenantId)
                    .col(CallEvents::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("call_events_call")
                    .table(CallEvents::Table)
                    .col(CallEvents::CallId)
                    .col(CallEvents::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::Destination).string().not_null())
                    .col(ColumnDef::new(Outbox::Payload).json_binary().not_null())
                    .col(ts(Outbox::CreatedAt))
                    .col(ts(Outbox::AvailableAt))
                    .col(
                        ColumnDef::new(Outbox::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Outbox::LastError).text().null())
                    .col(ts_null(Outbox::SentAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_pending")
                    .table(Outbox::Table)
                    .col(Outbox::SentAt)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Sequencer::Table)
                    .col(
                        ColumnDef::new(Sequencer::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Sequencer::Value).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(Sequencer::Table)
                    .columns([Sequencer::Id, Sequencer::Value])
                    .values_panic([1.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(
                        ColumnDef::new(Jobs::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Jobs::Queue).string().not_null())
                    .col(ColumnDef::new(Jobs::Payload).json_binary().not_null())
                    .col(ColumnDef::new(Jobs::VisibleAt).big_integer().not_null())
                    .col(
                        ColumnDef::new(Jobs::ReceiveCount)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(text_null(Jobs::Receipt))
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::DeadAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::DeadReason).text().null())
                    .col(ColumnDef::new(Jobs::DedupKey).string().null().unique_key())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("jobs_ready")
                    .table(Jobs::Table)
                    .col(Jobs::Queue)
                    .col(Jobs::DeadAt)
                    .col(Jobs::VisibleAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Jobs::Table.into_iden(),
            Sequencer::Table.into_iden(),
            Outbox::Table.into_iden(),
            CallEvents::Table.into_iden(),
            CallSegments::Table.into_iden(),
            Calls::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
