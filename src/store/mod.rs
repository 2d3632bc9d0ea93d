//! The store: the one module that speaks SQL. Nothing else in voicegraph imports SeaORM or
//! `entities` (a test walks the sources to keep it so). Its methods are shaped like the use
//! cases — submit a call with its event and outbox rows, claim an attempt, complete it with
//! fencing, tag, delete, list, replay events, claim the outbox — and each is one transaction
//! that returns domain types (`crate::domain::records`), never ORM models.
//!
//! Every transaction that touches a tenant's rows runs under that tenant. On Postgres the store
//! sets it with `set_config('voicegraph.tenant_id', …, true)` — transaction-local, so a pooled
//! connection never carries it into the next transaction — and row-level security (forced, on
//! every table with a `tenant_id`) makes a query without a tenant see and write nothing. The
//! store filters by tenant as well, which is all the scoping SQLite has.
//!
//! The few reads that must cross tenants go through [`system`]: authenticating a key before its
//! tenant is known, checking open sockets' keys for revocation, the instance's event hub and the
//! outbox relay. On Postgres each is a `SECURITY DEFINER` function created by the migrations
//! (see `migrations::m20261203_000001_row_level_security`); the runtime role can call those
//! functions and nothing else that crosses a tenant.
//!
//! On Postgres the store also listens ([`notify`]): triggers notify outbox rows, sequenced events,
//! due jobs and revoked keys from inside the transactions that make them, and the roles wait on
//! those notices instead of polling.

mod analyses;
mod audit;
mod calls;
mod categories;
pub mod documents;
mod events;
mod keys;
mod notify;
mod outbox;
pub mod queue;
mod redaction;
mod system;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};
use uuid::Uuid;

pub use calls::{CallFilter, CallOrder, Change, Keyset, NewCall, PageQuery, ResultKeys};
pub use categories::CategoryFields;
pub use events::{DEST_BLOB_DELETE, DEST_EVENTS, DEST_JOBS};
pub use keys::NewKey;
pub use notify::{Link, Notifications};
pub use outbox::{Destinations, OutboxClaim, OutboxPending};
pub use redaction::RedactedRecording;
pub use webhooks::{DeliveryFilter, PreparedAttempt, WebhookFields, DEST_WEBHOOK};

use crate::error::{AppError, AppResult};

/// How to open the pool.
pub struct ConnectSettings {
    pub url: String,
    pub max_connections: u32,
    /// Counts every statement (the metrics' `db_statements`).
    pub on_statement: Option<prometheus::IntCounter>,
}

/// A handle on the application database: cheap to clone, shared by every role of the process.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// The database's notifications, as this process hears them (see [`notify`]).
    notifications: Arc<Notifications>,
    /// The statement counter, for statements that bypass SeaORM's metric callback (the
    /// listener's, and the one-message reads of [`Store::tenant_read`]).
    statements: Option<prometheus::IntCounter>,
    /// Where it connected, when it did ([`Store::lock_migrations`] opens a connection of its own).
    url: Option<String>,
}

/// The advisory lock key `voicegraph migrate` holds while it migrates.
const MIGRATION_LOCK: i64 = 0x766f_6963_6567;

impl From<DbErr> for AppError {
    fn from(e: DbErr) -> Self {
        if unreachable_database(&e) {
            tracing::warn!(error = %e, "the database is unreachable");
            return AppError::Unavailable(crate::error::UNAVAILABLE_MESSAGE.into());
        }
        AppError::Internal(anyhow::Error::new(e))
    }
}

/// Whether a database error that says so is anywhere in `e`'s chain (see
/// [`unreachable_database`]).
pub fn unreachable_database_in(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<DbErr>()
            .is_some_and(unreachable_database)
    })
}

/// Whether `e` says the database could not be reached (no connection to be had, a connection
/// lost, the server shutting down or refusing connections), rather than that a statement failed:
/// the request did nothing and may be retried.
pub fn unreachable_database(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as S;
    let sqlx = match e {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e,
        DbErr::Conn(_) => return true,
        _ => return false,
    };
    match sqlx.as_ref() {
        // A protocol error leaves the connection unusable (e.g. a server that closed it while
        // it was being opened).
        S::Io(_)
        | S::PoolTimedOut
        | S::PoolClosed
        | S::WorkerCrashed
        | S::Tls(_)
        | S::Protocol(_) => true,
        // Class 08 (connection exception), the server shutting down or starting up, too many
        // connections.
        S::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl Store {
    /// Opens the pool; prepares SQLite for several roles (WAL lets readers run beside the one
    /// writer; the setting persists in the file).
    pub async fn connect(settings: ConnectSettings) -> anyhow::Result<Self> {
        let mut opts = ConnectOptions::new(settings.url.clone());
        opts.max_connections(settings.max_connections.max(2))
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let mut db = Database::connect(opts)
            .await
            .context("connecting to the database")?;
        if db.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        }
        if let Some(counter) = settings.on_statement.clone() {
            db.set_metric_callback(move |info| {
                counter.inc();
                tracing::trace!(sql = %info.statement.sql, elapsed = ?info.elapsed, failed = info.failed, "statement");
            });
        }
        let mut store = Self::from_connection(db);
        store.statements = settings.on_statement;
        store.url = Some(settings.url);
        Ok(store)
    }

    /// A store over an open connection (tests, tools).
    pub fn from_connection(db: DatabaseConnection) -> Self {
        Self {
            notifications: Arc::new(Notifications::new(db.get_database_backend())),
            db,
            statements: None,
            url: None,
        }
    }

    /// Counts a statement sent outside the pool, which the pool's callback does not see.
    fn count_statement(&self) {
        if let Some(counter) = &self.statements {
            counter.inc();
        }
    }

    /// The connection underneath, for tests and fixtures that inspect tables directly. Product
    /// code goes through the store's methods.
    #[doc(hidden)]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// Brings the schema up to date. Run as the role that owns the tables.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        use migrations::MigratorTrait;
        migrations::Migrator::up(&self.db, None)
            .await
            .context("running migrations")
    }

    /// Grants the runtime role what it needs on the migrated schema (Postgres only): data access
    /// on every table and the cross-tenant functions, nothing that owns or bypasses anything.
    pub async fn grant_runtime_role(&self, role: &str) -> anyhow::Result<()> {
        migrations::grant_runtime_role(&self.db, role)
            .await
            .with_context(|| format!("granting the runtime role {role}"))
    }

    /// Waits for, then holds, the deployment's migration lock (a session-level advisory lock on
    /// a connection of its own, Postgres only): processes migrating at once (new instances
    /// booting together) take turns, and the later ones find nothing left to do. The lock ends
    /// with the returned connection (closed, or gone with the process).
    pub async fn lock_migrations(&self) -> anyhow::Result<Option<DatabaseConnection>> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let url = self
            .url
            .clone()
            .context("the store was opened without a URL to lock with")?;
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(1)
            .min_connections(0)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let lock = Database::connect(opts)
            .await
            .context("connecting for the migration lock")?;
        lock.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await
            .context("taking the migration lock")?;
        Ok(Some(lock))
    }

    /// Gives the runtime role its login password, creating the role when it does not exist
    /// (Postgres only; see `migrations::ensure_runtime_role`).
    pub async fn ensure_runtime_role(&self, role: &str, password: &str) -> anyhow::Result<()> {
        migrations::ensure_runtime_role(&self.db, role, password)
            .await
            .with_context(|| format!("creating or updating the runtime role {role}"))
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        Ok(self.db.ping().await?)
    }

    /// A transaction under `tenant`: on Postgres the row-level security policies see this
    /// tenant's rows and no other's, until the transaction ends.
    async fn tenant_txn(&self, tenant: Uuid) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        if self.is_postgres() {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT set_config('voicegraph.tenant_id', $1, true)",
                [tenant.to_string().into()],
            ))
            .await?;
        }
        Ok(txn)
    }
}

impl Store {
    /// One read of a tenant's rows, decoded as the entity's models; the read-only twin of
    /// [`Store::tenant_txn`] for the hot paths (a call, a page of calls, their nested lists).
    ///
    /// On Postgres, a read whose values are all of kinds that cannot carry SQL (uuids, numbers,
    /// timestamps, booleans, plain text: every read by id, page, cursor and upload key) is sent as ONE simple-protocol
    /// message, `SELECT set_config('voicegraph.tenant_id', …, true); SELECT …`, with the values
    /// written into the text by SeaQuery. Postgres runs the statements of one such message as
    /// one implicit transaction, so the tenant setting holds for the `SELECT` and ends with it,
    /// exactly as in a transaction of its own — one round trip instead of four (`BEGIN`, the
    /// setting, the query, `COMMIT`). Any other read (a filter with other text in it), and every
    /// read on SQLite, goes through a transaction with bound parameters.
    async fn tenant_read<E>(
        &self,
        tenant: Uuid,
        select: sea_orm::Select<E>,
    ) -> Result<Vec<E::Model>, DbErr>
    where
        E: sea_orm::EntityTrait,
    {
        use sea_orm::{FromQueryResult, QueryTrait};
        if self.is_postgres() {
            let statement = select.build(DbBackend::Postgres);
            let inlinable = statement
                .values
                .as_ref()
                .is_none_or(|v| v.0.iter().all(cannot_carry_sql));
            if inlinable {
                let sql = format!(
                    "SELECT set_config('voicegraph.tenant_id', '{tenant}', true); {}",
                    select
                        .as_query()
                        .to_string(sea_orm::sea_query::PostgresQueryBuilder)
                );
                let rows = self.simple_rows(sql).await?;
                return rows
                    .into_iter()
                    .map(|row| E::Model::from_query_result(&row.into(), ""))
                    .collect();
            }
        }
        let txn = self.tenant_txn(tenant).await?;
        let rows = select.all(&txn).await?;
        txn.commit().await?;
        Ok(rows)
    }

    /// The database's snapshot (`pg_current_snapshot()`, Postgres only): which transactions
    /// have committed. Two equal readings mean nothing committed between them, on any
    /// connection of any instance (see `graphql::response_cache`).
    pub async fn snapshot(&self) -> Result<Option<String>, DbErr> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let pool = self.db.get_postgres_connection_pool();
        let snapshot: String = sea_orm::sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(pool)
            .await
            .map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e))))?;
        self.count_statement();
        Ok(Some(snapshot))
    }

    /// The rows of the last statement of a simple-protocol message of two (see
    /// [`Store::tenant_read`]).
    async fn simple_rows(&self, sql: String) -> Result<Vec<sea_orm::sqlx::postgres::PgRow>, DbErr> {
        use futures::TryStreamExt;
        use sea_orm::sqlx::Either;
        let pool = self.db.get_postgres_connection_pool();
        let mut results =
            sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(sql)).fetch_many(pool);
        let mut finished = 0;
        let mut rows = Vec::new();
        while let Some(item) = results
            .try_next()
            .await
            .map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e))))?
        {
            match item {
                Either::Left(_) => finished += 1,
                Either::Right(row) if finished == 1 => rows.push(row),
                // The setting's own row.
                Either::Right(_) => {}
            }
        }
        if let Some(c) = &self.statements {
            c.inc_by(2);
        }
        Ok(rows)
    }
}

/// A row as a JSON object of its columns, for Postgres' `jsonb_populate_record`.
fn row_json<M: sea_orm::ModelTrait>(model: &M) -> AppResult<serde_json::Value> {
    use sea_orm::{IdenStatic, Iterable};
    let mut row = serde_json::Map::new();
    for column in <<M as sea_orm::ModelTrait>::Entity as sea_orm::EntityTrait>::Column::iter() {
        row.insert(column.as_str().to_string(), value_json(model.get(column))?);
    }
    Ok(serde_json::Value::Object(row))
}

/// A column's value as `jsonb_populate_record` reads it back into the column's type.
fn value_json(v: sea_orm::Value) -> AppResult<serde_json::Value> {
    use sea_orm::Value as V;
    use serde_json::Value as J;
    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> J) -> J {
        v.map(f).unwrap_or(J::Null)
    }
    Ok(match v {
        V::Bool(b) => or_null(b, J::Bool),
        V::SmallInt(n) => or_null(n, J::from),
        V::Int(n) => or_null(n, J::from),
        V::BigInt(n) => or_null(n, J::from),
        V::Double(n) => or_null(n, J::from),
        V::Float(n) => or_null(n, J::from),
        V::String(s) => or_null(s, J::String),
        V::Uuid(u) => or_null(u, |u| J::String(u.to_string())),
        V::ChronoDateTimeUtc(t) => or_null(t, |t| J::String(json_time(t))),
        V::Json(j) => or_null(j, |j| *j),
        other => {
            return Err(anyhow::anyhow!("no JSON form for the column value {other:?}").into());
        }
    })
}

/// A time as `jsonb_populate_record` reads it into `timestamptz`, to the microsecond.
fn json_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Whether a value written into SQL text can only be a literal of its type: numbers, booleans,
/// uuids and times can, and so can text made only of letters, digits and `/ _ . - :` (an upload
/// key, an idempotency key of the usual shape: nothing in it can end the quoted literal SeaQuery
/// writes); other text, JSON and bytes are always bound as parameters instead.
fn cannot_carry_sql(v: &sea_orm::Value) -> bool {
    use sea_orm::Value as V;
    if let V::String(s) = v {
        return s.as_deref().is_none_or(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.-:".contains(&b))
        });
    }
    matches!(
        v,
        V::Bool(_)
            | V::TinyInt(_)
            | V::SmallInt(_)
            | V::Int(_)
            | V::BigInt(_)
            | V::TinyUnsigned(_)
            | V::SmallUnsigned(_)
            | V::Unsigned(_)
            | V::BigUnsigned(_)
            | V::Float(_)
            | V::Double(_)
            | V::Uuid(_)
            | V::ChronoDateTimeUtc(_)
    )
}

/// The tokens stored in a row's three token columns; `None` when the row records none (the
/// local analyser, or not analysed yet).
fn token_usage(
    prompt: Option<i64>,
    output: Option<i64>,
    total: Option<i64>,
) -> Option<crate::domain::TokenUsage> {
    total.map(|total_tokens| crate::domain::TokenUsage {
        prompt_tokens: prompt.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        total_tokens,
    })
}

#[cfg(test)]
mod tests {
    /// Only values that cannot end a quoted literal are written into SQL text.
    #[test]
    fn only_plain_values_are_inlined() {
        use sea_orm::Value as V;
        for plain in ["uploads/6f1c/0a9e-11", "idem_2026.12:04", ""] {
            assert!(
                super::cannot_carry_sql(&V::String(Some(plain.into()))),
                "{plain}"
            );
        }
        for hostile in ["a'b", "a\\b", "x; DROP TABLE calls", "é", "a\nb", "$$"] {
            assert!(
                !super::cannot_carry_sql(&V::String(Some(hostile.into()))),
                "{hostile}"
            );
        }
        assert!(super::cannot_carry_sql(&V::String(None)));
        assert!(super::cannot_carry_sql(&V::Uuid(Some(uuid::Uuid::nil()))));
        assert!(!super::cannot_carry_sql(&V::Json(Some(Box::new(
            serde_json::json!({})
        )))));
        assert!(!super::cannot_carry_sql(&V::Bytes(Some(vec![1]))));
    }

    /// The store is the only code that speaks SQL: no other module of the service names SeaORM
    /// or the entities.
    #[test]
    fn only_the_store_imports_the_orm() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 20, "the sources were found");
        let mut offenders = Vec::new();
        for file in files {
            if file.starts_with(src.join("store")) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.contains("sea_orm::")
                    || line.contains("entities::")
                    || line.contains("use sea_orm")
                    || line.contains("use entities")
                    || line.contains("migrations::")
                {
                    offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "outside src/store:\n{}",
            offenders.join("\n")
        );
    }

    /// The use cases and the domain know ports, never adapters: what backs a port is the
    /// composition root's choice (`wiring`).
    #[test]
    fn services_and_the_domain_import_no_adapter() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for dir in ["services", "domain"] {
            for entry in std::fs::read_dir(src.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("crate::adapters") && !text.contains("crate::store::queue"),
                    "{} imports an adapter",
                    path.display()
                );
            }
        }
    }
}
