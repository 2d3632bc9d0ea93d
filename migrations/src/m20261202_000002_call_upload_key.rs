//! The signed upload a call's recording was copied from (`uploads/<tenant>/<id>`), so that a
//! repeated submission of the same upload is recognised after the upload itself is gone; unique,
//! so that one upload makes at most one call.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    TenantId,
    UploadKey,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .add_column(ColumnDef::new(Calls::UploadKey).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("calls_tenant_upload")
                    .table(Calls::Table)
                    .col(Calls::TenantId)
                    .col(Calls::UploadKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("calls_tenant_upload")
                    .table(Calls::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .drop_column(Calls::UploadKey)
                    .to_owned(),
            )
            .await
    }
}
