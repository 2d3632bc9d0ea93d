//! Row-level security against a real Postgres. Set `VOICEGRAPH_TEST_POSTGRES_URL` to a superuser's
//! URL (e.g. `postgres://postgres@127.0.0.1:5432`); without it the Postgres tests say so and pass.
//!
//! Each test sets up what a deployment has: as the superuser, an owner role (no superuser, no
//! BYPASSRLS) and a database it owns, with the `public` schema its own; the owner runs the
//! migrations; a runtime role (likewise unprivileged) is created and granted by
//! `grant_runtime_role`, run as the owner. The test then connects as the runtime role. Databases
//! and roles carry a random suffix, so that runs and tests never meet, and are dropped at the end
//! of the test, whether it passes or fails.

use std::future::Future;
use std::time::{Duration, Instant};

use migrations::{ensure_runtime_role, grant_runtime_role, Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, QueryResult, Statement, TransactionTrait,
};
use uuid::Uuid;

const TENANT_TABLES: [&str; 11] = [
    "api_keys",
    "calls",
    "call_segments",
    "call_events",
    "audit_log",
    "analyses",
    "categories",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
    "redaction_policies",
];
const SYSTEM_TABLES: [&str; 6] = [
    "tenants",
    "outbox",
    "sequencer",
    "jobs",
    "persisted_queries",
    "seaql_migrations",
];
const DEFINER_FUNCTIONS: [&str; 6] = [
    "voicegraph_key_by_hash(text)",
    "voicegraph_active_keys(uuid[])",
    "voicegraph_key_tenant(uuid)",
    "voicegraph_events_between(bigint, bigint, integer)",
    "voicegraph_events_by_id(bigint[])",
    "voicegraph_sequence_pending(integer)",
];
const RLS_MIGRATION: &str = "m20261203_000001_row_level_security";

// ---------------------------------------------------------------------------------------------
// The cluster, names and fixture

/// Where the cluster is, from `VOICEGRAPH_TEST_POSTGRES_URL`, so that other users' URLs can be
/// made from it.
#[derive(Clone)]
struct Pg {
    /// The URL as given: a superuser on some existing database.
    admin_url: String,
    scheme: String,
    /// `user[:password]`, possibly empty.
    userinfo: String,
    /// `host[:port]`.
    host: String,
    /// `?…`, or empty.
    query: String,
}

impl Pg {
    fn from_env() -> Option<Self> {
        let url = std::env::var("VOICEGRAPH_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let (scheme, rest) = url
            .split_once("://")
            .expect("VOICEGRAPH_TEST_POSTGRES_URL is postgres://user@host:port[/db]");
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, format!("?{query}")),
            None => (rest, String::new()),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("", authority));
        Some(Self {
            scheme: scheme.into(),
            userinfo: userinfo.into(),
            host: host.into(),
            query,
            admin_url: url.clone(),
        })
    }

    fn url(&self, userinfo: &str, db: &str) -> String {
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!(
            "{}://{userinfo}{at}{}/{db}{}",
            self.scheme, self.host, self.query
        )
    }
}

/// This test's database and roles.
#[derive(Clone)]
struct Names {
    /// `vg_rls_<random>`: the database's name, and the start of every role's.
    prefix: String,
    password: String,
}

impl Names {
    fn new() -> Self {
        let random = Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("vg_rls_{}", &random[..12]),
            password: Uuid::new_v4().simple().to_string(),
        }
    }

    fn db(&self) -> String {
        self.prefix.clone()
    }

    fn role(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }
}

struct Fixture {
    pg: Pg,
    names: Names,
    /// The superuser, on the cluster's database (creating roles).
    admin: DatabaseConnection,
    /// The superuser, on the test database (looking past RLS).
    su: DatabaseConnection,
    /// The owner of the tables, which ran the migrations.
    owner: DatabaseConnection,
    /// The runtime role, on a pool of one connection.
    app: DatabaseConnection,
    owner_role: String,
    app_role: String,
    /// A role with no grants at all.
    other_role: String,
}

async fn connect(url: &str, max_connections: u32) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(0)
        .sqlx_logging(false);
    Database::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

impl Fixture {
    async fn create(pg: Pg, names: Names) -> Self {
        let db = names.db();
        let admin = connect(&pg.admin_url, 2).await;
        let owner_role = names.role("owner");
        exec(
            &admin,
            &format!(
                "CREATE ROLE {owner_role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE \
                 PASSWORD '{}'",
                names.password
            ),
        )
        .await;
        exec(&admin, &format!("CREATE DATABASE {db} OWNER {owner_role}")).await;
        // Postgres 15 gives `public` to pg_database_owner (the owner has it through owning the
        // database); older versions to the superuser, with CREATE for everyone. Either way: the
        // owner's, and nobody else creates anything in it.
        let su = connect(&pg.url(&pg.userinfo, &db), 2).await;
        exec(
            &su,
            &format!(
                "ALTER SCHEMA public OWNER TO {owner_role}; REVOKE CREATE ON SCHEMA public FROM PUBLIC"
            ),
        )
        .await;

        let owner = connect(&role_url(&pg, &names, &owner_role), 4).await;
        Migrator::up(&owner, None)
            .await
            .expect("migrating as the owner");

        let app_role = names.role("app");
        let other_role = names.role("other");
        for role in [&app_role, &other_role] {
            exec(
                &admin,
                &format!(
                    "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{}'",
                    names.password
                ),
            )
            .await;
        }
        grant_runtime_role(&owner, &app_role)
            .await
            .expect("granting the runtime role");
        let app = connect(&role_url(&pg, &names, &app_role), 1).await;
        Self {
            pg,
            names,
            admin,
            su,
            owner,
            app,
            owner_role,
            app_role,
            other_role,
        }
    }

    /// A new pool on the test database as `role` (one of this test's).
    async fn connect_as(&self, role: &str, max_connections: u32) -> DatabaseConnection {
        connect(&role_url(&self.pg, &self.names, role), max_connections).await
    }

    /// Creates this test's role `<prefix>_<what>` with `attributes`.
    async fn create_role(&self, what: &str, attributes: &str) -> String {
        let role = self.names.role(what);
        exec(
            &self.admin,
            &format!(
                "CREATE ROLE {role} LOGIN {attributes} PASSWORD '{}'",
                self.names.password
            ),
        )
        .await;
        role
    }
}

fn role_url(pg: &Pg, names: &Names, role: &str) -> String {
    pg.url(&format!("{role}:{}", names.password), &names.db())
}

/// Drops the test's database and every role named with its prefix.
async fn teardown(pg: &Pg, names: &Names) -> Result<(), DbErr> {
    let admin = connect(&pg.admin_url, 1).await;
    admin
        .execute_unprepared(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            names.db()
        ))
        .await?;
    let roles = admin
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname",
            [format!("{}_", names.prefix).into()],
        ))
        .await?;
    for role in roles {
        let role: String = role.try_get_by_index(0)?;
        admin
            .execute_unprepared(&format!("DROP ROLE IF EXISTS {role}"))
            .await?;
    }
    admin.close().await
}

/// Runs `body` on a fresh fixture, then tears it down, pass or fail; without Postgres, says so
/// and returns.
async fn run<F, Fut>(body: F)
where
    F: FnOnce(Fixture) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(pg) = Pg::from_env() else {
        eprintln!(
            "skipped: this test needs Postgres; set VOICEGRAPH_TEST_POSTGRES_URL to a superuser's \
             URL, e.g. postgres://postgres@127.0.0.1:5432"
        );
        return;
    };
    let names = Names::new();
    let outcome = tokio::spawn({
        let (pg, names) = (pg.clone(), names.clone());
        async move { body(Fixture::create(pg, names).await).await }
    })
    .await;
    let cleaned = teardown(&pg, &names).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test's task failed: {e}"),
        }
    }
    cleaned.unwrap_or_else(|e| panic!("dropping {}: {e}", names.prefix));
}

// ---------------------------------------------------------------------------------------------
// SQL helpers

async fn exec(c: &impl ConnectionTrait, sql: &str) -> u64 {
    c.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

async fn try_exec(c: &impl ConnectionTrait, sql: &str) -> Result<u64, DbErr> {
    Ok(c.execute_unprepared(sql).await?.rows_affected())
}

async fn rows(c: &impl ConnectionTrait, sql: &str) -> Vec<QueryResult> {
    c.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn try_rows(c: &impl ConnectionTrait, sql: &str) -> Result<Vec<QueryResult>, DbErr> {
    c.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
}

/// The first column of the one row `sql` returns.
async fn scalar<T: sea_orm::TryGetable>(c: &impl ConnectionTrait, sql: &str) -> T {
    let all = rows(c, sql).await;
    assert_eq!(all.len(), 1, "{sql} returned {} rows", all.len());
    all[0]
        .try_get_by_index(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn count(c: &impl ConnectionTrait, table: &str) -> i64 {
    scalar(c, &format!("SELECT count(*) FROM {table}")).await
}

async fn backend_pid(c: &impl ConnectionTrait) -> i32 {
    scalar(c, "SELECT pg_backend_pid()").await
}

/// A transaction under `tenant`, set as the application sets it.
async fn as_tenant(db: &DatabaseConnection, tenant: Uuid) -> DatabaseTransaction {
    let txn = db.begin().await.expect("begin");
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT set_config('voicegraph.tenant_id', $1, true)",
        [tenant.to_string().into()],
    ))
    .await
    .expect("setting the tenant");
    txn
}

fn assert_rls_violation(e: &DbErr, table: &str) {
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "new row violates row-level security policy for table \"{table}\""
        )),
        "expected an RLS violation on {table}, got: {text}"
    );
}

fn uuid_array(ids: &[Uuid]) -> String {
    let items: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("ARRAY[{}]::uuid[]", items.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Rows

fn insert_key(tenant: Uuid, id: Uuid, hash: &str, revoked: bool) -> String {
    let revoked_at = if revoked { "now()" } else { "NULL" };
    format!(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, role, platform_admin, \
         created_at, revoked_at) VALUES ('{id}', '{tenant}', 'key', 'vg_test', '{hash}', 'admin', \
         false, now(), {revoked_at})"
    )
}

fn insert_call(tenant: Uuid, id: Uuid) -> String {
    format!(
        "INSERT INTO calls (id, tenant_id, status, topics, action_items, tags, created_at, \
         updated_at) VALUES ('{id}', '{tenant}', 'QUEUED', '[]', '[]', '[]', now(), now())"
    )
}

/// An insert of a row of `table` for `tenant` (`call` being one of its calls).
fn insert_row(table: &str, tenant: Uuid, call: Uuid) -> String {
    match table {
        "api_keys" => insert_key(
            tenant,
            Uuid::new_v4(),
            &Uuid::new_v4().simple().to_string(),
            false,
        ),
        "calls" => insert_call(tenant, Uuid::new_v4()),
        "call_segments" => format!(
            "INSERT INTO call_segments (call_id, tenant_id, idx, speaker, channel, start_ms, \
             end_ms, text) VALUES ('{call}', '{tenant}', 0, 'agent', 0, 0, 1000, 'hello')"
        ),
        "call_events" => format!(
            "INSERT INTO call_events (tenant_id, call_id, kind, status, created_at) \
             VALUES ('{tenant}', '{call}', 'CREATED', 'QUEUED', now())"
        ),
        "audit_log" => format!(
            "INSERT INTO audit_log (tenant_id, action, target, created_at) \
             VALUES ('{tenant}', 'key.create', 'key', now())"
        ),
        "analyses" => format!(
            "INSERT INTO analyses (id, tenant_id, call_id, analyzer, status, created_at) \
             VALUES ('{}', '{tenant}', '{call}', 'local', 'QUEUED', now())",
            Uuid::new_v4()
        ),
        "categories" => {
            let id = Uuid::new_v4();
            format!(
                "INSERT INTO categories (id, tenant_id, name, name_key, keywords, created_at, \
                 updated_at) VALUES ('{id}', '{tenant}', 'c{id}', 'c{id}', '[]', now(), now())"
            )
        }
        // A tenant's seeded webhook and delivery have its call's id (see `seed`).
        "webhooks" => insert_webhook(tenant, Uuid::new_v4()),
        "webhook_deliveries" => insert_delivery(tenant, Uuid::new_v4(), call),
        "webhook_attempts" => format!(
            "INSERT INTO webhook_attempts (tenant_id, delivery_id, attempted_at, latency_ms, \
             succeeded) VALUES ('{tenant}', '{call}', now(), 1, true)"
        ),
        // One row per tenant, keyed by its id.
        "redaction_policies" => format!(
            "INSERT INTO redaction_policies (tenant_id, transcript, audio, delete_original, \
             updated_at) VALUES ('{tenant}', true, false, false, now())"
        ),
        other => panic!("no fixture for {other}"),
    }
}

fn insert_webhook(tenant: Uuid, id: Uuid) -> String {
    format!(
        "INSERT INTO webhooks (id, tenant_id, url, events, secret, created_at, updated_at) \
         VALUES ('{id}', '{tenant}', 'https://example.com/', '[]', 'whsec_x', now(), now())"
    )
}

/// A delivery to the webhook whose id is `call`'s, of an event id no other delivery has (no
/// event row is needed).
fn insert_delivery(tenant: Uuid, id: Uuid, call: Uuid) -> String {
    let event = (id.as_u128() as i64).unsigned_abs() >> 1;
    format!(
        "INSERT INTO webhook_deliveries (id, tenant_id, webhook_id, event_id, event_kind, \
         event_status, call_id, event_created_at, message_id, status, attempts, created_at, \
         updated_at) VALUES ('{id}', '{tenant}', '{call}', {event}, 'CREATED', 'QUEUED', \
         '{call}', now(), 'msg_x', 'PENDING', 0, now(), now())"
    )
}

/// A tenant with one row in every tenant table (its event unsequenced), written by the runtime
/// role under the tenant.
struct Tenant {
    id: Uuid,
    key: Uuid,
    key_hash: String,
    call: Uuid,
    event: i64,
}

async fn seed(app: &DatabaseConnection) -> Tenant {
    let id = Uuid::new_v4();
    let key = Uuid::new_v4();
    let key_hash = format!("hash-{}", Uuid::new_v4().simple());
    let call = Uuid::new_v4();
    let txn = as_tenant(app, id).await;
    exec(
        &txn,
        &format!("INSERT INTO tenants (id, name, created_at) VALUES ('{id}', 'tenant', now())"),
    )
    .await;
    exec(&txn, &insert_key(id, key, &key_hash, false)).await;
    exec(&txn, &insert_call(id, call)).await;
    exec(&txn, &insert_row("call_segments", id, call)).await;
    exec(&txn, &insert_row("audit_log", id, call)).await;
    exec(&txn, &insert_row("analyses", id, call)).await;
    exec(&txn, &insert_row("categories", id, call)).await;
    exec(&txn, &insert_webhook(id, call)).await;
    exec(&txn, &insert_delivery(id, call, call)).await;
    exec(&txn, &insert_row("webhook_attempts", id, call)).await;
    exec(&txn, &insert_row("redaction_policies", id, call)).await;
    let event = scalar(
        &txn,
        &format!("{} RETURNING id", insert_row("call_events", id, call)),
    )
    .await;
    txn.commit().await.expect("commit");
    Tenant {
        id,
        key,
        key_hash,
        call,
        event,
    }
}

/// Records another (unsequenced) event of `tenant`'s call, committed.
async fn add_event(app: &DatabaseConnection, tenant: &Tenant) -> i64 {
    let txn = as_tenant(app, tenant.id).await;
    let id = scalar(
        &txn,
        &format!(
            "{} RETURNING id",
            insert_row("call_events", tenant.id, tenant.call)
        ),
    )
    .await;
    txn.commit().await.expect("commit");
    id
}

/// `(id, seq, tenant_id)` of the events a query returns, in its order.
async fn events(c: &impl ConnectionTrait, sql: &str) -> Vec<(i64, Option<i64>, Uuid)> {
    rows(c, sql)
        .await
        .iter()
        .map(|r| {
            (
                r.try_get("", "id").unwrap(),
                r.try_get("", "seq").unwrap(),
                r.try_get("", "tenant_id").unwrap(),
            )
        })
        .collect()
}

async fn sequencer(c: &impl ConnectionTrait) -> i64 {
    scalar(c, "SELECT value FROM sequencer WHERE id = 1").await
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn without_a_tenant_nothing_is_seen_or_written() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        for table in TENANT_TABLES {
            assert_eq!(count(&fx.su, table).await, 2, "{table} (as the superuser)");
            assert_eq!(count(&fx.app, table).await, 0, "{table}");
        }
        // Nor updated or deleted.
        assert_eq!(exec(&fx.app, "UPDATE calls SET status = 'FAILED'").await, 0);
        assert_eq!(exec(&fx.app, "DELETE FROM audit_log").await, 0);
        assert_eq!(exec(&fx.app, "DELETE FROM api_keys").await, 0);
        assert_eq!(count(&fx.su, "api_keys").await, 2);

        for table in TENANT_TABLES {
            // Without a tenant, an insert fails the check.
            let e = try_exec(&fx.app, &insert_row(table, a.id, a.call))
                .await
                .expect_err(table);
            assert_rls_violation(&e, table);

            // Under A, a row of B's fails it too.
            let txn = as_tenant(&fx.app, a.id).await;
            let e = try_exec(&txn, &insert_row(table, b.id, b.call))
                .await
                .expect_err(table);
            assert_rls_violation(&e, table);
            txn.rollback().await.unwrap();
        }

        // Under A: moving A's row to B fails the check; B's rows cannot be touched.
        let txn = as_tenant(&fx.app, a.id).await;
        let e = try_exec(
            &txn,
            &format!(
                "UPDATE calls SET tenant_id = '{}' WHERE id = '{}'",
                b.id, a.call
            ),
        )
        .await
        .expect_err("moving a call to another tenant");
        assert_rls_violation(&e, "calls");
        txn.rollback().await.unwrap();
        let txn = as_tenant(&fx.app, a.id).await;
        let update_b = format!("UPDATE calls SET status = 'FAILED' WHERE id = '{}'", b.call);
        assert_eq!(exec(&txn, &update_b).await, 0);
        let delete_b = format!("DELETE FROM api_keys WHERE tenant_id = '{}'", b.id);
        assert_eq!(exec(&txn, &delete_b).await, 0);
        txn.commit().await.unwrap();
        let status: String = scalar(
            &fx.su,
            &format!("SELECT status FROM calls WHERE id = '{}'", b.call),
        )
        .await;
        assert_eq!(status, "QUEUED");
        assert_eq!(count(&fx.su, "api_keys").await, 2);

        // A malformed tenant is an error, not a wildcard.
        let txn = fx.app.begin().await.unwrap();
        exec(
            &txn,
            "SELECT set_config('voicegraph.tenant_id', 'not-a-uuid', true)",
        )
        .await;
        let e = try_rows(&txn, "SELECT count(*) FROM calls")
            .await
            .expect_err("a malformed tenant");
        assert!(e.to_string().contains("uuid"), "{e}");
        txn.rollback().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_tenant_holds_for_its_transaction_only() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        let pid = backend_pid(&fx.app).await;

        for (tenant, end_with_commit) in [(&a, true), (&b, false)] {
            let txn = as_tenant(&fx.app, tenant.id).await;
            assert_eq!(backend_pid(&txn).await, pid, "the pool has one connection");
            for table in TENANT_TABLES {
                assert_eq!(count(&txn, table).await, 1, "{table}");
                let others: i64 = scalar(
                    &txn,
                    &format!(
                        "SELECT count(*) FROM {table} WHERE tenant_id <> '{}'",
                        tenant.id
                    ),
                )
                .await;
                assert_eq!(others, 0, "{table}");
            }
            if end_with_commit {
                txn.commit().await.unwrap();
            } else {
                txn.rollback().await.unwrap();
            }

            // Same connection, next transaction (or none): the tenant is gone.
            assert_eq!(backend_pid(&fx.app).await, pid);
            let setting: Option<String> = scalar(
                &fx.app,
                "SELECT current_setting('voicegraph.tenant_id', true)",
            )
            .await;
            assert_eq!(setting.as_deref(), Some(""), "reset to empty, not unset");
            for table in TENANT_TABLES {
                assert_eq!(count(&fx.app, table).await, 0, "{table}");
            }
            let txn = fx.app.begin().await.unwrap();
            for table in TENANT_TABLES {
                assert_eq!(count(&txn, table).await, 0, "{table}");
            }
            txn.commit().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn the_definer_setting_gives_the_runtime_role_nothing() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        seed(&fx.app).await;

        exec(&fx.app, "SET voicegraph.definer = 'on'").await;
        for table in TENANT_TABLES {
            assert_eq!(count(&fx.app, table).await, 0, "{table}");
            let e = try_exec(&fx.app, &insert_row(table, a.id, a.call))
                .await
                .expect_err(table);
            assert_rls_violation(&e, table);
        }
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, "SET LOCAL voicegraph.definer = 'on'").await;
        for table in TENANT_TABLES {
            assert_eq!(count(&txn, table).await, 1, "{table}: A's row only");
        }
        txn.rollback().await.unwrap();
        exec(&fx.app, "RESET voicegraph.definer").await;

        // Nor can it become the owner.
        let e = try_exec(&fx.app, &format!("SET ROLE {}", fx.owner_role))
            .await
            .expect_err("SET ROLE owner");
        assert!(e.to_string().contains("permission denied"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn the_definer_functions_cross_tenants() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        let a1 = add_event(&fx.app, &a).await;
        let b1 = add_event(&fx.app, &b).await;
        let revoked = Uuid::new_v4();
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, &insert_key(a.id, revoked, "hash-revoked", true)).await;
        txn.commit().await.unwrap();
        let app = &fx.app; // no tenant set from here on

        // Authentication: B's key by its hash.
        let found = rows(
            app,
            &format!(
                "SELECT id, tenant_id, revoked_at IS NULL AS active FROM voicegraph_key_by_hash('{}')",
                b.key_hash
            ),
        )
        .await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].try_get::<Uuid>("", "id").unwrap(), b.key);
        assert_eq!(found[0].try_get::<Uuid>("", "tenant_id").unwrap(), b.id);
        assert!(found[0].try_get::<bool>("", "active").unwrap());
        assert!(rows(app, "SELECT * FROM voicegraph_key_by_hash('no-such-hash')")
            .await
            .is_empty());

        // Revocation: the revoked key and the unknown one are left out.
        let ids = uuid_array(&[a.key, revoked, b.key, Uuid::new_v4()]);
        let mut active: Vec<Uuid> = rows(
            app,
            &format!("SELECT * FROM voicegraph_active_keys({ids})"),
        )
        .await
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
        active.sort();
        let mut expected = vec![a.key, b.key];
        expected.sort();
        assert_eq!(active, expected);

        // A key's tenant.
        let tenant: Option<Uuid> =
            scalar(app, &format!("SELECT voicegraph_key_tenant('{}')", b.key)).await;
        assert_eq!(tenant, Some(b.id));
        let tenant: Option<Uuid> = scalar(
            app,
            &format!("SELECT voicegraph_key_tenant('{}')", Uuid::new_v4()),
        )
        .await;
        assert_eq!(tenant, None);

        // Sequencing: both tenants' events, in id order, from the sequencer's value on.
        assert_eq!(sequencer(app).await, 0);
        let n: i32 = scalar(app, "SELECT voicegraph_sequence_pending(1000)").await;
        assert_eq!(n, 4);
        assert_eq!(sequencer(app).await, 4);
        let n: i32 = scalar(app, "SELECT voicegraph_sequence_pending(1000)").await;
        assert_eq!(n, 0, "nothing pending");
        assert_eq!(sequencer(app).await, 4);

        // The hub catching up: (after, upto], in order, at most the limit.
        let all = events(app, "SELECT * FROM voicegraph_events_between(0, 4, 100)").await;
        assert_eq!(
            all,
            vec![
                (a.event, Some(1), a.id),
                (b.event, Some(2), b.id),
                (a1, Some(3), a.id),
                (b1, Some(4), b.id),
            ]
        );
        let middle = events(app, "SELECT * FROM voicegraph_events_between(1, 3, 100)").await;
        assert_eq!(middle, all[1..3].to_vec());
        let first = events(app, "SELECT * FROM voicegraph_events_between(0, 4, 2)").await;
        assert_eq!(first, all[..2].to_vec());
        assert!(events(app, "SELECT * FROM voicegraph_events_between(4, 100, 100)")
            .await
            .is_empty());

        // The relay publishing: by id, whatever the tenant.
        let by_id = events(
            app,
            &format!("SELECT * FROM voicegraph_events_by_id(ARRAY[{b1}, {}, -1]::bigint[])", a.event),
        )
        .await;
        assert_eq!(by_id, vec![all[0], all[3]]);

        // The limit: three new events, sequenced two then one.
        let new = [
            add_event(app, &a).await,
            add_event(app, &b).await,
            add_event(app, &a).await,
        ];
        let n: i32 = scalar(app, "SELECT voicegraph_sequence_pending(2)").await;
        assert_eq!(n, 2);
        assert_eq!(sequencer(app).await, 6);
        let n: i32 = scalar(app, "SELECT voicegraph_sequence_pending(2)").await;
        assert_eq!(n, 1);
        let n: i32 = scalar(app, "SELECT voicegraph_sequence_pending(2)").await;
        assert_eq!(n, 0);
        assert_eq!(sequencer(app).await, 7);
        let later = events(app, "SELECT * FROM voicegraph_events_between(4, 7, 100)").await;
        assert_eq!(
            later,
            vec![
                (new[0], Some(5), a.id),
                (new[1], Some(6), b.id),
                (new[2], Some(7), a.id),
            ]
        );

        // The functions' setting ends with them.
        let definer: Option<String> =
            scalar(app, "SELECT current_setting('voicegraph.definer', true)").await;
        assert_ne!(definer.as_deref(), Some("on"));
        for table in TENANT_TABLES {
            assert_eq!(count(app, table).await, 0, "{table}");
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_sequencing_waits_for_the_sequencer() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        let first = fx.connect_as(&fx.app_role, 1).await;
        let second = fx.connect_as(&fx.app_role, 1).await;
        let second_pid = backend_pid(&second).await;

        // The first relay numbers both events and holds the sequencer's row, uncommitted.
        let txn = first.begin().await.unwrap();
        let n: i32 = scalar(&txn, "SELECT voicegraph_sequence_pending(1000)").await;
        assert_eq!(n, 2);

        let waiting = tokio::spawn(async move {
            scalar::<i32>(&second, "SELECT voicegraph_sequence_pending(1000)").await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let blocked: bool = scalar(
                &fx.admin,
                &format!("SELECT cardinality(pg_blocking_pids({second_pid})) > 0"),
            )
            .await;
            if blocked {
                break;
            }
            assert!(
                !waiting.is_finished() && Instant::now() < deadline,
                "the second relay should wait for the first"
            );
            tokio::task::yield_now().await;
        }

        // An event committed meanwhile; then the first relay commits.
        let b1 = add_event(&fx.app, &b).await;
        txn.commit().await.unwrap();

        // The second sees the first's numbers and takes only the new event.
        assert_eq!(waiting.await.unwrap(), 1);
        assert_eq!(sequencer(&fx.app).await, 3);
        let all = events(
            &fx.app,
            "SELECT * FROM voicegraph_events_between(0, 10, 100)",
        )
        .await;
        assert_eq!(
            all,
            vec![
                (a.event, Some(1), a.id),
                (b.event, Some(2), b.id),
                (b1, Some(3), b.id),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn the_functions_are_not_executable_by_public() {
    run(|fx| async move {
        let other = fx.connect_as(&fx.other_role, 1).await;
        let zero = "'00000000-0000-0000-0000-000000000000'";
        for call in [
            "SELECT * FROM voicegraph_key_by_hash('x')".to_owned(),
            format!("SELECT * FROM voicegraph_active_keys(ARRAY[{zero}]::uuid[])"),
            format!("SELECT voicegraph_key_tenant({zero})"),
            "SELECT * FROM voicegraph_events_between(0, 10, 10)".to_owned(),
            "SELECT * FROM voicegraph_events_by_id(ARRAY[1]::bigint[])".to_owned(),
            "SELECT voicegraph_sequence_pending(10)".to_owned(),
        ] {
            let e = try_rows(&other, &call).await.expect_err(&call);
            assert!(
                e.to_string().contains("permission denied for function"),
                "{call}: {e}"
            );
        }
        // The tenant accessor is no boundary, and anyone may call it (the policies do).
        let tenant: Option<Uuid> = scalar(&other, "SELECT voicegraph_current_tenant()").await;
        assert_eq!(tenant, None);
        let e = try_rows(&other, "SELECT * FROM calls")
            .await
            .expect_err("reading a table");
        assert!(e.to_string().contains("permission denied for table calls"), "{e}");

        // In the catalog: no definer function left with the default ACL (which lets PUBLIC
        // execute) or granted to PUBLIC; the runtime role may execute all of them.
        let public: i64 = scalar(
            &fx.su,
            "SELECT count(*) FROM pg_proc p WHERE p.prosecdef AND p.proname LIKE 'voicegraph\\_%' \
             AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))",
        )
        .await;
        assert_eq!(public, 0);
        let definers: i64 = scalar(
            &fx.su,
            "SELECT count(*) FROM pg_proc p WHERE p.prosecdef AND p.proname LIKE 'voicegraph\\_%'",
        )
        .await;
        assert_eq!(definers, DEFINER_FUNCTIONS.len() as i64);
        for function in DEFINER_FUNCTIONS {
            for (role, expected) in [(&fx.app_role, true), (&fx.other_role, false)] {
                let may: bool = scalar(
                    &fx.su,
                    &format!("SELECT has_function_privilege('{role}', 'public.{function}', 'EXECUTE')"),
                )
                .await;
                assert_eq!(may, expected, "{role} on {function}");
            }
        }

        // Each definer function runs as the owner, with its own search path.
        for function in DEFINER_FUNCTIONS {
            let row = &rows(
                &fx.su,
                &format!(
                    "SELECT prosecdef, pg_get_userbyid(proowner) AS owner, array_to_string(proconfig, ';') AS config \
                     FROM pg_proc WHERE oid = 'public.{function}'::regprocedure"
                ),
            )
            .await[0];
            assert!(row.try_get::<bool>("", "prosecdef").unwrap(), "{function}");
            assert_eq!(row.try_get::<String>("", "owner").unwrap(), fx.owner_role);
            let config: String = row.try_get("", "config").unwrap();
            assert_eq!(config, "search_path=public, pg_temp", "{function}");
        }
        let definer: bool = scalar(
            &fx.su,
            "SELECT prosecdef FROM pg_proc WHERE oid = 'public.voicegraph_current_tenant()'::regprocedure",
        )
        .await;
        assert!(!definer);
    })
    .await;
}

/// `voicegraph_submit_call(tenant, call, analysis, event, outbox)` as the application calls it.
async fn submit(
    app: &DatabaseConnection,
    tenant: Uuid,
    call: serde_json::Value,
    analysis: serde_json::Value,
    event: serde_json::Value,
) -> Result<i64, DbErr> {
    let outbox = serde_json::json!([
        {"destination": "events", "payload": {}, "created_at": "2026-12-06T00:00:00Z",
         "available_at": "2026-12-06T00:00:00Z", "attempts": 0},
        {"destination": "jobs", "payload": {"call_id": call["id"]},
         "created_at": "2026-12-06T00:00:00Z", "available_at": "2026-12-06T00:00:00Z",
         "attempts": 0},
    ]);
    let row = app
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT voicegraph_submit_call($1, $2, $3, $4, $5)",
            [
                tenant.into(),
                call.into(),
                analysis.into(),
                event.into(),
                outbox.into(),
            ],
        ))
        .await?
        .expect("a row");
    Ok(row.try_get_by_index(0).expect("the event's id"))
}

fn call_json(tenant: Uuid, id: Uuid) -> serde_json::Value {
    serde_json::json!({"id": id, "tenant_id": tenant, "status": "QUEUED", "topics": [],
        "action_items": [], "tags": ["t"], "attempts": 0,
        "created_at": "2026-12-06T00:00:00.123456Z", "updated_at": "2026-12-06T00:00:00.123456Z"})
}

fn analysis_json(tenant: Uuid, call: Uuid) -> serde_json::Value {
    serde_json::json!({"id": Uuid::new_v4(), "tenant_id": tenant, "call_id": call,
        "analyzer": "local", "status": "QUEUED", "attempts": 0,
        "created_at": "2026-12-06T00:00:00Z"})
}

fn event_json(tenant: Uuid, call: Uuid) -> serde_json::Value {
    serde_json::json!({"seq": null, "tenant_id": tenant, "call_id": call, "kind": "SUBMITTED",
        "status": "QUEUED", "payload": {"analyzer": "local"}, "created_at": "2026-12-06T00:00:00Z"})
}

/// The submission function is an invoker's: it sets the tenant it is given for its own
/// statement only, and row-level security checks every row it writes against it, so that a
/// submission is whole or not at all and never lands in another tenant.
#[tokio::test]
async fn the_submission_function_writes_under_the_tenant_it_sets() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        let outbox0 = count(&fx.su, "outbox").await;

        let id = Uuid::new_v4();
        let event = submit(
            &fx.app,
            a.id,
            call_json(a.id, id),
            analysis_json(a.id, id),
            event_json(a.id, id),
        )
        .await
        .expect("a submission under its own tenant");
        let row = &rows(
            &fx.su,
            &format!("SELECT tenant_id, tags::text AS tags, created_at::text AS at FROM calls WHERE id = '{id}'"),
        )
        .await[0];
        assert_eq!(row.try_get::<Uuid>("", "tenant_id").unwrap(), a.id);
        assert_eq!(row.try_get::<String>("", "tags").unwrap(), r#"["t"]"#);
        assert_eq!(
            row.try_get::<String>("", "at").unwrap(),
            "2026-12-06 00:00:00.123456+00",
            "the time kept to the microsecond"
        );
        let analyses: i64 = scalar(
            &fx.su,
            &format!("SELECT count(*) FROM analyses WHERE call_id = '{id}' AND tenant_id = '{}'", a.id),
        )
        .await;
        assert_eq!(analyses, 1);
        let event_call: Uuid = scalar(
            &fx.su,
            &format!("SELECT call_id FROM call_events WHERE id = {event}"),
        )
        .await;
        assert_eq!(event_call, id);
        // The outbox rows in the order given, the event's carrying the event's id.
        let outbox = rows(
            &fx.su,
            &format!("SELECT destination, payload::text AS payload FROM outbox ORDER BY id OFFSET {outbox0}"),
        )
        .await;
        let outbox: Vec<(String, String)> = outbox
            .iter()
            .map(|r| (r.try_get("", "destination").unwrap(), r.try_get("", "payload").unwrap()))
            .collect();
        assert_eq!(
            outbox,
            [
                ("events".to_string(), format!(r#"{{"event_id": {event}}}"#)),
                ("jobs".to_string(), format!(r#"{{"call_id": "{id}"}}"#)),
            ]
        );
        // The setting ended with the statement, on the same connection.
        let setting: Option<String> =
            scalar(&fx.app, "SELECT current_setting('voicegraph.tenant_id', true)").await;
        assert_eq!(setting.as_deref(), Some(""));
        assert_eq!(count(&fx.app, "calls").await, 0);

        // Any row of another tenant fails the whole submission.
        for (table, call, analysis, event) in [
            ("calls", b.id, a.id, a.id),
            ("analyses", a.id, b.id, a.id),
            ("call_events", a.id, a.id, b.id),
        ] {
            let id = Uuid::new_v4();
            let e = submit(
                &fx.app,
                a.id,
                call_json(call, id),
                analysis_json(analysis, id),
                event_json(event, id),
            )
            .await
            .expect_err(table);
            assert_rls_violation(&e, table);
            let left: i64 = scalar(&fx.su, &format!("SELECT count(*) FROM calls WHERE id = '{id}'")).await;
            assert_eq!(left, 0, "{table}: nothing of it is kept");
        }
        assert_eq!(count(&fx.su, "outbox").await, outbox0 + 2);
    })
    .await;
}

#[tokio::test]
async fn the_grant_refuses_roles_that_own_or_bypass() {
    run(|fx| async move {
        let superuser = fx.create_role("su", "SUPERUSER").await;
        let bypass = fx.create_role("bypass", "BYPASSRLS").await;
        let owners_member = fx.create_role("ownersmember", "").await;
        exec(&fx.admin, &format!("GRANT {} TO {owners_member}", fx.owner_role)).await;
        let superusers_member = fx.create_role("sumember", "").await;
        exec(&fx.admin, &format!("GRANT {superuser} TO {superusers_member}")).await;
        let squatter = fx.create_role("squatter", "").await;
        exec(
            &fx.su,
            &format!("CREATE TABLE public.squat (id int); ALTER TABLE public.squat OWNER TO {squatter}"),
        )
        .await;
        let nobody = fx.names.role("nobody");

        let cases = [
            (superuser.as_str(), "it is a superuser"),
            (bypass.as_str(), "it has BYPASSRLS"),
            (fx.owner_role.as_str(), "it is the current user"),
            (owners_member.as_str(), "it is a member of the current user"),
            (superusers_member.as_str(), "member of a superuser or BYPASSRLS role"),
            (squatter.as_str(), "owns"),
            (nobody.as_str(), "no such role"),
            ("", "plain lower-case identifier"),
            ("App", "plain lower-case identifier"),
            ("app-role", "plain lower-case identifier"),
            ("app; DROP TABLE calls", "plain lower-case identifier"),
            ("public", "plain lower-case identifier"),
            ("pg_read_all_data", "plain lower-case identifier"),
        ];
        let too_long = "a".repeat(64);
        for (role, why) in cases
            .into_iter()
            .chain([(too_long.as_str(), "plain lower-case identifier")])
        {
            let e = grant_runtime_role(&fx.owner, role)
                .await
                .expect_err(role);
            assert!(matches!(e, DbErr::Custom(_)), "{role}: {e:?}");
            let text = e.to_string();
            assert!(text.contains(why), "{role}: {text}");
            assert!(text.contains("must own nothing and bypass nothing"), "{text}");
        }

        // Nothing was granted on the way.
        for role in [&bypass, &squatter] {
            let may: bool = scalar(
                &fx.su,
                &format!(
                    "SELECT has_table_privilege('{role}', 'public.calls', 'SELECT') \
                     OR has_function_privilege('{role}', 'public.voicegraph_key_by_hash(text)', 'EXECUTE')"
                ),
            )
            .await;
            assert!(!may, "{role}");
        }
        assert_eq!(count(&fx.su, "calls").await, 0, "calls is still there");
    })
    .await;
}

#[tokio::test]
async fn the_owner_is_bound_by_forced_rls() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        seed(&fx.app).await;
        for table in TENANT_TABLES {
            assert_eq!(count(&fx.owner, table).await, 0, "{table}");
        }
        let txn = as_tenant(&fx.owner, a.id).await;
        for table in TENANT_TABLES {
            assert_eq!(count(&txn, table).await, 1, "{table}");
        }
        txn.rollback().await.unwrap();
        // The owner's own way across tenants (the definer policy), e.g. for a data migration.
        let txn = fx.owner.begin().await.unwrap();
        exec(&txn, "SET LOCAL voicegraph.definer = 'on'").await;
        for table in TENANT_TABLES {
            assert_eq!(count(&txn, table).await, 2, "{table}");
        }
        // A definer function called by the owner leaves the setting as it found it.
        let key_tenant = format!("SELECT voicegraph_key_tenant('{}')", a.key);
        let tenant: Option<Uuid> = scalar(&txn, &key_tenant).await;
        assert_eq!(tenant, Some(a.id));
        assert_eq!(count(&txn, "calls").await, 2);
        txn.rollback().await.unwrap();
        let txn = fx.owner.begin().await.unwrap();
        let tenant: Option<Uuid> = scalar(&txn, &key_tenant).await;
        assert_eq!(tenant, Some(a.id));
        let n: i32 = scalar(&txn, "SELECT voicegraph_sequence_pending(10)").await;
        assert_eq!(n, 2);
        let definer: Option<String> =
            scalar(&txn, "SELECT current_setting('voicegraph.definer', true)").await;
        assert_eq!(definer.as_deref(), Some(""));
        for table in TENANT_TABLES {
            assert_eq!(count(&txn, table).await, 0, "{table}: not after the function returned");
        }
        txn.commit().await.unwrap();

        // The catalog: forced RLS with the two policies on each tenant table, none elsewhere.
        for table in TENANT_TABLES {
            let row = &rows(
                &fx.su,
                &format!(
                    "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.{table}'::regclass"
                ),
            )
            .await[0];
            assert!(row.try_get::<bool>("", "relrowsecurity").unwrap(), "{table}");
            assert!(row.try_get::<bool>("", "relforcerowsecurity").unwrap(), "{table}");
            let policies: String = scalar(
                &fx.su,
                &format!(
                    "SELECT string_agg(policyname || ' ' || cmd || ' ' || array_to_string(roles, ','), '; ' ORDER BY policyname) \
                     FROM pg_policies WHERE schemaname = 'public' AND tablename = '{table}' AND permissive = 'PERMISSIVE'"
                ),
            )
            .await;
            assert_eq!(
                policies,
                format!("voicegraph_definer ALL {}; voicegraph_tenant ALL public", fx.owner_role),
                "{table}"
            );
        }
        for table in SYSTEM_TABLES {
            let rls: bool = scalar(
                &fx.su,
                &format!("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.{table}'::regclass"),
            )
            .await;
            assert!(!rls, "{table}");
        }
    })
    .await;
}

#[tokio::test]
async fn migrating_and_granting_again_is_harmless() {
    run(|fx| async move {
        let a = seed(&fx.app).await;

        // Nothing pending; granting again changes nothing.
        Migrator::up(&fx.owner, None).await.unwrap();
        grant_runtime_role(&fx.owner, &fx.app_role).await.unwrap();
        grant_runtime_role(&fx.owner, &fx.app_role).await.unwrap();

        // The migration's `up` over its own result.
        exec(
            &fx.owner,
            &format!("DELETE FROM seaql_migrations WHERE version = '{RLS_MIGRATION}'"),
        )
        .await;
        Migrator::up(&fx.owner, None).await.unwrap();
        let policies: i64 = scalar(
            &fx.su,
            "SELECT count(*) FROM pg_policies WHERE policyname LIKE 'voicegraph\\_%'",
        )
        .await;
        assert_eq!(policies, 2 * TENANT_TABLES.len() as i64);

        // Down, through the row-level security migration (and those after it): no policies, no
        // functions, no RLS.
        let through = Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == RLS_MIGRATION)
            .expect("the RLS migration is registered")
            + 1;
        Migrator::down(&fx.owner, Some(through as u32))
            .await
            .unwrap();
        let left: i64 = scalar(
            &fx.su,
            "SELECT (SELECT count(*) FROM pg_policies WHERE policyname LIKE 'voicegraph\\_%') \
             + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'voicegraph\\_%') \
             + (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace \
                AND (relrowsecurity OR relforcerowsecurity))",
        )
        .await;
        assert_eq!(left, 0);
        assert_eq!(count(&fx.owner, "calls").await, 1);

        // And up again, granted again: as before.
        Migrator::up(&fx.owner, None).await.unwrap();
        grant_runtime_role(&fx.owner, &fx.app_role).await.unwrap();
        let app = fx.connect_as(&fx.app_role, 1).await;
        assert_eq!(count(&app, "calls").await, 0);
        let txn = as_tenant(&app, a.id).await;
        assert_eq!(count(&txn, "calls").await, 1);
        txn.commit().await.unwrap();
        let found = rows(
            &app,
            &format!("SELECT id FROM voicegraph_key_by_hash('{}')", a.key_hash),
        )
        .await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].try_get::<Uuid>("", "id").unwrap(), a.key);

        // What the runtime role holds: data access on every table, nothing else.
        let tables: Vec<String> = rows(
            &fx.su,
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             AND relkind = 'r' ORDER BY relname",
        )
        .await
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
        assert_eq!(tables.len(), TENANT_TABLES.len() + SYSTEM_TABLES.len());
        for table in &tables {
            let (insert, change) = match table.as_str() {
                "tenants" => (true, false),
                "seaql_migrations" => (false, false),
                _ => (true, true),
            };
            for (privilege, expected) in [
                ("SELECT", true),
                ("INSERT", insert),
                ("UPDATE", change),
                ("DELETE", change),
                ("TRUNCATE", false),
                ("REFERENCES", false),
                ("TRIGGER", false),
            ] {
                let has: bool = scalar(
                    &fx.su,
                    &format!(
                        "SELECT has_table_privilege('{}', 'public.{table}', '{privilege}')",
                        fx.app_role
                    ),
                )
                .await;
                assert_eq!(has, expected, "{privilege} on {table}");
            }
        }
        let create: bool = scalar(
            &fx.su,
            &format!(
                "SELECT has_schema_privilege('{}', 'public', 'CREATE')",
                fx.app_role
            ),
        )
        .await;
        assert!(!create);
        for ddl in [
            "CREATE TABLE public.mine (id int)",
            "ALTER TABLE calls DISABLE ROW LEVEL SECURITY",
            "DROP POLICY voicegraph_tenant ON calls",
            "TRUNCATE audit_log",
        ] {
            let e = try_exec(&app, ddl).await.expect_err(ddl);
            let text = e.to_string();
            assert!(
                text.contains("permission denied") || text.contains("must be owner"),
                "{ddl}: {text}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_migrates_and_the_grant_does_nothing() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(
        Migrator::get_applied_migrations(&db).await.unwrap().len(),
        Migrator::migrations().len()
    );
    grant_runtime_role(&db, "voicegraph_app").await.unwrap();
    Migrator::down(&db, Some(1)).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    let tables: i64 = scalar_sqlite(
        &db,
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'call_events'",
    )
    .await;
    assert_eq!(tables, 1);
}

async fn scalar_sqlite(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

#[tokio::test]
async fn calls_analysed_before_analyses_were_kept_get_one_each_across_tenants() {
    run(|fx| async move {
        let a = seed(&fx.app).await;
        let b = seed(&fx.app).await;
        let txn = as_tenant(&fx.app, a.id).await;
        exec(
            &txn,
            &format!(
                "UPDATE calls SET status = 'COMPLETED', analyzer = 'gemini:gemini-2.5-flash', \
                 result_key = 'results/old.json', prompt_tokens = 10, output_tokens = 5, \
                 total_tokens = 15, attempts = 2, completed_at = now() WHERE id = '{}'",
                a.call
            ),
        )
        .await;
        txn.commit().await.unwrap();
        // Back to before the analyses migration, and up again as the owner, whom forced RLS
        // binds: the backfill must see both tenants' calls all the same.
        let through = Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == "m20261204_000001_analyses_and_categories")
            .expect("the analyses migration is registered")
            + 1;
        Migrator::down(&fx.owner, Some(through as u32))
            .await
            .unwrap();
        Migrator::up(&fx.owner, None).await.unwrap();
        let found = rows(
            &fx.su,
            "SELECT a.id, a.tenant_id, a.call_id, a.analyzer, a.model, a.status, a.attempts, \
             a.result_key, a.total_tokens, c.current_analysis_id FROM analyses a \
             JOIN calls c ON c.id = a.call_id ORDER BY a.status",
        )
        .await;
        assert_eq!(found.len(), 2);
        let get = |r: &QueryResult, col: &str| -> Option<String> { r.try_get("", col).unwrap() };
        let (done, waiting) = (&found[0], &found[1]);
        assert_eq!(done.try_get::<Uuid>("", "tenant_id").unwrap(), a.id);
        assert_eq!(done.try_get::<Uuid>("", "id").unwrap(), a.call);
        assert_eq!(get(done, "analyzer").as_deref(), Some("gemini"));
        assert_eq!(get(done, "model").as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(get(done, "status").as_deref(), Some("COMPLETED"));
        assert_eq!(get(done, "result_key").as_deref(), Some("results/old.json"));
        assert_eq!(done.try_get::<i32>("", "attempts").unwrap(), 2);
        assert_eq!(
            done.try_get::<Option<i64>>("", "total_tokens").unwrap(),
            Some(15)
        );
        assert_eq!(waiting.try_get::<Uuid>("", "tenant_id").unwrap(), b.id);
        assert_eq!(
            get(waiting, "analyzer"),
            None,
            "the worker's default will run it"
        );
        assert_eq!(get(waiting, "status").as_deref(), Some("QUEUED"));
        for r in &found {
            assert_eq!(
                r.try_get::<Option<Uuid>>("", "current_analysis_id")
                    .unwrap(),
                Some(r.try_get::<Uuid>("", "id").unwrap())
            );
        }
        // Granted again, as `voicegraph migrate` does after migrating, the runtime role sees a
        // tenant's analyses only under that tenant.
        grant_runtime_role(&fx.owner, &fx.app_role).await.unwrap();
        assert_eq!(count(&fx.app, "analyses").await, 0);
        let txn = as_tenant(&fx.app, b.id).await;
        assert_eq!(count(&txn, "analyses").await, 1);
        txn.commit().await.unwrap();
    })
    .await;
}

/// The next notification the listener gets, as (channel, payload); panics after 10 s.
async fn next_notice(listener: &mut sea_orm::sqlx::postgres::PgListener) -> (String, String) {
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener works");
    (n.channel().to_string(), n.payload().to_string())
}

fn notice(channel: &str, payload: impl ToString) -> (String, String) {
    (channel.to_string(), payload.to_string())
}

#[tokio::test]
async fn the_runtime_role_hears_committed_changes_only() {
    run(|fx| async move {
        use migrations::{EVENTS_CHANNEL, JOBS_CHANNEL, KEYS_CHANNEL, OUTBOX_CHANNEL};
        let a = seed(&fx.app).await;
        let url = role_url(&fx.pg, &fx.names, &fx.app_role);
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect(&url)
            .await
            .unwrap();
        listener
            .listen_all([OUTBOX_CHANNEL, EVENTS_CHANNEL, JOBS_CHANNEL, KEYS_CHANNEL])
            .await
            .unwrap();
        let outbox_row = "INSERT INTO outbox (destination, payload, created_at, available_at, \
                          attempts) VALUES ('jobs', '{}', now(), now(), 0)";
        let job = |queue: &str| {
            format!(
                "INSERT INTO jobs (queue, payload, visible_at, receive_count, created_at) \
                 VALUES ('{queue}', '{{}}', 0, 0, 0)"
            )
        };

        // Each "nothing" below is shown by the next notice being the one that follows it: one
        // session's notices arrive in commit order.
        // Outbox rows: nothing for a rolled-back transaction, one notice for a committed one.
        let txn = fx.app.begin().await.unwrap();
        exec(&txn, outbox_row).await;
        exec(&txn, outbox_row).await;
        txn.rollback().await.unwrap();
        exec(&fx.app, &job("first")).await;
        assert_eq!(
            next_notice(&mut listener).await,
            notice(JOBS_CHANNEL, "first")
        );
        let txn = fx.app.begin().await.unwrap();
        exec(&txn, outbox_row).await;
        exec(&txn, outbox_row).await;
        txn.commit().await.unwrap();
        assert_eq!(next_notice(&mut listener).await, notice(OUTBOX_CHANNEL, ""));

        // Jobs: a lease taken or extended (later) says nothing; a release (sooner) does.
        exec(&fx.app, "UPDATE jobs SET visible_at = visible_at + 60000").await;
        exec(&fx.app, outbox_row).await;
        assert_eq!(next_notice(&mut listener).await, notice(OUTBOX_CHANNEL, ""));
        exec(&fx.app, "UPDATE jobs SET visible_at = visible_at - 30000").await;
        assert_eq!(
            next_notice(&mut listener).await,
            notice(JOBS_CHANNEL, "first")
        );

        // Keys: recording a use says nothing; a revocation names the key.
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, "UPDATE api_keys SET last_used_at = now()").await;
        txn.commit().await.unwrap();
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, "UPDATE api_keys SET revoked_at = now()").await;
        txn.commit().await.unwrap();
        assert_eq!(
            next_notice(&mut listener).await,
            notice(KEYS_CHANNEL, a.key)
        );
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, "DELETE FROM api_keys").await;
        txn.commit().await.unwrap();
        assert_eq!(
            next_notice(&mut listener).await,
            notice(KEYS_CHANNEL, a.key)
        );

        // Sequencing, through the definer function: the tenant's webhook takes every kind, so
        // the event's delivery reaches the outbox, and then the new last position.
        let before = sequencer(&fx.su).await;
        let numbered: i32 = scalar(&fx.app, "SELECT voicegraph_sequence_pending(100)").await;
        assert_eq!(numbered, 1, "the seeded event");
        assert_eq!(next_notice(&mut listener).await, notice(OUTBOX_CHANNEL, ""));
        assert_eq!(
            next_notice(&mut listener).await,
            notice(EVENTS_CHANNEL, before + 1)
        );
        let queued: i64 = scalar(
            &fx.su,
            "SELECT count(*) FROM outbox WHERE destination = 'webhook'",
        )
        .await;
        assert_eq!(
            queued, 1,
            "one delivery of the one event to the one webhook"
        );
        // Without a webhook that takes it, an event reaches no outbox row and wakes no relay.
        let txn = as_tenant(&fx.app, a.id).await;
        exec(&txn, "DELETE FROM webhooks").await;
        txn.commit().await.unwrap();
        add_event(&fx.app, &a).await;
        let numbered: i32 = scalar(&fx.app, "SELECT voicegraph_sequence_pending(100)").await;
        assert_eq!(numbered, 1);
        assert_eq!(
            next_notice(&mut listener).await,
            notice(EVENTS_CHANNEL, before + 2)
        );
        let numbered: i32 = scalar(&fx.app, "SELECT voicegraph_sequence_pending(100)").await;
        assert_eq!(numbered, 0);
        exec(&fx.app, &job("last")).await;
        assert_eq!(
            next_notice(&mut listener).await,
            notice(JOBS_CHANNEL, "last"),
            "sequencing nothing says nothing"
        );
    })
    .await;
}

/// `voicegraph migrate` with a runtime URL that carries a password: the role is created when
/// missing (login, nothing privileged) and accepted by the grant; an existing role gets the new
/// password; a privileged role is refused before its password is touched; quotes in a password
/// are data, not SQL.
#[tokio::test]
async fn the_runtime_role_is_created_or_given_its_password() {
    run(|fx| async move {
        // As on RDS: the master user may create roles.
        exec(
            &fx.admin,
            &format!("ALTER ROLE {} CREATEROLE", fx.owner_role),
        )
        .await;
        let password_of = |role: String| {
            let su = fx.admin.clone();
            async move {
                scalar::<Option<String>>(
                    &su,
                    &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
                )
                .await
            }
        };
        let fresh = fx.names.role("fresh");
        let tricky = format!("pw'); DROP ROLE {}; --", fx.app_role);
        ensure_runtime_role(&fx.owner, &fresh, &tricky)
            .await
            .expect("creating the runtime role");
        let (login, privileged): (bool, bool) = (
            scalar(
                &fx.su,
                &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{fresh}'"),
            )
            .await,
            scalar(
                &fx.su,
                &format!(
                    "SELECT rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb \
                     FROM pg_roles WHERE rolname = '{fresh}'"
                ),
            )
            .await,
        );
        assert!(login && !privileged);
        let first = password_of(fresh.clone()).await.expect("a password is set");
        let app_exists: i64 = scalar(
            &fx.su,
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
                fx.app_role
            ),
        )
        .await;
        assert_eq!(app_exists, 1, "the quote in the password ran no SQL");
        grant_runtime_role(&fx.owner, &fresh)
            .await
            .expect("the created role is a valid runtime role");
        let fresh_app = fx.connect_as(&fresh, 1).await;
        assert_eq!(count(&fresh_app, "calls").await, 0);

        ensure_runtime_role(&fx.owner, &fresh, "rotated")
            .await
            .expect("setting a new password");
        let second = password_of(fresh.clone()).await.expect("still set");
        assert_ne!(first, second, "the password changed");

        let superuser = fx.create_role("su", "SUPERUSER").await;
        let before = password_of(superuser.clone()).await;
        let e = ensure_runtime_role(&fx.owner, &superuser, "hijack")
            .await
            .expect_err("a superuser is no runtime role");
        assert!(e.to_string().contains("it is a superuser"), "{e}");
        assert_eq!(
            password_of(superuser).await,
            before,
            "its password is untouched"
        );
        let e = ensure_runtime_role(&fx.owner, "Bad-Name", "x")
            .await
            .expect_err("bad name");
        assert!(e.to_string().contains("plain lower-case identifier"), "{e}");
    })
    .await;
}
