//! Row-level security for tenant isolation (Postgres only; on SQLite this migration does nothing
//! and the application's own tenant filters are all the scoping there is).
//!
//! Every table with a `tenant_id` gets RLS enabled and *forced*, so that even the owner of the
//! tables is subject to it, with two permissive policies:
//!
//! - `voicegraph_tenant`, for every role: a row is visible and writable only when its `tenant_id`
//!   is the session's `voicegraph.tenant_id` setting, read by `voicegraph_current_tenant()`. The
//!   application sets it per transaction with `SELECT set_config('voicegraph.tenant_id', $1,
//!   true)`; with no tenant set the function returns NULL, which equals nothing, so a query sees
//!   and writes no tenant rows at all.
//! - `voicegraph_definer`, for the owner role only (the role running this migration): any row,
//!   while `voicegraph.definer` is `on`. The `SECURITY DEFINER` functions below run as the owner
//!   and turn the setting on for their own duration only (see [`definer_function`] for why that
//!   is done in their bodies rather than with a `SET` clause). Another role setting it gains
//!   nothing, since the policy does not apply to it. The owner may set it itself (a data
//!   migration that must see every tenant's rows would: `SET LOCAL voicegraph.definer = 'on'`).
//!
//! The functions are the only paths across tenants, each as narrow as its one use: finding a key
//! by its hash before the tenant is known, checking open sockets' keys for revocation, finding
//! the tenant of a key a platform admin revokes, the event hub catching up on the global
//! sequence, the outbox relay publishing events by id, and the relay sequencing new events. None
//! is executable by PUBLIC; [`crate::grant_runtime_role`] grants them to the runtime role.
//! `voicegraph_current_tenant()` itself is no boundary and stays executable by everyone.
//!
//! Tables without a `tenant_id` (`tenants`, `outbox`, `sequencer`, `jobs`, `persisted_queries`,
//! `seaql_migrations`) are system tables and stay outside RLS.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The tables whose rows belong to a tenant (each has `tenant_id uuid NOT NULL`) as of this
/// migration; tenant tables created later are isolated by their own migrations ([`isolate_table`]).
pub(crate) const TENANT_TABLES: [&str; 5] = [
    "api_keys",
    "calls",
    "call_segments",
    "call_events",
    "audit_log",
];

/// The setting naming the current tenant; transaction-local when set with `set_config(…, true)`.
pub(crate) const TENANT_SETTING: &str = "voicegraph.tenant_id";

/// The tenant accessor the policies call. Not a privilege boundary (it reads a setting the
/// caller can read itself), so it stays executable by PUBLIC as functions are by default: any
/// role that may read a tenant table needs to be able to execute it.
pub(crate) const CURRENT_TENANT_FUNCTION: &str = "voicegraph_current_tenant()";

/// The `SECURITY DEFINER` functions, by signature: the only paths across tenants, executable
/// only by the owner and whom it grants.
pub(crate) const DEFINER_FUNCTIONS: [&str; 6] = [
    "voicegraph_key_by_hash(text)",
    "voicegraph_active_keys(uuid[])",
    "voicegraph_key_tenant(uuid)",
    "voicegraph_events_between(bigint, bigint, integer)",
    "voicegraph_events_by_id(bigint[])",
    "voicegraph_sequence_pending(integer)",
];

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema the tables live in: the first existing schema on the search path.
pub(crate) async fn current_schema<C: ConnectionTrait>(db: &C) -> Result<String, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_schema() AS schema",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("SELECT current_schema() returned no row".into()))?;
    row.try_get::<Option<String>>("", "schema")?.ok_or_else(|| {
        DbErr::Custom("no schema on the search path exists (current_schema() is NULL)".into())
    })
}

/// The setting that lets the owner across tenants (the `voicegraph_definer` policy), on only
/// while a definer function runs.
pub(crate) const DEFINER_SETTING: &str = "voicegraph.definer";

/// A `SECURITY DEFINER` function `name(params) RETURNS returns`, with `schema` (quoted) pinned as
/// its search path — the temporary schema last, so that a caller's temporary tables cannot
/// shadow ours (otherwise it is searched first) — and `voicegraph.definer` on while `body` runs.
///
/// The setting cannot be a `SET` clause of the function: Postgres lets only a superuser (or, from
/// 15, a role granted `SET` on the parameter) attach a custom, placeholder setting to a function,
/// and the owner is neither (an RDS master user is no superuser). So the body sets it
/// transaction-locally with `set_config` and puts the caller's value back before returning. A
/// local setting made inside a function outlives the function (only the settings named in its
/// `SET` clauses are restored at exit), hence the explicit restore; if the body raises, the
/// (sub)transaction aborts and takes the setting with it. `body` leaves its result in `v_result`
/// for a scalar function, or appends rows with `RETURN QUERY` for a set-returning one.
pub(crate) fn definer_function(
    schema: &str,
    name: &str,
    params: &str,
    returns: &str,
    volatility: &str,
    declare: &str,
    body: &str,
) -> String {
    let ret = if returns.starts_with("SETOF") {
        "RETURN;"
    } else {
        "RETURN v_result;"
    };
    format!(
        r#"
CREATE OR REPLACE FUNCTION {name}({params}) RETURNS {returns}
    LANGUAGE plpgsql {volatility} STRICT SECURITY DEFINER SET search_path = {schema}, pg_temp
    AS $$
DECLARE
    v_definer text := current_setting('{DEFINER_SETTING}', true);
    {declare}
BEGIN
    PERFORM set_config('{DEFINER_SETTING}', 'on', true);
    {body}
    PERFORM set_config('{DEFINER_SETTING}', coalesce(v_definer, ''), true);
    {ret}
END
$$;
"#
    )
}

/// Row-level security on `table` (a tenant table, with `tenant_id`), enabled and forced, with the
/// two policies: the tenant's rows, and any row to the owner while a definer function runs.
/// Dropped first, so that it may run again over its own result. Later migrations creating a
/// tenant table call it too.
pub(crate) fn isolate_table(table: &str) -> String {
    format!(
        r#"
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS voicegraph_tenant ON {table};
CREATE POLICY voicegraph_tenant ON {table} AS PERMISSIVE FOR ALL TO PUBLIC
    USING (tenant_id = voicegraph_current_tenant())
    WITH CHECK (tenant_id = voicegraph_current_tenant());
DROP POLICY IF EXISTS voicegraph_definer ON {table};
CREATE POLICY voicegraph_definer ON {table} AS PERMISSIVE FOR ALL TO CURRENT_USER
    USING (current_setting('{DEFINER_SETTING}', true) = 'on')
    WITH CHECK (current_setting('{DEFINER_SETTING}', true) = 'on');
"#
    )
}

/// Undoes [`isolate_table`].
pub(crate) fn release_table(table: &str) -> String {
    format!(
        r#"
DROP POLICY IF EXISTS voicegraph_tenant ON {table};
DROP POLICY IF EXISTS voicegraph_definer ON {table};
ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;
ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;
"#
    )
}

/// `voicegraph_sequence_pending`'s variables and body as this migration creates it (a later
/// migration adds webhook deliveries to it, and puts this back when undone).
pub(crate) const SEQUENCE_PENDING_DECLARE: &str = "v_current bigint;\n    v_result integer;";
pub(crate) const SEQUENCE_PENDING_BODY: &str = r#"SELECT value INTO v_current FROM sequencer WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'voicegraph_sequence_pending: the sequencer row (id = 1) is missing';
    END IF;
    WITH pending AS (
        SELECT id FROM call_events WHERE seq IS NULL ORDER BY id LIMIT p_limit
    ), numbered AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n FROM pending
    )
    UPDATE call_events e SET seq = v_current + numbered.n FROM numbered WHERE e.id = numbered.id;
    GET DIAGNOSTICS v_result = ROW_COUNT;
    IF v_result > 0 THEN
        UPDATE sequencer SET value = v_current + v_result WHERE id = 1;
    END IF;"#;

/// The `CREATE FUNCTION`s.
fn create_functions(schema: &str) -> String {
    let mut sql = format!(
        r#"
CREATE OR REPLACE FUNCTION voicegraph_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid $$;
"#
    );
    // Authentication, before the tenant is known: the key with this hash.
    sql += &definer_function(
        schema,
        "voicegraph_key_by_hash",
        "p_hash text",
        "SETOF api_keys",
        "STABLE",
        "",
        "RETURN QUERY SELECT * FROM api_keys WHERE key_hash = p_hash;",
    );
    // Revocation checks of open sockets, across tenants: those of the ids whose key exists and
    // is not revoked.
    sql += &definer_function(
        schema,
        "voicegraph_active_keys",
        "p_ids uuid[]",
        "SETOF uuid",
        "STABLE",
        "",
        "RETURN QUERY SELECT id FROM api_keys WHERE id = ANY (p_ids) AND revoked_at IS NULL;",
    );
    // A platform admin revoking another tenant's key: the key's tenant, NULL if there is none.
    sql += &definer_function(
        schema,
        "voicegraph_key_tenant",
        "p_id uuid",
        "uuid",
        "STABLE",
        "v_result uuid;",
        "SELECT tenant_id INTO v_result FROM api_keys WHERE id = p_id;",
    );
    // The event hub catching up: every tenant's events at positions (p_after, p_upto], in order,
    // at most p_limit of them.
    sql += &definer_function(
        schema,
        "voicegraph_events_between",
        "p_after bigint, p_upto bigint, p_limit integer",
        "SETOF call_events",
        "STABLE",
        "",
        "RETURN QUERY SELECT * FROM call_events WHERE seq > p_after AND seq <= p_upto \
         ORDER BY seq LIMIT p_limit;",
    );
    // The outbox relay publishing: events by id, whatever their tenant.
    sql += &definer_function(
        schema,
        "voicegraph_events_by_id",
        "p_ids bigint[]",
        "SETOF call_events",
        "STABLE",
        "",
        "RETURN QUERY SELECT * FROM call_events WHERE id = ANY (p_ids) ORDER BY id;",
    );
    // The relay sequencing: gives up to p_limit unsequenced events, of every tenant, the next
    // positions of the global sequence in id order, and returns how many. The sequencer row is
    // locked first, so concurrent callers commit in the order of the numbers they hand out and a
    // reader never sees position n+1 before n; each statement here takes a fresh snapshot (read
    // committed), so events the previous holder of the lock numbered are no longer pending once
    // it is acquired.
    sql += &definer_function(
        schema,
        "voicegraph_sequence_pending",
        "p_limit integer",
        "integer",
        "VOLATILE",
        SEQUENCE_PENDING_DECLARE,
        SEQUENCE_PENDING_BODY,
    );
    sql
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let schema = quote_ident(&current_schema(db).await?);

        let mut sql = create_functions(&schema);
        // Functions are executable by PUBLIC unless revoked.
        for function in DEFINER_FUNCTIONS {
            sql.push_str(&format!(
                "REVOKE ALL ON FUNCTION {schema}.{function} FROM PUBLIC;\n"
            ));
        }
        for table in TENANT_TABLES {
            sql.push_str(&isolate_table(table));
        }
        db.execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        let schema = quote_ident(&current_schema(db).await?);

        let mut sql = String::new();
        for table in TENANT_TABLES {
            sql.push_str(&release_table(table));
        }
        // The policies used the tenant accessor; they are gone now.
        for function in DEFINER_FUNCTIONS.iter().chain([&CURRENT_TENANT_FUNCTION]) {
            sql.push_str(&format!("DROP FUNCTION IF EXISTS {schema}.{function};\n"));
        }
        db.execute_unprepared(&sql).await?;
        Ok(())
    }
}
