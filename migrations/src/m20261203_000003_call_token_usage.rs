//! The tokens a model spent on a call's latest analysis, so that statistics can sum them (cost
//! per call-minute). Null for calls the local analyser analysed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    PromptTokens,
    OutputTokens,
    TotalTokens,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one column at a time.
        for col in [Calls::PromptTokens, Calls::OutputTokens, Calls::TotalTokens] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(ColumnDef::new(col).big_integer().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [Calls::PromptTokens, Calls::OutputTokens, Calls::TotalTokens] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
