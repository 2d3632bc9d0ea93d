//! Webhooks: a tenant's endpoints (`webhooks`), one delivery per event and endpoint
//! (`webhook_deliveries`, unique per pair), and every attempt at it (`webhook_attempts`); and a
//! dead letter for the outbox (`outbox.dead_at`), set when a destination's retries run out, and
//! the lease of a claimed outbox row (`outbox.leased_until`), so that the relay holds no lock
//! while it delivers.
//!
//! Deliveries are made where events get their positions: on Postgres the relay's sequencing
//! function (replaced here) inserts, in the same statement, a delivery for every endpoint of the
//! event's tenant whose kinds it matches, and an outbox row (`webhook`) for each; the store does
//! the same on SQLite. On Postgres the three tables are tenant tables under row-level security.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::m20261203_000001_row_level_security::{
    current_schema, definer_function, isolate_table, quote_ident, release_table,
    SEQUENCE_PENDING_BODY, SEQUENCE_PENDING_DECLARE,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
    TenantId,
    Url,
    Description,
    Events,
    Secret,
    PreviousSecret,
    PreviousSecretExpiresAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    TenantId,
    WebhookId,
    EventId,
    EventSeq,
    EventKind,
    EventStatus,
    CallId,
    EventCreatedAt,
    MessageId,
    Body,
    Status,
    Attempts,
    NextAttemptAt,
    LastResponseStatus,
    LastError,
    DeliveredAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    TenantId,
    DeliveryId,
    AttemptedAt,
    ResponseStatus,
    LatencyMs,
    Error,
    Succeeded,
    NextRetryAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    DeadAt,
    LeasedUntil,
}

const TABLES: [&str; 3] = ["webhooks", "webhook_deliveries", "webhook_attempts"];

/// The sequencing, and in the same statement a delivery and an outbox row for every endpoint of
/// the event's tenant that takes its kind (an empty list takes every kind).
const SEQUENCE_WITH_WEBHOOKS_DECLARE: &str =
    "v_current bigint;\n    v_result integer;\n    v_deliveries uuid[];\n    v_tenants uuid[];";
const SEQUENCE_WITH_WEBHOOKS: &str = r#"SELECT value INTO v_current FROM sequencer WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'voicegraph_sequence_pending: the sequencer row (id = 1) is missing';
    END IF;
    WITH pending AS (
        SELECT id FROM call_events WHERE seq IS NULL ORDER BY id LIMIT p_limit
    ), numbered AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n FROM pending
    ), sequenced AS (
        UPDATE call_events e SET seq = v_current + numbered.n FROM numbered WHERE e.id = numbered.id
        RETURNING e.id, e.seq, e.tenant_id, e.call_id, e.kind, e.status, e.created_at
    ), deliveries AS (
        INSERT INTO webhook_deliveries (id, tenant_id, webhook_id, event_id, event_seq, event_kind,
            event_status, call_id, event_created_at, message_id, status, attempts, created_at,
            updated_at)
        SELECT gen_random_uuid(), s.tenant_id, w.id, s.id, s.seq, s.kind, s.status, s.call_id,
            s.created_at, 'msg_' || replace(gen_random_uuid()::text, '-', ''), 'PENDING', 0, now(),
            now()
        FROM sequenced s JOIN webhooks w ON w.tenant_id = s.tenant_id
        WHERE jsonb_array_length(w.events) = 0 OR w.events ? s.kind
        ORDER BY s.seq
        ON CONFLICT (webhook_id, event_id) DO NOTHING
        RETURNING id, tenant_id
    )
    SELECT (SELECT count(*) FROM sequenced), (SELECT array_agg(id) FROM deliveries),
        (SELECT array_agg(tenant_id) FROM deliveries)
    INTO v_result, v_deliveries, v_tenants;
    -- Only when there are deliveries: an empty insert would still wake every relay (the
    -- outbox's notice is per statement).
    IF v_deliveries IS NOT NULL THEN
        INSERT INTO outbox (destination, payload, created_at, available_at, attempts)
        SELECT 'webhook', jsonb_build_object('tenant_id', u.tenant_id, 'delivery_id', u.id),
            now(), now(), 0
        FROM unnest(v_deliveries, v_tenants) AS u(id, tenant_id);
    END IF;
    IF v_result > 0 THEN
        UPDATE sequencer SET value = v_current + v_result WHERE id = 1;
    END IF;"#;

fn sequence_function(schema: &str, declare: &str, body: &str) -> String {
    definer_function(
        schema,
        "voicegraph_sequence_pending",
        "p_limit integer",
        "integer",
        "VOLATILE",
        declare,
        body,
    )
}

fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn timestamp_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Webhooks::Table)
                    .col(ColumnDef::new(Webhooks::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Webhooks::TenantId).uuid().not_null())
                    .col(ColumnDef::new(Webhooks::Url).text().not_null())
                    .col(ColumnDef::new(Webhooks::Description).text().null())
                    .col(ColumnDef::new(Webhooks::Events).json_binary().not_null())
                    .col(ColumnDef::new(Webhooks::Secret).text().not_null())
                    .col(ColumnDef::new(Webhooks::PreviousSecret).text().null())
                    .col(timestamp_null(Webhooks::PreviousSecretExpiresAt))
                    .col(timestamp(Webhooks::CreatedAt))
                    .col(timestamp(Webhooks::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhooks_tenant")
                    .table(Webhooks::Table)
                    .col(Webhooks::TenantId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(
                        ColumnDef::new(WebhookDeliveries::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::TenantId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::WebhookId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::EventId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::EventSeq)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::EventKind)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::EventStatus)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::CallId).uuid().not_null())
                    .col(timestamp(WebhookDeliveries::EventCreatedAt))
                    .col(
                        ColumnDef::new(WebhookDeliveries::MessageId)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::Body).text().null())
                    .col(
                        ColumnDef::new(WebhookDeliveries::Status)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(timestamp_null(WebhookDeliveries::NextAttemptAt))
                    .col(
                        ColumnDef::new(WebhookDeliveries::LastResponseStatus)
                            .integer()
                            .null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::LastError).text().null())
                    .col(timestamp_null(WebhookDeliveries::DeliveredAt))
                    .col(timestamp(WebhookDeliveries::CreatedAt))
                    .col(timestamp(WebhookDeliveries::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_deliveries_webhook")
                            .from(WebhookDeliveries::Table, WebhookDeliveries::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_event")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::WebhookId)
                    .col(WebhookDeliveries::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_list")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::TenantId)
                    .col(WebhookDeliveries::WebhookId)
                    .col(WebhookDeliveries::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .col(
                        ColumnDef::new(WebhookAttempts::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(WebhookAttempts::TenantId).uuid().not_null())
                    .col(
                        ColumnDef::new(WebhookAttempts::DeliveryId)
                            .uuid()
                            .not_null(),
                    )
                    .col(timestamp(WebhookAttempts::AttemptedAt))
                    .col(
                        ColumnDef::new(WebhookAttempts::ResponseStatus)
                            .integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(WebhookAttempts::LatencyMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookAttempts::Error).text().null())
                    .col(
                        ColumnDef::new(WebhookAttempts::Succeeded)
                            .boolean()
                            .not_null(),
                    )
                    .col(timestamp_null(WebhookAttempts::NextRetryAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_webhook_attempts_delivery")
                            .from(WebhookAttempts::Table, WebhookAttempts::DeliveryId)
                            .to(WebhookDeliveries::Table, WebhookDeliveries::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_attempts_delivery")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::DeliveryId)
                    .col(WebhookAttempts::Id)
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite alters a table one column at a time.
        for col in [Outbox::DeadAt, Outbox::LeasedUntil] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .add_column(timestamp_null(col))
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            let db = manager.get_connection();
            let schema = quote_ident(&current_schema(db).await?);
            let mut sql: String = TABLES.iter().map(|t| isolate_table(t)).collect();
            sql.push_str(&sequence_function(
                &schema,
                SEQUENCE_WITH_WEBHOOKS_DECLARE,
                SEQUENCE_WITH_WEBHOOKS,
            ));
            db.execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            let db = manager.get_connection();
            let schema = quote_ident(&current_schema(db).await?);
            let mut sql: String = TABLES.iter().map(|t| release_table(t)).collect();
            sql.push_str(&sequence_function(
                &schema,
                SEQUENCE_PENDING_DECLARE,
                SEQUENCE_PENDING_BODY,
            ));
            db.execute_unprepared(&sql).await?;
        }
        for col in [Outbox::DeadAt, Outbox::LeasedUntil] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        for table in [
            WebhookAttempts::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            Webhooks::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
