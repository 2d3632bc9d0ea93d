//! Every analysis of a call kept (`analyses`: analyzer, model, prompt version, status, error,
//! token usage and where its results are), a tenant's categories (`categories`, names unique per
//! tenant whatever their case: `name_key` is the lower-cased name), and on `calls`
//! what the latest successful analysis found besides what was there (issues, intent, outcome,
//! category matches) and which analysis is the call's current one.
//!
//! Calls analysed before this migration get one analysis each, with the call's own id, from what
//! the call row says (analyzer, status, error, attempts, results, tokens); for a call not analysed
//! yet the analyzer is left NULL, which the worker reads as its default analyser. On Postgres both new
//! tables are tenant tables under row-level security; the backfill, which must see every
//! tenant's calls, turns the owner's definer setting on for its own statements only.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::m20261203_000001_row_level_security::{isolate_table, release_table, DEFINER_SETTING};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Analyses {
    Table,
    Id,
    TenantId,
    CallId,
    Analyzer,
    Model,
    PromptVersion,
    Status,
    Error,
    Attempts,
    ResultKey,
    ModelResponsesKey,
    PromptTokens,
    OutputTokens,
    TotalTokens,
    CreatedAt,
    StartedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum Categories {
    Table,
    Id,
    TenantId,
    Name,
    NameKey,
    Instructions,
    Keywords,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    CurrentAnalysisId,
    Issues,
    Intent,
    Outcome,
    CategoryMatches,
}

/// The new tenant tables.
pub(crate) const TABLES: [&str; 2] = ["analyses", "categories"];

fn new_columns() -> [ColumnDef; 5] {
    [
        ColumnDef::new(Calls::CurrentAnalysisId)
            .uuid()
            .null()
            .to_owned(),
        ColumnDef::new(Calls::Issues)
            .json_binary()
            .null()
            .to_owned(),
        ColumnDef::new(Calls::Intent).text().null().to_owned(),
        ColumnDef::new(Calls::Outcome).string().null().to_owned(),
        ColumnDef::new(Calls::CategoryMatches)
            .json_binary()
            .null()
            .to_owned(),
    ]
}

const BACKFILL: &str = r#"
INSERT INTO analyses (id, tenant_id, call_id, analyzer, model, status, error, attempts,
                      result_key, prompt_tokens, output_tokens, total_tokens, created_at,
                      completed_at)
SELECT id, tenant_id, id,
       CASE WHEN analyzer LIKE 'gemini%' THEN 'gemini' WHEN analyzer IS NOT NULL THEN 'local' END,
       CASE WHEN analyzer LIKE 'gemini:%' THEN substr(analyzer, 8) END,
       status, error, attempts, result_key, prompt_tokens, output_tokens, total_tokens,
       created_at, completed_at
FROM calls;
UPDATE calls SET current_analysis_id = id;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Analyses::Table)
                    .col(ColumnDef::new(Analyses::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Analyses::TenantId).uuid().not_null())
                    .col(ColumnDef::new(Analyses::CallId).uuid().not_null())
                    .col(ColumnDef::new(Analyses::Analyzer).string().null())
                    .col(ColumnDef::new(Analyses::Model).string().null())
                    .col(ColumnDef::new(Analyses::PromptVersion).string().null())
                    .col(ColumnDef::new(Analyses::Status).string().not_null())
                    .col(ColumnDef::new(Analyses::Error).text().null())
                    .col(
                        ColumnDef::new(Analyses::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Analyses::ResultKey).string().null())
                    .col(ColumnDef::new(Analyses::ModelResponsesKey).string().null())
                    .col(ColumnDef::new(Analyses::PromptTokens).big_integer().null())
                    .col(ColumnDef::new(Analyses::OutputTokens).big_integer().null())
                    .col(ColumnDef::new(Analyses::TotalTokens).big_integer().null())
                    .col(
                        ColumnDef::new(Analyses::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Analyses::StartedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Analyses::CompletedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_analyses_call")
                    .table(Analyses::Table)
                    .col(Analyses::TenantId)
                    .col(Analyses::CallId)
                    .col(Analyses::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Categories::Table)
                    .col(
                        ColumnDef::new(Categories::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Categories::TenantId).uuid().not_null())
                    .col(ColumnDef::new(Categories::Name).string().not_null())
                    .col(ColumnDef::new(Categories::NameKey).string().not_null())
                    .col(ColumnDef::new(Categories::Instructions).text().null())
                    .col(
                        ColumnDef::new(Categories::Keywords)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Categories::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Categories::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_categories_tenant_name")
                    .table(Categories::Table)
                    .col(Categories::TenantId)
                    .col(Categories::NameKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite alters a table one column at a time.
        for col in new_columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(col)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in TABLES {
                sql.push_str(&isolate_table(table));
            }
            sql.push_str(&format!(
                "SELECT set_config('{DEFINER_SETTING}', 'on', true);\n{BACKFILL}\
                 SELECT set_config('{DEFINER_SETTING}', '', true);\n"
            ));
            db.execute_unprepared(&sql).await?;
        } else {
            db.execute_unprepared(BACKFILL).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            let sql: String = TABLES.iter().map(|t| release_table(t)).collect();
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        for col in [
            Calls::CurrentAnalysisId,
            Calls::Issues,
            Calls::Intent,
            Calls::Outcome,
            Calls::CategoryMatches,
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
            .drop_table(Table::drop().table(Categories::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Analyses::Table).to_owned())
            .await
    }
}
