//! Whether a segment lies on speech the acoustic analysis heard on its channel (`grounded`):
//! words a transcript or a model placed in silence are kept, and flagged.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CallSegments {
    Table,
    Grounded,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CallSegments::Table)
                    .add_column(
                        ColumnDef::new(CallSegments::Grounded)
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CallSegments::Table)
                    .drop_column(CallSegments::Grounded)
                    .to_owned(),
            )
            .await
    }
}
