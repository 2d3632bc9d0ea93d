//! The audit log: who changed what in a tenant (keys created and revoked, tenants created), one
//! row per change, written in the change's own transaction. Rows have no foreign key, so that
//! the record outlives what it describes.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    TenantId,
    ActorTenantId,
    ActorKeyId,
    ActorSubject,
    ActorRole,
    ActorPlatformAdmin,
    Action,
    Target,
    Details,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(
                        ColumnDef::new(AuditLog::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditLog::TenantId).uuid().not_null())
                    .col(ColumnDef::new(AuditLog::ActorTenantId).uuid().null())
                    .col(ColumnDef::new(AuditLog::ActorKeyId).uuid().null())
                    .col(ColumnDef::new(AuditLog::ActorSubject).string().null())
                    .col(ColumnDef::new(AuditLog::ActorRole).string().null())
                    .col(
                        ColumnDef::new(AuditLog::ActorPlatformAdmin)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(AuditLog::Action).string().not_null())
                    .col(ColumnDef::new(AuditLog::Target).string().not_null())
                    .col(ColumnDef::new(AuditLog::Details).json_binary().null())
                    .col(
                        ColumnDef::new(AuditLog::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_log_tenant_id")
                    .table(AuditLog::Table)
                    .col(AuditLog::TenantId)
                    .col(AuditLog::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditLog::Table).if_exists().to_owned())
            .await
    }
}
