//! A submission in one statement (Postgres only; SQLite keeps the transaction of single
//! inserts). `voicegraph_submit_call` writes what a submission writes — the call, its first
//! analysis, its `SUBMITTED` event, and the outbox rows (the event's, the job's, the upload's
//! deletion) — inside the statement's own transaction, so that a submission costs one round
//! trip instead of nine (`BEGIN`, the tenant setting, six inserts, `COMMIT`).
//!
//! It is `SECURITY INVOKER`: it runs as the runtime role, under row-level security like every
//! other statement of that role. It names its tables with their schema, so it needs no
//! `SET search_path` (which would cost a configuration save and restore on every call). It sets the tenant (transaction-local, so it ends with the
//! statement) before it writes anything, and the policies check every row against it. The rows
//! come as JSON objects of their columns (`jsonb_populate_record`), so the function names no
//! column of `calls` or `analyses` and stays right as columns are added. The outbox rows come in
//! order; the one whose destination is `events` gets the new event's id as its payload.
//!
//! It sends no outbox notice: it sets [`OUTBOX_NOTICE_SETTING`] to `deferred` for its
//! transaction, and the outbox trigger (replaced here) sends nothing while it is. Postgres
//! serialises the commits of notifying transactions on one lock held through the WAL flush, so a
//! notice in every submission would allow one submission per flush; the application sends one
//! notice for many submissions after they commit instead (`Store::send_deferred_notices`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::m20261203_000001_row_level_security::{current_schema, quote_ident, TENANT_SETTING};
use crate::m20261205_000001_notifications::{notify_function, OUTBOX_CHANNEL};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// While `deferred` in a transaction, its outbox rows send no notice: whoever set it sends one.
pub const OUTBOX_NOTICE_SETTING: &str = "voicegraph.outbox_notice";

/// The outbox trigger's function: a notice per statement, unless deferred.
fn outbox_trigger(deferrable: bool) -> String {
    let payload = if deferrable {
        format!(
            "CASE WHEN current_setting('{OUTBOX_NOTICE_SETTING}', true) = 'deferred' THEN NULL ELSE '' END"
        )
    } else {
        "''".to_string()
    };
    notify_function("voicegraph_notify_outbox", OUTBOX_CHANNEL, &payload)
}

/// The function, by signature (granted to the runtime role).
pub(crate) const SUBMIT_FUNCTION: &str = "voicegraph_submit_call(uuid, jsonb, jsonb, jsonb, jsonb)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let schema = quote_ident(&current_schema(db).await?);
        db.execute_unprepared(&format!(
            r#"
CREATE OR REPLACE FUNCTION {schema}.voicegraph_submit_call(
    p_tenant uuid, p_call jsonb, p_analysis jsonb, p_event jsonb, p_outbox jsonb
) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    v_event bigint;
BEGIN
    PERFORM set_config('{TENANT_SETTING}', p_tenant::text, true);
    PERFORM set_config('{OUTBOX_NOTICE_SETTING}', 'deferred', true);
    INSERT INTO {schema}.calls SELECT * FROM jsonb_populate_record(NULL::{schema}.calls, p_call);
    INSERT INTO {schema}.analyses
        SELECT * FROM jsonb_populate_record(NULL::{schema}.analyses, p_analysis);
    INSERT INTO {schema}.call_events (seq, tenant_id, call_id, kind, status, payload, created_at)
        SELECT e.seq, e.tenant_id, e.call_id, e.kind, e.status, e.payload, e.created_at
        FROM jsonb_populate_record(NULL::{schema}.call_events, p_event) e
        RETURNING id INTO v_event;
    INSERT INTO {schema}.outbox (destination, payload, created_at, available_at, attempts, last_error, sent_at)
        SELECT o.destination,
               CASE WHEN o.destination = 'events'
                    THEN jsonb_build_object('event_id', v_event) ELSE o.payload END,
               o.created_at, o.available_at, o.attempts, o.last_error, o.sent_at
        FROM jsonb_array_elements(p_outbox) WITH ORDINALITY AS r(row, n),
             jsonb_populate_record(NULL::{schema}.outbox, r.row) o
        ORDER BY r.n;
    RETURN v_event;
END
$$;
{trigger}"#,
            trigger = outbox_trigger(true),
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let schema = quote_ident(&current_schema(db).await?);
        db.execute_unprepared(&format!(
            "DROP FUNCTION IF EXISTS {schema}.{SUBMIT_FUNCTION};\n{}",
            outbox_trigger(false)
        ))
        .await?;
        Ok(())
    }
}
