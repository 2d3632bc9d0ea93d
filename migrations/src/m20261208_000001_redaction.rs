//! Redaction: a tenant's policy (`redaction_policies`, one row per tenant that has set one; on
//! Postgres a tenant table under row-level security, as `tenants` is not the runtime role's to
//! update), and on each call the policy it was submitted under (`calls.redaction`), what was
//! found and replaced (`calls.redactions`), and where the original recording is kept when the
//! audio was redacted without deleting it (`calls.original_recording_key`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::m20261203_000001_row_level_security::{isolate_table, release_table};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RedactionPolicies {
    Table,
    TenantId,
    Transcript,
    Audio,
    DeleteOriginal,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Redaction,
    Redactions,
    OriginalRecordingKey,
}

fn flag(col: RedactionPolicies) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RedactionPolicies::Table)
                    .col(
                        ColumnDef::new(RedactionPolicies::TenantId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(flag(RedactionPolicies::Transcript))
                    .col(flag(RedactionPolicies::Audio))
                    .col(flag(RedactionPolicies::DeleteOriginal))
                    .col(
                        ColumnDef::new(RedactionPolicies::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite alters a table one column at a time.
        for col in [
            ColumnDef::new(Calls::Redaction)
                .json_binary()
                .null()
                .to_owned(),
            ColumnDef::new(Calls::Redactions)
                .json_binary()
                .null()
                .to_owned(),
            ColumnDef::new(Calls::OriginalRecordingKey)
                .text()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(col)
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(&isolate_table("redaction_policies"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(&release_table("redaction_policies"))
                .await?;
        }
        for col in [
            Calls::Redaction,
            Calls::Redactions,
            Calls::OriginalRecordingKey,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(RedactionPolicies::Table).to_owned())
            .await
    }
}
