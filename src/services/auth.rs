//! Who is calling: the `Authenticator` (API keys, random, shown once, stored as SHA-256, beside
//! end users' JWTs), tenants, roles, and the platform admin created from the bootstrap key at
//! first start.

use std::collections::HashSet;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{Actor, ApiKeyRecord, TenantRecord};
use crate::error::{AppError, AppResult};
use crate::services::jwt::{self, JwtVerifier};
use crate::store::{NewKey, Store};

/// Every API key starts with this; tokens that do not are never looked up as keys.
pub const API_KEY_PREFIX: &str = "vg_";

/// What an API key may do. Each mutation, and each query not open to every role, names the roles
/// it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, async_graphql::Enum)]
#[graphql(name = "Role")]
pub enum Role {
    /// Manages the tenant's keys and does everything below.
    Admin,
    /// Submits, retries, re-analyses, tags and deletes calls, and reads them.
    Integrator,
    /// Reads calls and statistics, tags calls and manages the categories.
    Analyst,
    /// Reads calls.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Integrator => "integrator",
            Self::Analyst => "analyst",
            Self::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "integrator" => Some(Self::Integrator),
            "analyst" => Some(Self::Analyst),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }
}

/// What a caller may do; [`PERMISSIONS`] says who holds each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadCalls,
    ReadStats,
    SubmitCalls,
    TagCalls,
    ManageCalls,
    ManageCategories,
    ManageKeys,
    ManageTenants,
    ReadAuditLog,
}

/// One row of the permission table.
pub struct PermissionRow {
    pub permission: Permission,
    /// The operations of the API it covers, as the README shows them.
    pub operations: &'static str,
    /// The roles that hold it, in their own tenant.
    pub roles: &'static [Role],
    /// Whether the platform admin holds it whatever its role.
    pub platform_admin: bool,
}

/// Who may do what: the one table every service checks (through [`Caller::require`]) and the
/// README renders ([`permission_table`]; a test keeps the two the same). Everything is within
/// the caller's own tenant, except where the platform admin is named.
pub const PERMISSIONS: &[PermissionRow] = &[
    PermissionRow {
        permission: Permission::ReadCalls,
        operations:
            "`call`, `calls`, `node`, `callUpdated`, `callEvents`, `categories`, recording and result URLs",
        roles: &[Role::Admin, Role::Integrator, Role::Analyst, Role::Viewer],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::ReadStats,
        operations: "`callStats`",
        roles: &[Role::Admin, Role::Analyst],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::SubmitCalls,
        operations: "`createRecordingUpload`, `submitCall`",
        roles: &[Role::Admin, Role::Integrator],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::TagCalls,
        operations: "`tagCall`",
        roles: &[Role::Admin, Role::Integrator, Role::Analyst],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::ManageCalls,
        operations: "`retryCall`, `reanalyzeCall`, `deleteCall`",
        roles: &[Role::Admin, Role::Integrator],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::ManageCategories,
        operations: "`createCategory`, `updateCategory`, `deleteCategory`",
        roles: &[Role::Admin, Role::Analyst],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::ManageKeys,
        operations: "`apiKeys`, `createApiKey`, `revokeApiKey` (the platform admin: in any tenant)",
        roles: &[Role::Admin],
        platform_admin: true,
    },
    PermissionRow {
        permission: Permission::ReadAuditLog,
        operations: "`auditLog` (the platform admin: of any tenant)",
        roles: &[Role::Admin],
        platform_admin: true,
    },
    PermissionRow {
        permission: Permission::ManageTenants,
        operations: "`createTenant`",
        roles: &[],
        platform_admin: true,
    },
];

/// The permission table as Markdown, for the README.
pub fn permission_table() -> String {
    let roles = [Role::Admin, Role::Integrator, Role::Analyst, Role::Viewer];
    let mut out = String::from(
        "| operations | admin | integrator | analyst | viewer | platform admin |\n|---|---|---|---|---|---|\n",
    );
    let mark = |yes: bool| if yes { "✓" } else { "—" };
    for row in PERMISSIONS {
        out.push_str(&format!("| {} |", row.operations));
        for role in roles {
            out.push_str(&format!(" {} |", mark(row.roles.contains(&role))));
        }
        out.push_str(&format!(
            " {} |\n",
            mark(row.platform_admin || row.roles.contains(&Role::Admin))
        ));
    }
    out
}

/// An authenticated caller. Every service call is made on behalf of one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: Uuid,
    pub role: Role,
    /// The API key used, if any (JWT callers have none).
    pub key_id: Option<Uuid>,
    /// May create tenants and keys in any tenant.
    pub platform_admin: bool,
    /// When the credential stops being valid: a JWT's `exp` (API keys do not expire).
    pub expires_at: Option<DateTime<Utc>>,
    /// Who the identity provider says signed in: a JWT's `sub` (none for API keys).
    pub subject: Option<String>,
}

impl Caller {
    /// How the audit log names this caller.
    pub fn actor(&self) -> Actor {
        Actor {
            tenant_id: self.tenant_id,
            key_id: self.key_id,
            subject: self.subject.clone(),
            role: self.role.as_str().to_string(),
            platform_admin: self.platform_admin,
        }
    }

    pub fn can(&self, p: Permission) -> bool {
        PERMISSIONS
            .iter()
            .find(|row| row.permission == p)
            .is_some_and(|row| {
                row.roles.contains(&self.role) || (row.platform_admin && self.platform_admin)
            })
    }

    pub fn require(&self, p: Permission) -> AppResult<()> {
        if self.can(p) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "the {} role may not do this",
                self.role.as_str()
            )))
        }
    }
}

pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random key: `vg_` and 40 characters of base62, about 238 bits.
pub fn generate_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("vg_{body}")
}

fn prefix_of(secret: &str) -> String {
    secret.chars().take(10).collect()
}

/// Resolves a bearer token to a caller. Unknown, revoked or malformed tokens are `UNAUTHENTICATED`.
pub async fn authenticate(store: &Store, token: &str) -> AppResult<Caller> {
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(AppError::Unauthenticated("invalid credentials".into()));
    }
    let key = store.key_by_hash(&hash_key(token)).await?;
    let Some(key) = key.filter(|k| k.revoked_at.is_none()) else {
        return Err(AppError::Unauthenticated(
            "invalid or revoked API key".into(),
        ));
    };
    let role = Role::parse(&key.role)
        .ok_or_else(|| anyhow::anyhow!("api key {} has unknown role {}", key.id, key.role))?;
    // Recording every use would turn each read into a write; once a minute is enough.
    let stale = key
        .last_used_at
        .is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60));
    if stale {
        store.touch_key(key.tenant_id, key.id).await?;
    }
    Ok(Caller {
        tenant_id: key.tenant_id,
        role,
        key_id: Some(key.id),
        platform_admin: key.platform_admin,
        expires_at: None,
        subject: None,
    })
}

/// Resolves bearer tokens to callers: API keys (`vg_…`) by their hash, JWTs with the verifier
/// the settings configure. Built once at start-up; remembers tenants already seen, so that a
/// valid JWT costs no database round trip after the first.
pub struct Authenticator {
    store: Store,
    jwt: Option<JwtVerifier>,
    /// Tenants known to exist (tenants are never deleted, so this is never stale).
    tenants: RwLock<HashSet<Uuid>>,
}

impl Authenticator {
    pub fn new(store: Store, jwt: Option<JwtVerifier>) -> Self {
        Self {
            store,
            jwt,
            tenants: RwLock::new(HashSet::new()),
        }
    }

    /// The caller a bearer token stands for; anything else is `UNAUTHENTICATED` with the reason.
    pub async fn authenticate(&self, token: &str) -> AppResult<Caller> {
        let token = token.trim();
        if token.starts_with(API_KEY_PREFIX) {
            return authenticate(&self.store, token).await;
        }
        if !jwt::looks_like_jwt(token) {
            return Err(AppError::Unauthenticated(match self.jwt {
                Some(_) => "expected an API key (`vg_…`) or a JWT".into(),
                None => "expected an API key (`vg_…`)".into(),
            }));
        }
        let Some(verifier) = &self.jwt else {
            return Err(AppError::Unauthenticated(
                "this server does not accept JWTs (no VOICEGRAPH_JWT_HS256_SECRET or VOICEGRAPH_JWT_JWKS_URL is set): use an API key (`vg_…`)".into(),
            ));
        };
        let claims = verifier.verify(token).await.inspect_err(|e| {
            tracing::debug!(reason = %e, "JWT refused");
        })?;
        if !self.tenant_exists(claims.tenant_id).await? {
            tracing::debug!(tenant = %claims.tenant_id, "JWT refused: unknown tenant");
            return Err(AppError::Unauthenticated(format!(
                "unknown tenant {} (the token's tenant claim names no tenant of this service)",
                claims.tenant_id
            )));
        }
        Ok(Caller {
            tenant_id: claims.tenant_id,
            role: claims.role,
            key_id: None,
            platform_admin: false,
            expires_at: Some(claims.expires_at),
            subject: claims.subject,
        })
    }

    async fn tenant_exists(&self, id: Uuid) -> AppResult<bool> {
        if self
            .tenants
            .read()
            .expect("tenant cache lock")
            .contains(&id)
        {
            return Ok(true);
        }
        let exists = self.store.get_tenant(id).await?.is_some();
        // Only tenants that exist are remembered, so the set grows with real tenants only.
        if exists {
            self.tenants.write().expect("tenant cache lock").insert(id);
        }
        Ok(exists)
    }
}

/// At first start (no tenants), creates tenant `default` and the platform-admin key. Returns the
/// key when one was generated, so that development can print it.
pub async fn bootstrap(store: &Store, admin_key: Option<&str>) -> AppResult<Option<String>> {
    if store.tenant_count().await? > 0 {
        return Ok(None);
    }
    let generated = admin_key.is_none().then(generate_key);
    let secret = admin_key
        .map(str::to_string)
        .or(generated.clone())
        .unwrap_or_default();
    // Several instances may start at once: the key's unique hash lets exactly one transaction win.
    let created = store
        .create_tenant(
            "default".into(),
            None,
            Some(new_key(
                "bootstrap admin".into(),
                Role::Admin,
                true,
                &secret,
            )),
        )
        .await;
    let tenant = match created {
        Ok(t) => t,
        Err(_) if store.tenant_count().await? > 0 => return Ok(None),
        Err(e) => return Err(e),
    };
    tracing::info!(tenant = %tenant.id, "created tenant `default` and the platform-admin key");
    Ok(generated)
}

fn new_key(name: String, role: Role, platform_admin: bool, secret: &str) -> NewKey {
    NewKey {
        name,
        prefix: prefix_of(secret),
        key_hash: hash_key(secret),
        role: role.as_str().into(),
        platform_admin,
    }
}

fn validate_name(name: &str, what: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::bad_input(format!(
            "{what} must be 1 to 100 characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::bad_input(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(name.to_string())
}

pub async fn create_tenant(store: &Store, caller: &Caller, name: &str) -> AppResult<TenantRecord> {
    if !caller.can(Permission::ManageTenants) {
        return Err(AppError::Forbidden(
            "only the platform admin creates tenants".into(),
        ));
    }
    let name = validate_name(name, "name")?;
    store.create_tenant(name, Some(&caller.actor()), None).await
}

pub async fn get_tenant(store: &Store, caller: &Caller, id: Uuid) -> AppResult<TenantRecord> {
    if id != caller.tenant_id && !caller.platform_admin {
        return Err(AppError::not_found("tenant"));
    }
    store
        .get_tenant(id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))
}

/// Creates a key; returns it with its secret, which is never shown again.
pub async fn create_api_key(
    store: &Store,
    caller: &Caller,
    tenant_id: Option<Uuid>,
    role: Role,
    name: &str,
) -> AppResult<(ApiKeyRecord, String)> {
    caller.require(Permission::ManageKeys)?;
    let tenant_id = tenant_id.unwrap_or(caller.tenant_id);
    if tenant_id != caller.tenant_id && !caller.platform_admin {
        return Err(AppError::Forbidden(
            "admins create keys in their own tenant only".into(),
        ));
    }
    let name = validate_name(name, "name")?;
    let secret = generate_key();
    let key = store
        .create_key(
            tenant_id,
            new_key(name, role, false, &secret),
            &caller.actor(),
        )
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    Ok((key, secret))
}

/// Revokes a key: every request with it fails from the next one on, on every instance. The
/// sockets and streams it opened end through `services::revocation`.
pub async fn revoke_api_key(store: &Store, caller: &Caller, id: Uuid) -> AppResult<ApiKeyRecord> {
    caller.require(Permission::ManageKeys)?;
    // The platform admin may revoke any tenant's key: the one cross-tenant lookup here.
    let tenant = if caller.platform_admin {
        store.key_tenant(id).await?
    } else {
        Some(caller.tenant_id)
    };
    let Some(tenant) = tenant else {
        return Err(AppError::not_found("API key"));
    };
    store
        .revoke_key(tenant, id, &caller.actor())
        .await?
        .ok_or_else(|| AppError::not_found("API key"))
}

/// Which of `ids` are keys that still work (not revoked); the others were revoked (or never
/// existed).
pub async fn active_keys(store: &Store, ids: &[Uuid]) -> anyhow::Result<HashSet<Uuid>> {
    store.active_keys(ids).await
}

pub async fn list_api_keys(store: &Store, caller: &Caller) -> AppResult<Vec<ApiKeyRecord>> {
    caller.require(Permission::ManageKeys)?;
    store.list_keys(caller.tenant_id).await
}
