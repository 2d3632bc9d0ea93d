//! The runtime role: the one the application connects as, granted data access on the migrated
//! schema and the cross-tenant functions, and nothing that owns or bypasses anything — so that
//! row-level security binds every query it makes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};

use crate::m20261203_000001_row_level_security::{
    current_schema, quote_ident, CURRENT_TENANT_FUNCTION, DEFINER_FUNCTIONS,
};
use crate::m20261206_000001_submit_function::SUBMIT_FUNCTION;

/// Whether `role` is a plain, lower-case SQL identifier that is safe to write into a statement:
/// `[a-z_][a-z0-9_]*`, at most 63 bytes (Postgres' limit), and neither `public` nor a reserved
/// `pg_` role.
fn is_plain_identifier(role: &str) -> bool {
    let mut chars = role.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    role.len() <= 63
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && role != "public"
        && !role.starts_with("pg_")
}

fn refuse(role: &str, why: &str) -> DbErr {
    DbErr::Custom(format!(
        "cannot use {role:?} as the runtime role: {why}; the runtime role must own nothing and \
         bypass nothing, so that row-level security applies to it"
    ))
}

/// Gives the runtime role `role` the login password `password`, creating the role when it does
/// not exist (`LOGIN`, and nothing that creates, owns or bypasses anything), so that a new
/// deployment needs no manual step between creating the database and starting the service.
/// Run it as the owner, with the privilege to create roles (an RDS master user has it). An
/// existing role gets the password only once [`grant_runtime_role`] has accepted it (it is no
/// superuser, owner or `BYPASSRLS` role), so a misconfigured role name never changes a
/// privileged role's password. Postgres quotes the name and the password itself (`format`'s
/// `%I` and `%L`). On SQLite it does nothing.
pub async fn ensure_runtime_role(
    db: &DatabaseConnection,
    role: &str,
    password: &str,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    if !is_plain_identifier(role) {
        return Err(refuse(
            role,
            "it is not a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes, not \
             `public` or `pg_*`)",
        ));
    }
    let exists = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_roles WHERE rolname = $1",
            [Value::from(role)],
        ))
        .await?
        .is_some();
    let template = if exists {
        grant_runtime_role(db, role).await?;
        "ALTER ROLE %I LOGIN PASSWORD %L"
    } else {
        "CREATE ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
    };
    let statement = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT format($1, $2, $3) AS statement",
            [
                Value::from(template),
                Value::from(role),
                Value::from(password),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("format() returned no row".into()))?
        .try_get::<String>("", "statement")?;
    db.execute_unprepared(&statement).await?;
    Ok(())
}

/// Grants the runtime role `role` what the application needs on the current schema: `USAGE` on
/// the schema; `SELECT`, `INSERT`, `UPDATE` and `DELETE` on every table; `USAGE` and `SELECT` on
/// every sequence; `EXECUTE` on `voicegraph_current_tenant()`, `voicegraph_submit_call(…)` (an
/// invoker's function) and the `SECURITY DEFINER` functions of the row-level security migration. Nothing else: no `TRUNCATE`, `REFERENCES` or
/// `TRIGGER`, no DDL; tenants are created and read but never changed or deleted (a delete
/// would cascade past row-level security), and the migrations' own table is read-only.
///
/// Run it as the role that owns the tables, after migrating (the functions must exist). It is
/// idempotent, so it may run on every migrate. It refuses a role that is not a plain lower-case
/// identifier, does not exist, is a superuser or has `BYPASSRLS`, is the current user, or is
/// (or is a member of) a role that owns the schema, something in it, or a superuser or
/// `BYPASSRLS` role. On SQLite there are no roles and it does nothing.
pub async fn grant_runtime_role(db: &DatabaseConnection, role: &str) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    if !is_plain_identifier(role) {
        return Err(refuse(
            role,
            "it is not a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes, not \
             `public` or `pg_*`)",
        ));
    }

    let txn = db.begin().await?;
    let schema = current_schema(&txn).await?;
    let check = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            r#"
SELECT
    r.rolsuper AS superuser,
    r.rolbypassrls AS bypassrls,
    r.rolname = current_user AS is_current_user,
    pg_has_role(r.oid, current_user, 'MEMBER') AS member_of_current_user,
    EXISTS (
        SELECT 1 FROM pg_namespace n
        WHERE n.nspname = $2 AND (
            pg_has_role(r.oid, n.nspowner, 'MEMBER')
            OR EXISTS (SELECT 1 FROM pg_class c
                       WHERE c.relnamespace = n.oid AND pg_has_role(r.oid, c.relowner, 'MEMBER'))
            OR EXISTS (SELECT 1 FROM pg_proc p
                       WHERE p.pronamespace = n.oid AND pg_has_role(r.oid, p.proowner, 'MEMBER'))
        )
    ) AS owns_schema_objects,
    EXISTS (
        SELECT 1 FROM pg_roles s
        WHERE s.oid <> r.oid AND (s.rolsuper OR s.rolbypassrls)
            AND pg_has_role(r.oid, s.oid, 'MEMBER')
    ) AS member_of_privileged
FROM pg_roles r
WHERE r.rolname = $1
"#,
            [Value::from(role), Value::from(schema.as_str())],
        ))
        .await?;
    let Some(check) = check else {
        return Err(refuse(role, "no such role exists"));
    };
    let flag = |column: &str| check.try_get::<bool>("", column);
    if flag("superuser")? {
        return Err(refuse(role, "it is a superuser"));
    }
    if flag("bypassrls")? {
        return Err(refuse(role, "it has BYPASSRLS"));
    }
    if flag("is_current_user")? {
        return Err(refuse(
            role,
            "it is the current user, which owns the tables and runs the migrations",
        ));
    }
    if flag("member_of_current_user")? {
        return Err(refuse(
            role,
            "it is a member of the current user, which owns the tables",
        ));
    }
    if flag("owns_schema_objects")? {
        return Err(refuse(
            role,
            &format!(
                "it owns (or is a member of a role that owns) schema {schema:?} or something in it"
            ),
        ));
    }
    if flag("member_of_privileged")? {
        return Err(refuse(
            role,
            "it is a member of a superuser or BYPASSRLS role",
        ));
    }

    let schema = quote_ident(&schema);
    let grantee = quote_ident(role);
    // The tenant accessor and the submission are executable by PUBLIC already; granted too, so
    // that the runtime role keeps them should PUBLIC lose them.
    let functions = DEFINER_FUNCTIONS
        .iter()
        .chain([&CURRENT_TENANT_FUNCTION, &SUBMIT_FUNCTION])
        .map(|f| format!("{schema}.{f}"))
        .collect::<Vec<_>>()
        .join(", ");
    txn.execute_unprepared(&format!(
        r#"
GRANT USAGE ON SCHEMA {schema} TO {grantee};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {grantee};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {grantee};
GRANT EXECUTE ON FUNCTION {functions} TO {grantee};
REVOKE UPDATE, DELETE ON TABLE {schema}.tenants FROM {grantee};
REVOKE INSERT, UPDATE, DELETE ON TABLE {schema}.seaql_migrations FROM {grantee};
"#
    ))
    .await?;
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use super::is_plain_identifier;

    #[test]
    fn plain_identifiers() {
        for ok in ["voicegraph_app", "_x", "a", "app2", &"a".repeat(63)] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "App",
            "2app",
            "app-role",
            "app role",
            "app\"; DROP TABLE calls; --",
            "é",
            "public",
            "pg_read_all_data",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }
}
