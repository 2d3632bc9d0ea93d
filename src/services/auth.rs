//! Who is calling: the `Authenticator` (API keys, random, shown once, stored as SHA-256, beside
//! end users' JWTs), tenants, roles, and the platform admin created from the bootstrap key at
//! first start.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use uuid::Uuid;

use crate::domain::{Actor, ApiKeyRecord, TenantRecord};
use crate::error::{AppError, AppResult};
use crate::services::jwt::{self, JwtVerifier};
use crate::store::{Link, NewKey, Notifications, Store};

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
    ManageWebhooks,
    ManageRedaction,
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
        permission: Permission::ManageRedaction,
        operations: "`redactionPolicy`, `setRedactionPolicy`",
        roles: &[Role::Admin],
        platform_admin: false,
    },
    PermissionRow {
        permission: Permission::ManageWebhooks,
        operations: "`webhooks`, `webhook`, `webhookDeliveries`, `createWebhook`, `updateWebhook`, `deleteWebhook`, `rotateWebhookSecret`, `redeliverWebhook`",
        roles: &[Role::Admin],
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

/// A key's use is recorded when the last record is older than this (about once a minute):
/// recording every use would turn each read into a write.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Most API keys an instance keeps resolved; the least recently used go first. Only keys that
/// exist and work are kept, so unknown tokens cannot grow it.
const KEY_CACHE_CAPACITY: usize = 10_000;

/// The caller of a key found by its hash, checked: `None` for an unknown or revoked key.
fn caller_of(key: &ApiKeyRecord) -> AppResult<Option<Caller>> {
    if key.revoked_at.is_some() {
        return Ok(None);
    }
    let role = Role::parse(&key.role)
        .ok_or_else(|| anyhow::anyhow!("api key {} has unknown role {}", key.id, key.role))?;
    Ok(Some(Caller {
        tenant_id: key.tenant_id,
        role,
        key_id: Some(key.id),
        platform_admin: key.platform_admin,
        expires_at: None,
        subject: None,
    }))
}

fn refused_key() -> AppError {
    AppError::Unauthenticated("invalid or revoked API key".into())
}

/// A resolved API key.
struct CachedKey {
    caller: Caller,
    /// When it was read from the database.
    read_at: Instant,
    /// When its use was last recorded, as far as this instance knows.
    used_at: Option<DateTime<Utc>>,
}

/// Resolved API keys by hash, and what invalidates them.
struct KeyCache {
    entries: LruCache<String, CachedKey>,
    /// The listener connection the entries were read under: notices of another may be missing.
    generation: Option<u64>,
    /// Changes with every invalidation, so that a read racing one is not cached after it.
    epoch: u64,
    /// Keys revoked on any instance, as the database notifies them.
    revoked: broadcast::Receiver<Uuid>,
}

impl KeyCache {
    fn clear(&mut self) {
        self.entries.clear();
        self.epoch += 1;
    }

    fn forget(&mut self, key_id: Uuid) {
        let hashes: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.caller.key_id == Some(key_id))
            .map(|(h, _)| h.clone())
            .collect();
        for hash in hashes {
            self.entries.pop(&hash);
        }
        self.epoch += 1;
    }

    /// Applies the revocations notified since the last call, and drops everything when the
    /// notices may have missed some (the listener reconnected or is down, or this receiver lagged).
    fn sync(&mut self, link: Link) {
        loop {
            match self.revoked.try_recv() {
                Ok(id) => self.forget(id),
                Err(TryRecvError::Lagged(_)) => self.clear(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let generation = match link {
            Link::Up { generation } => Some(generation),
            Link::Down | Link::Unsupported => None,
        };
        if generation != self.generation {
            self.generation = generation;
            self.clear();
        }
    }
}

/// Resolves bearer tokens to callers: API keys (`vg_…`) by their hash, JWTs with the verifier
/// the settings configure. Built once at start-up.
///
/// Neither costs a database round trip once seen. A JWT's tenant is looked up the first time
/// only (tenants are never deleted). An API key is looked up the first time and then served from
/// an in-memory cache, which revocation invalidates:
///
/// - on this instance, at once (`forget_key`, called by `revokeApiKey`);
/// - on Postgres, on every instance when the database notifies the revocation (a trigger on
///   `api_keys` sends it from inside the revoking transaction, see `store::Notifications`). While
///   the listener is not connected the cache is bypassed, and when it (re)connects it is
///   emptied, since notices may have been missed in between;
/// - without notifications (SQLite, where several processes may share the file), an entry is
///   trusted for `ttl` (`VOICEGRAPH_KEY_CACHE_TTL_MS`, 1 s) only.
///
/// The issue asked for invalidation "through the event feed". The database notification is the
/// better channel: it is sent in the revoking transaction, so it is delivered if and only if the
/// revocation committed (a notice published next to the commit could announce a revocation that
/// rolled back, or be lost by a crash between the two), and it needs no Redis. Its one weakness,
/// notices missed while disconnected, is what the bypass and the flush cover.
///
/// A key's `last_used_at` is still recorded about once a minute, off the request path: the
/// write is spawned, and its failure only logged.
pub struct Authenticator {
    store: Store,
    jwt: Option<JwtVerifier>,
    /// Tenants known to exist (tenants are never deleted, so this is never stale).
    tenants: RwLock<HashSet<Uuid>>,
    keys: Mutex<KeyCache>,
    notifications: Arc<Notifications>,
    /// How long an entry is trusted without notifications.
    ttl: Duration,
    /// How often a key's use is recorded.
    touch_every: chrono::TimeDelta,
}

impl Authenticator {
    /// `ttl`: how long a resolved key is trusted when the database sends no notifications.
    pub fn new(store: Store, jwt: Option<JwtVerifier>, ttl: Duration) -> Self {
        let notifications = store.notifications().clone();
        Self {
            jwt,
            tenants: RwLock::new(HashSet::new()),
            keys: Mutex::new(KeyCache {
                entries: LruCache::new(
                    NonZeroUsize::new(KEY_CACHE_CAPACITY).expect("a capacity above zero"),
                ),
                generation: None,
                epoch: 0,
                revoked: notifications.keys(),
            }),
            notifications,
            ttl,
            touch_every: TOUCH_EVERY,
            store,
        }
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a key revoked on this instance, so that its next request is refused.
    pub fn forget_key(&self, key_id: Uuid) {
        self.lock_keys().forget(key_id);
    }

    /// How many API keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.lock_keys().entries.len()
    }

    async fn authenticate_key(&self, token: &str) -> AppResult<Caller> {
        if token.is_empty() || token.len() > 4096 {
            return Err(AppError::Unauthenticated("invalid credentials".into()));
        }
        let hash = hash_key(token);
        let link = self.notifications.link();
        let epoch = {
            let mut cache = self.lock_keys();
            cache.sync(link);
            let ttl = self.ttl;
            let trusted = |e: &CachedKey| match link {
                Link::Up { .. } => true,
                Link::Unsupported => e.read_at.elapsed() < ttl,
                // Notices may be missing: the database decides.
                Link::Down => false,
            };
            if let Some(entry) = cache.entries.get_mut(&hash).filter(|e| trusted(e)) {
                let touch = entry
                    .used_at
                    .is_none_or(|t| Utc::now() - t > self.touch_every);
                if touch {
                    entry.used_at = Some(Utc::now());
                }
                let caller = entry.caller.clone();
                drop(cache);
                if touch {
                    self.touch_later(&caller);
                }
                return Ok(caller);
            }
            cache.epoch
        };
        // Taken before the read: the entry is trusted for `ttl` from when the database said so.
        let read_at = Instant::now();
        let Some(key) = self.store.key_by_hash(&hash).await? else {
            return Err(refused_key());
        };
        let caller = caller_of(&key)?.ok_or_else(refused_key)?;
        let touch = key
            .last_used_at
            .is_none_or(|t| Utc::now() - t > self.touch_every);
        let used_at = if touch {
            Some(Utc::now())
        } else {
            key.last_used_at
        };
        if link != Link::Down {
            let mut cache = self.lock_keys();
            // Anything that invalidated keys since the read, or a listener that changed
            // connection, may concern this one: it is read again next time instead.
            cache.sync(self.notifications.link());
            if cache.epoch == epoch && self.notifications.link() == link {
                cache.entries.put(
                    hash,
                    CachedKey {
                        caller: caller.clone(),
                        read_at,
                        used_at,
                    },
                );
            }
        }
        if touch {
            self.touch_later(&caller);
        }
        Ok(caller)
    }

    /// Records the key's use in the background: a request neither waits for it nor fails with it.
    fn touch_later(&self, caller: &Caller) {
        let Some(key_id) = caller.key_id else {
            return;
        };
        let store = self.store.clone();
        let tenant = caller.tenant_id;
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(tenant, key_id).await {
                tracing::warn!(key = %key_id, error = ?e, "recording an API key's use failed");
            }
        });
    }

    /// The caller a bearer token stands for; anything else is `UNAUTHENTICATED` with the reason.
    pub async fn authenticate(&self, token: &str) -> AppResult<Caller> {
        let token = token.trim();
        if token.starts_with(API_KEY_PREFIX) {
            return self.authenticate_key(token).await;
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

/// Revokes a key. Its requests fail from the next one on here (the caller then tells the
/// [`Authenticator`] to forget it), on other instances as soon as the database's notice reaches
/// them (Postgres) or their cached copy expires (SQLite, 1 s). The sockets and streams it opened
/// end through `services::revocation`.
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "vg_unit_test_key";

    /// A store on a fresh SQLite file with the bootstrap key, and that key's caller.
    async fn store() -> (tempfile::TempDir, Store, Caller) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(crate::store::ConnectSettings {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
            max_connections: 2,
            on_statement: None,
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        bootstrap(&store, Some(KEY)).await.unwrap();
        let caller = Authenticator::new(store.clone(), None, Duration::ZERO)
            .authenticate(KEY)
            .await
            .unwrap();
        (dir, store, caller)
    }

    async fn last_used(store: &Store, caller: &Caller) -> Option<DateTime<Utc>> {
        store.list_keys(caller.tenant_id).await.unwrap()[0].last_used_at
    }

    /// Waits (up to 10 s) until the key's recorded use is later than `than`.
    async fn recorded_after(
        store: &Store,
        caller: &Caller,
        than: Option<DateTime<Utc>>,
    ) -> DateTime<Utc> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = last_used(store, caller).await.filter(|t| Some(*t) > than) {
                return t;
            }
            assert!(Instant::now() < deadline, "the use was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_cached_key_still_records_its_use_about_once_per_interval() {
        let (_dir, store, caller) = store().await;
        let first = recorded_after(&store, &caller, None).await;
        let mut auth = Authenticator::new(store.clone(), None, Duration::from_secs(3600));
        auth.touch_every = chrono::TimeDelta::milliseconds(300);
        // Read from the database: its use was just recorded, so it is not recorded again.
        auth.authenticate(KEY).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // From the cache, with the last record over the interval old: recorded in the background.
        auth.authenticate(KEY).await.unwrap();
        assert_eq!(auth.cached_keys(), 1);
        let second = recorded_after(&store, &caller, Some(first)).await;
        assert!(second - first >= chrono::TimeDelta::milliseconds(300));
    }

    #[tokio::test]
    async fn a_key_revoked_here_is_forgotten_at_once() {
        let (_dir, store, caller) = store().await;
        // Without notifications (SQLite), trusted for an hour.
        let auth = Authenticator::new(store.clone(), None, Duration::from_secs(3600));
        auth.authenticate(KEY).await.unwrap();
        let key_id = caller.key_id.unwrap();
        store
            .revoke_key(caller.tenant_id, key_id, &caller.actor())
            .await
            .unwrap()
            .unwrap();
        // Revoked elsewhere, the cached copy still stands for its time to live ...
        auth.authenticate(KEY).await.unwrap();
        // ... but revoked here, it is forgotten, and the database refuses it.
        auth.forget_key(key_id);
        assert_eq!(auth.cached_keys(), 0);
        let refused = auth.authenticate(KEY).await.unwrap_err();
        assert!(
            matches!(refused, AppError::Unauthenticated(_)),
            "{refused:?}"
        );
        // Refusals are not cached.
        assert_eq!(auth.cached_keys(), 0);
        assert!(auth.authenticate("vg_no_such_key").await.is_err());
        assert_eq!(auth.cached_keys(), 0);
    }
}
