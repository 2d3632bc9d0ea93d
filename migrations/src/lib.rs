//! Schema migrations for voicegraph, written with sea-query so they run on SQLite and Postgres alike;
//! on Postgres, row-level security isolates tenants (`m20261203_000001_row_level_security`), and
//! [`grant_runtime_role`] grants the role the application runs as what it needs; triggers send
//! the notifications the roles wait on (`m20261205_000001_notifications`); a submission is one
//! statement there (`m20261206_000001_submit_function`).

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_init;
mod m20261201_000001_persisted_queries;
mod m20261202_000001_audit_log;
mod m20261202_000002_call_upload_key;
mod m20261203_000001_row_level_security;
mod m20261203_000002_segment_grounded;
mod m20261203_000003_call_token_usage;
mod m20261204_000001_analyses_and_categories;
mod m20261205_000001_notifications;
mod m20261206_000001_submit_function;
mod m20261206_000002_dead_letters_handled;
mod m20261207_000001_webhooks;
mod m20261208_000001_redaction;
mod roles;

pub use m20261205_000001_notifications::{
    EVENTS_CHANNEL, JOBS_CHANNEL, KEYS_CHANNEL, OUTBOX_CHANNEL,
};
pub use roles::{ensure_runtime_role, grant_runtime_role};

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_init::Migration),
            Box::new(m20261201_000001_persisted_queries::Migration),
            Box::new(m20261202_000001_audit_log::Migration),
            Box::new(m20261202_000002_call_upload_key::Migration),
            Box::new(m20261203_000001_row_level_security::Migration),
            Box::new(m20261203_000002_segment_grounded::Migration),
            Box::new(m20261203_000003_call_token_usage::Migration),
            Box::new(m20261204_000001_analyses_and_categories::Migration),
            Box::new(m20261205_000001_notifications::Migration),
            Box::new(m20261206_000001_submit_function::Migration),
            Box::new(m20261206_000002_dead_letters_handled::Migration),
            Box::new(m20261207_000001_webhooks::Migration),
            Box::new(m20261208_000001_redaction::Migration),
        ]
    }
}
