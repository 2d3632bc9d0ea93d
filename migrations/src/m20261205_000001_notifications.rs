//! Database notifications (Postgres only; SQLite has no `NOTIFY`, and there the roles keep
//! polling). Triggers send a `NOTIFY` from inside the transaction that makes a change, so it is
//! delivered to listeners only when that transaction commits, never for one that rolled back,
//! and no code path that writes the rows can forget it:
//!
//! - [`OUTBOX_CHANNEL`]: outbox rows were written (the relay wakes up). Once per statement; the
//!   payload is empty, so Postgres folds a transaction's notices into one.
//! - [`EVENTS_CHANNEL`]: events were given positions; the payload is the sequencer's new value,
//!   the last position handed out. The sequencer row is locked while positions are handed out,
//!   so when the notice arrives every position up to it is committed (the instances' watermark).
//! - [`JOBS_CHANNEL`]: a job of the embedded queue was enqueued, or made due sooner (a lease
//!   released, or a nack whose delay ends before the lease would have); the payload is the
//!   queue's name. A lease taken or extended moves `visible_at` later and sends nothing; a job
//!   that becomes due by time alone (an expired lease, a delay ending) sends nothing either, and
//!   the workers wake for it at the time they computed.
//! - [`KEYS_CHANNEL`]: an API key changed in a way that matters to authentication (revoked,
//!   its role, hash, tenant or platform-admin flag changed) or was deleted; the payload is the
//!   key's id. Recording its use (`last_used_at`) sends nothing.
//!
//! The trigger functions only call `pg_notify`, which needs no privilege, and run as whoever
//! makes the change (the runtime role, or a definer function for sequencing); they read no table
//! and are no path across tenants. A channel is scoped to its database, so deployments on other
//! databases of the same server never hear each other.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Outbox rows were written.
pub const OUTBOX_CHANNEL: &str = "voicegraph_outbox";
/// Events were sequenced; the payload is the last position handed out.
pub const EVENTS_CHANNEL: &str = "voicegraph_events";
/// A job of the embedded queue is due sooner; the payload is the queue's name.
pub const JOBS_CHANNEL: &str = "voicegraph_jobs";
/// An API key was revoked (or otherwise changed for authentication); the payload is its id.
pub const KEYS_CHANNEL: &str = "voicegraph_keys";

/// (trigger and function name, table, timing and events, level and condition, payload).
const TRIGGERS: [(&str, &str, &str, &str, &str); 5] = [
    (
        "voicegraph_notify_outbox",
        "outbox",
        "AFTER INSERT",
        "FOR EACH STATEMENT",
        "''",
    ),
    (
        "voicegraph_notify_events",
        "sequencer",
        "AFTER UPDATE OF value",
        "FOR EACH ROW WHEN (NEW.value > OLD.value)",
        "NEW.value::text",
    ),
    (
        "voicegraph_notify_jobs",
        "jobs",
        "AFTER INSERT OR UPDATE OF visible_at",
        "FOR EACH ROW WHEN (NEW.dead_at IS NULL)",
        // A row trigger on both events: on INSERT, OLD is NULL.
        "CASE WHEN TG_OP = 'INSERT' OR NEW.visible_at < OLD.visible_at THEN NEW.queue END",
    ),
    (
        "voicegraph_notify_keys",
        "api_keys",
        "AFTER UPDATE OF revoked_at, role, key_hash, tenant_id, platform_admin",
        "FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at \
         OR OLD.role IS DISTINCT FROM NEW.role OR OLD.key_hash IS DISTINCT FROM NEW.key_hash \
         OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id \
         OR OLD.platform_admin IS DISTINCT FROM NEW.platform_admin)",
        "NEW.id::text",
    ),
    (
        "voicegraph_notify_keys_deleted",
        "api_keys",
        "AFTER DELETE",
        "FOR EACH ROW",
        "OLD.id::text",
    ),
];

/// The trigger function `name()`: a notice on `channel` with the payload `payload` (an SQL
/// expression; NULL sends nothing).
pub(crate) fn notify_function(name: &str, channel: &str, payload: &str) -> String {
    format!(
        r#"
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_payload text := {payload};
BEGIN
    IF v_payload IS NOT NULL THEN
        PERFORM pg_notify('{channel}', v_payload);
    END IF;
    RETURN NULL;
END
$$;
"#
    )
}

fn channel_of(name: &str) -> &'static str {
    match name {
        "voicegraph_notify_outbox" => OUTBOX_CHANNEL,
        "voicegraph_notify_events" => EVENTS_CHANNEL,
        "voicegraph_notify_jobs" => JOBS_CHANNEL,
        _ => KEYS_CHANNEL,
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let mut sql = String::new();
        for (name, table, events, level, payload) in TRIGGERS {
            let channel = channel_of(name);
            // A NULL payload (a jobs update that made nothing due sooner) sends nothing.
            sql.push_str(&notify_function(name, channel, payload));
            sql.push_str(&format!(
                r#"
DROP TRIGGER IF EXISTS {name} ON {table};
CREATE TRIGGER {name} {events} ON {table} {level} EXECUTE FUNCTION {name}();
"#
            ));
        }
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let mut sql = String::new();
        for (name, table, ..) in TRIGGERS {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {name} ON {table};\nDROP FUNCTION IF EXISTS {name}();\n"
            ));
        }
        manager.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }
}
