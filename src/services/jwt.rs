//! JWT verification for end users signed in at the customer's identity provider: HS256 with the
//! shared secret, RS256 and ES256 with keys from the provider's JWKS (cached, refetched on an
//! unknown `kid` at a bounded rate, refreshed periodically), and the tenant and role claims.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Settings;
use crate::error::{AppError, AppResult};
use crate::services::auth::Role;

/// Longest token looked at; identity providers' tokens are a few hundred bytes to a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document read; real ones hold a handful of keys in a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Shortest HS256 secret accepted: RFC 7518 asks for a key as long as the hash (256 bits).
const MIN_HS256_SECRET_BYTES: usize = 32;
/// Shortest RSA modulus accepted from a JWKS, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub tenant_id: Uuid,
    pub role: Role,
    pub subject: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// Whether `token` has the shape of a compact JWS: three base64url parts separated by dots (the
/// last one may be empty, as in an unsigned `alg: none` token, which is then refused by name).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn unauthenticated(msg: impl Into<String>) -> AppError {
    AppError::Unauthenticated(msg.into())
}

/// A value from the token quoted in a message: printable and short.
fn quote(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    format!("`{clean}`")
}

/// The algorithms this server accepts, by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    Hs256,
    Jwks,
}

/// Verifies tokens and reads their claims. Built once from the settings.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<JwksCache>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    tenant_claim: String,
    role_claim: String,
}

impl JwtVerifier {
    /// The verifier the settings ask for; `None` when neither an HS256 secret nor a JWKS URL is
    /// set (JWT sign-in is then off).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let hs256 = match &settings.jwt_hs256_secret {
            Some(secret) => {
                let secret = secret.expose_secret().as_bytes();
                anyhow::ensure!(
                    secret.len() >= MIN_HS256_SECRET_BYTES,
                    "VOICEGRAPH_JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes (256 bits); a shorter one can be guessed from any token"
                );
                Some(DecodingKey::from_secret(secret).context("VOICEGRAPH_JWT_HS256_SECRET")?)
            }
            None => None,
        };
        let jwks = match &settings.jwt_jwks_url {
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .with_context(|| format!("VOICEGRAPH_JWT_JWKS_URL={url} is not a URL"))?;
                anyhow::ensure!(
                    parsed.scheme() == "https"
                        || (parsed.scheme() == "http" && !settings.is_production()),
                    "VOICEGRAPH_JWT_JWKS_URL must be an https:// URL{}",
                    if settings.is_production() {
                        " in production"
                    } else {
                        " (or http:// in development)"
                    }
                );
                Some(JwksCache::new(
                    parsed,
                    settings.jwt_jwks_min_refresh,
                    settings.jwt_jwks_refresh,
                )?)
            }
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            if settings.jwt_issuer.is_some() || settings.jwt_audience.is_some() {
                tracing::warn!("VOICEGRAPH_JWT_ISSUER/AUDIENCE are set, but neither VOICEGRAPH_JWT_HS256_SECRET nor VOICEGRAPH_JWT_JWKS_URL is: JWT sign-in is off");
            }
            return Ok(None);
        }
        if jwks.is_some() && settings.jwt_audience.is_none() {
            tracing::warn!("VOICEGRAPH_JWT_AUDIENCE is unset: tokens the identity provider issued for any application are accepted");
        }
        Ok(Some(Self {
            hs256,
            jwks,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            leeway: settings.jwt_leeway,
            tenant_claim: settings.jwt_tenant_claim.clone(),
            role_claim: settings.jwt_role_claim.clone(),
        }))
    }

    fn accepted(&self) -> Vec<(Accepted, &'static str)> {
        let mut out = Vec::new();
        if self.hs256.is_some() {
            out.push((Accepted::Hs256, "HS256"));
        }
        if self.jwks.is_some() {
            out.push((Accepted::Jwks, "RS256"));
            out.push((Accepted::Jwks, "ES256"));
        }
        out
    }

    /// Checks the signature and the registered claims, then reads the tenant and role. Every
    /// refusal is `UNAUTHENTICATED` with what is wrong; the token itself is never quoted.
    pub async fn verify(&self, token: &str) -> AppResult<Claims> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthenticated(format!(
                "token too long (over {MAX_TOKEN_BYTES} bytes)"
            )));
        }
        let header = RawHeader::parse(token)?;
        let accepted = self.accepted();
        let Some((source, _)) = accepted.iter().find(|(_, name)| *name == header.alg) else {
            let names: Vec<&str> = accepted.iter().map(|(_, n)| *n).collect();
            return Err(unauthenticated(format!(
                "algorithm not allowed: {} (this server accepts {})",
                quote(&header.alg),
                names.join(", ")
            )));
        };
        let jwks_key;
        let (key, alg) = match source {
            Accepted::Hs256 => (
                self.hs256
                    .as_ref()
                    .expect("HS256 is accepted only with a secret"),
                Algorithm::HS256,
            ),
            Accepted::Jwks => {
                let jwks = self.jwks.as_ref().expect("RS256/ES256 only with a JWKS");
                let Some(kid) = header.kid.as_deref() else {
                    return Err(unauthenticated(
                        "the token header has no `kid`: keys from the JWKS are chosen by key id",
                    ));
                };
                jwks_key = jwks.key(kid).await?;
                let found = &*jwks_key;
                if found.alg.name() != header.alg {
                    return Err(unauthenticated(format!(
                        "algorithm not allowed: the token says {} but JWKS key {} is an {} key",
                        quote(&header.alg),
                        quote(kid),
                        found.alg.name()
                    )));
                }
                (&found.key, found.alg.algorithm())
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map_err(|e| self.refusal(e))?;
        self.claims(&data.claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Not pinned: any audience (or none) is accepted.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn refusal(&self, e: jsonwebtoken::errors::Error) -> AppError {
        use jsonwebtoken::errors::ErrorKind as K;
        let msg = match e.kind() {
            K::ExpiredSignature => "token expired".to_string(),
            K::ImmatureSignature => "token not yet valid (its `nbf` is in the future)".to_string(),
            K::InvalidSignature => "invalid signature".to_string(),
            K::InvalidIssuer => format!(
                "wrong issuer: this server accepts tokens from {}",
                self.issuer.as_deref().map(quote).unwrap_or_default()
            ),
            K::InvalidAudience => format!(
                "wrong audience: this server accepts tokens for {}",
                self.audience.as_deref().map(quote).unwrap_or_default()
            ),
            K::MissingRequiredClaim(c) => format!("missing claim {}", quote(c)),
            K::InvalidClaimFormat(c) => format!("claim {} has the wrong type", quote(c)),
            K::InvalidAlgorithm | K::UnsupportedAlgorithm | K::MissingAlgorithm => {
                "algorithm not allowed".to_string()
            }
            K::InvalidKeyFormat | K::InvalidRsaKey(_) | K::InvalidEcdsaKey => {
                tracing::warn!(error = %e, "a JWT verification key is unusable");
                "the signing key is unusable".to_string()
            }
            K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => {
                format!("malformed token: {e}")
            }
            _ => format!("invalid token: {e}"),
        };
        unauthenticated(msg)
    }

    /// Reads `sub`, `exp`, the tenant and the role from verified claims.
    fn claims(&self, claims: &Map<String, Value>) -> AppResult<Claims> {
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => {
                return Err(unauthenticated(format!(
                    "missing claim {}",
                    quote(&self.tenant_claim)
                )))
            }
            Some(v) => v
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| {
                    unauthenticated(format!(
                        "claim {} must be the tenant's id (a UUID)",
                        quote(&self.tenant_claim)
                    ))
                })?,
        };
        let role = match claims.get(&self.role_claim) {
            None | Some(Value::Null) => {
                return Err(unauthenticated(format!(
                    "missing claim {}",
                    quote(&self.role_claim)
                )))
            }
            Some(v) => v.as_str().and_then(Role::parse).ok_or_else(|| {
                unauthenticated(format!(
                    "role claim {} must be one of admin, integrator, analyst, viewer",
                    quote(&self.role_claim)
                ))
            })?,
        };
        let subject = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(unauthenticated("claim `sub` must be a string")),
        };
        // `exp` is required and numeric once the token is verified.
        let expires_at = claims
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| unauthenticated("claim `exp` is out of range"))?;
        Ok(Claims {
            tenant_id: tenant,
            role,
            subject,
            expires_at,
        })
    }
}

/// The token header as sent, read before anything else so that refusals can name the algorithm
/// (`jsonwebtoken` knows no `none` and would only say the header does not parse).
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl RawHeader {
    fn parse(token: &str) -> AppResult<Self> {
        let encoded = token.split('.').next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| unauthenticated("malformed token: the header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|_| unauthenticated("malformed token: the header is not a JSON object"))?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(unauthenticated("malformed token: the header has no `alg`")),
        };
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => {
                return Err(unauthenticated(
                    "malformed token: the header's `kid` is not a string",
                ))
            }
        };
        Ok(Self { alg, kid })
    }
}

/// The asymmetric algorithms a JWKS key may be used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Rs256,
    Es256,
}

impl KeyAlg {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// A usable key of the JWKS.
pub struct JwksKey {
    pub alg: KeyAlg,
    key: DecodingKey,
}

impl std::fmt::Debug for JwksKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKey").field("alg", &self.alg).finish()
    }
}

/// One key id of the JWKS: a usable key, or why it cannot be used.
type KeyEntry = Result<Arc<JwksKey>, String>;

/// Checks one JWK: a signing key, RSA (2048 bits or more) for RS256 or P-256 for ES256, whose
/// `alg`, when present, says the same.
fn usable_key(jwk: &Jwk) -> KeyEntry {
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err("is not a signing key (its `use` is not `sig`)".into());
        }
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlg::Rs256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => KeyAlg::Es256,
        AlgorithmParameters::EllipticCurve(_) => {
            return Err("is an EC key on a curve other than P-256".into())
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("is a symmetric (`oct`) key, which is never accepted from a JWKS".into())
        }
        _ => return Err("has a key type other than RSA or EC".into()),
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == KeyAlg::Rs256,
        Some(KeyAlgorithm::ES256) => alg == KeyAlg::Es256,
        Some(_) => false,
    };
    if !declared_ok {
        return Err(format!(
            "is declared for an algorithm other than {}",
            alg.name()
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("is not a valid key ({e})"))?;
    if let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
        let bits = n.iter().skip_while(|b| **b == 0).count();
        if bits < MIN_RSA_MODULUS_BYTES {
            return Err("is an RSA key shorter than 2048 bits".into());
        }
    }
    Ok(Arc::new(JwksKey { alg, key }))
}

/// Reads a JWKS document. Keys without a `kid` are skipped (tokens choose keys by kid); a key
/// that cannot be used is kept with the reason, so that its tokens are refused by name.
fn parse_jwks(body: &[u8]) -> anyhow::Result<HashMap<String, KeyEntry>> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let set: RawSet =
        serde_json::from_slice(body).context("not a JWKS (a JSON object with `keys`)")?;
    let mut out = HashMap::new();
    for raw in set.keys {
        let kid = raw.get("kid").and_then(Value::as_str).map(str::to_string);
        let Some(kid) = kid else { continue };
        let entry = match serde_json::from_value::<Jwk>(raw) {
            Ok(jwk) => usable_key(&jwk),
            Err(e) => Err(format!("does not parse ({e})")),
        };
        out.entry(kid).or_insert(entry);
    }
    Ok(out)
}

/// How long a response may be cached, from its `Cache-Control` header.
fn cache_max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            if let Ok(secs) = secs.trim_matches('"').parse::<u64>() {
                max_age = Some(Duration::from_secs(secs));
            }
        }
    }
    max_age
}

/// The keys of the last successful fetch.
struct KeySet {
    keys: HashMap<String, KeyEntry>,
    /// When they must be fetched again (the periodic refresh, or the response's `max-age`).
    fresh_until: Instant,
}

#[derive(Default)]
struct CacheState {
    set: Option<Arc<KeySet>>,
    /// When the last fetch started, successful or not: fetches are at least `min_refresh` apart.
    last_attempt: Option<Instant>,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
    /// Counts finished fetches, so that a request that waited for someone else's fetch uses it.
    generation: u64,
}

/// What to do about a key id, given the cache.
#[derive(Debug)]
enum Step {
    Use(Arc<JwksKey>),
    Refuse(String),
    Fetch,
}

impl CacheState {
    fn may_fetch(&self, now: Instant, min_refresh: Duration) -> bool {
        self.last_attempt
            .is_none_or(|t| now.saturating_duration_since(t) >= min_refresh)
    }

    /// The next step for `kid`: use a cached key while the set is fresh; fetch when the set is
    /// stale or lacks the kid, but never sooner than `min_refresh` after the last attempt; a
    /// stale set still serves while its refresh fails.
    fn step(&self, kid: &str, now: Instant, min_refresh: Duration, fetch_allowed: bool) -> Step {
        let may_fetch = fetch_allowed && self.may_fetch(now, min_refresh);
        let Some(set) = &self.set else {
            return if may_fetch {
                Step::Fetch
            } else {
                Step::Refuse(self.unreachable(kid))
            };
        };
        let fresh = now < set.fresh_until;
        match set.keys.get(kid) {
            Some(_) if !fresh && may_fetch => Step::Fetch,
            Some(Ok(key)) => Step::Use(key.clone()),
            Some(Err(why)) => Step::Refuse(format!("JWKS key {} {why}", quote(kid))),
            None if may_fetch => Step::Fetch,
            None if self.last_error.is_some() => Step::Refuse(self.unreachable(kid)),
            None => Step::Refuse(format!(
                "unknown key id {}: the identity provider's JWKS has no such key",
                quote(kid)
            )),
        }
    }

    fn unreachable(&self, kid: &str) -> String {
        format!(
            "the identity provider's keys (JWKS) could not be fetched, so key {} cannot be checked: {}; try again later",
            quote(kid),
            self.last_error.as_deref().unwrap_or("no fetch yet")
        )
    }
}

/// The identity provider's keys, fetched from its JWKS URL and cached. An unknown `kid` makes it
/// fetch again, at most once per `min_refresh` however many tokens ask, and concurrent misses
/// share one fetch; the set is also fetched again once stale (`refresh`, or the response's
/// shorter `max-age`), so that keys the provider removed stop working.
pub struct JwksCache {
    url: reqwest::Url,
    client: reqwest::Client,
    min_refresh: Duration,
    refresh: Duration,
    state: Mutex<CacheState>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    pub fn new(
        url: reqwest::Url,
        min_refresh: Duration,
        refresh: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("voicegraph/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the JWKS HTTP client")?;
        Ok(Self {
            url,
            client,
            min_refresh,
            refresh,
            state: Mutex::new(CacheState::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn step(&self, kid: &str, fetch_allowed: bool) -> (Step, u64) {
        let state = self.state.lock().expect("JWKS cache lock");
        (
            state.step(kid, Instant::now(), self.min_refresh, fetch_allowed),
            state.generation,
        )
    }

    /// The key for `kid`, fetching the JWKS when the rules above allow.
    pub async fn key(&self, kid: &str) -> AppResult<Arc<JwksKey>> {
        let (step, seen) = self.step(kid, true);
        match step {
            Step::Use(key) => return Ok(key),
            Step::Refuse(msg) => return Err(unauthenticated(msg)),
            Step::Fetch => {}
        }
        {
            let _one_fetch = self.fetching.lock().await;
            // Whoever held the lock may have fetched already: then its result answers.
            let current = self.state.lock().expect("JWKS cache lock").generation;
            if current == seen {
                let (step, _) = self.step(kid, true);
                if let Step::Fetch = step {
                    self.refetch().await;
                }
            }
        }
        match self.step(kid, false).0 {
            Step::Use(key) => Ok(key),
            Step::Refuse(msg) => Err(unauthenticated(msg)),
            Step::Fetch => unreachable!("no fetch is allowed here"),
        }
    }

    async fn refetch(&self) {
        let started = Instant::now();
        self.state.lock().expect("JWKS cache lock").last_attempt = Some(started);
        let result = self.fetch().await;
        let mut state = self.state.lock().expect("JWKS cache lock");
        state.generation += 1;
        match result {
            Ok((keys, max_age)) => {
                let ttl = max_age.map_or(self.refresh, |m| m.min(self.refresh));
                tracing::debug!(url = %self.url, keys = keys.len(), ttl = ?ttl, "fetched the JWKS");
                state.set = Some(Arc::new(KeySet {
                    keys,
                    fresh_until: started + ttl,
                }));
                state.last_error = None;
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %format!("{e:#}"), "could not fetch the JWKS; cached keys stay in use");
                state.last_error = Some(format!("{e:#}"));
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<(HashMap<String, KeyEntry>, Option<Duration>)> {
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))
            .context("request failed")?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "the JWKS URL answered HTTP {status}");
        anyhow::ensure!(
            resp.content_length()
                .is_none_or(|n| n <= MAX_JWKS_BYTES as u64),
            "the JWKS is larger than {MAX_JWKS_BYTES} bytes"
        );
        let max_age = cache_max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))
            .context("reading the JWKS")?
        {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_JWKS_BYTES,
                "the JWKS is larger than {MAX_JWKS_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        Ok((parse_jwks(&body)?, max_age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layers;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

    fn verifier(tweak: impl FnOnce(&mut Layers)) -> JwtVerifier {
        let mut l = Layers::default();
        l.set("jwt_hs256_secret", SECRET);
        tweak(&mut l);
        JwtVerifier::from_settings(&l.settings().unwrap())
            .unwrap()
            .expect("JWT is configured")
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    fn hs256(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({
            "sub": "user-1",
            "tenant": "7d0c1f5e-3a8c-4c1e-9a51-0f4f3d1b2a10",
            "role": "analyst",
            "exp": now() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    async fn refused(v: &JwtVerifier, token: &str) -> String {
        match v.verify(token).await {
            Err(AppError::Unauthenticated(msg)) => msg,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn jwt_shape_is_three_base64url_parts() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("vg_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a+b.c.d"));
        assert!(!looks_like_jwt("a.b=.c"));
    }

    #[tokio::test]
    async fn hs256_claims_are_read() {
        let v = verifier(|_| {});
        let exp = now() + 600;
        let c = v
            .verify(&hs256(&claims(json!({ "exp": exp }))))
            .await
            .unwrap();
        assert_eq!(
            c.tenant_id,
            "7d0c1f5e-3a8c-4c1e-9a51-0f4f3d1b2a10"
                .parse::<Uuid>()
                .unwrap()
        );
        assert_eq!(c.role, Role::Analyst);
        assert_eq!(c.subject.as_deref(), Some("user-1"));
        assert_eq!(c.expires_at.timestamp(), exp);
    }

    #[tokio::test]
    async fn registered_claims_are_enforced() {
        let v = verifier(|l| {
            l.set("jwt_issuer", "https://idp.example.com/")
                .set("jwt_audience", "voicegraph");
        });
        let good = json!({ "iss": "https://idp.example.com/", "aud": "voicegraph" });
        assert!(v.verify(&hs256(&claims(good.clone()))).await.is_ok());
        // The audience may be a list that contains ours.
        let listed = json!({ "iss": "https://idp.example.com/", "aud": ["other", "voicegraph"] });
        assert!(v.verify(&hs256(&claims(listed))).await.is_ok());

        let cases = [
            (json!({ "exp": now() - 60 }), "token expired"),
            (json!({ "nbf": now() + 60 }), "not yet valid"),
            (
                json!({ "iss": "https://evil.example.com/" }),
                "wrong issuer",
            ),
            (json!({ "iss": null }), "missing claim `iss`"),
            (json!({ "aud": "other" }), "wrong audience"),
            (json!({ "aud": ["a", "b"] }), "wrong audience"),
            (json!({ "exp": null }), "missing claim `exp`"),
            (json!({ "exp": "tomorrow" }), "missing claim `exp`"),
        ];
        for (extra, want) in cases {
            let mut c = claims(good.clone());
            for (k, val) in extra.as_object().unwrap() {
                if val.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = val.clone();
                }
            }
            let msg = refused(&v, &hs256(&c)).await;
            assert!(msg.contains(want), "{extra}: {msg}");
        }
    }

    #[tokio::test]
    async fn leeway_applies_to_exp_and_nbf() {
        let v = verifier(|l| {
            l.set("jwt_leeway_secs", "10");
        });
        assert!(v
            .verify(&hs256(&claims(json!({ "exp": now() - 5 }))))
            .await
            .is_ok());
        assert!(v
            .verify(&hs256(&claims(json!({ "nbf": now() + 5 }))))
            .await
            .is_ok());
        let strict = verifier(|l| {
            l.set("jwt_leeway_secs", "0");
        });
        let msg = refused(&strict, &hs256(&claims(json!({ "exp": now() - 5 })))).await;
        assert_eq!(msg, "token expired");
    }

    #[tokio::test]
    async fn tenant_and_role_claims_are_checked_under_their_configured_names() {
        let v = verifier(|_| {});
        for (extra, want) in [
            (json!({ "tenant": null }), "missing claim `tenant`"),
            (
                json!({ "tenant": "acme" }),
                "claim `tenant` must be the tenant's id",
            ),
            (
                json!({ "tenant": 42 }),
                "claim `tenant` must be the tenant's id",
            ),
            (json!({ "role": null }), "missing claim `role`"),
            (
                json!({ "role": "owner" }),
                "must be one of admin, integrator, analyst, viewer",
            ),
            (
                json!({ "role": ["admin"] }),
                "must be one of admin, integrator, analyst, viewer",
            ),
            (json!({ "sub": 7 }), "claim `sub` must be a string"),
        ] {
            let mut c = claims(json!({}));
            let (k, val) = extra.as_object().unwrap().iter().next().unwrap();
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
            let msg = refused(&v, &hs256(&c)).await;
            assert!(msg.contains(want), "{extra}: {msg}");
        }

        let custom = verifier(|l| {
            l.set("jwt_tenant_claim", "https://voicegraph.dev/tenant")
                .set("jwt_role_claim", "https://voicegraph.dev/role");
        });
        let c = json!({
            "https://voicegraph.dev/tenant": "7d0c1f5e-3a8c-4c1e-9a51-0f4f3d1b2a10",
            "https://voicegraph.dev/role": "viewer",
            "exp": now() + 60,
        });
        let got = custom.verify(&hs256(&c)).await.unwrap();
        assert_eq!(got.role, Role::Viewer);
        assert_eq!(got.subject, None);
        let msg = refused(&custom, &hs256(&claims(json!({})))).await;
        assert_eq!(msg, "missing claim `https://voicegraph.dev/tenant`");
    }

    #[tokio::test]
    async fn only_hs256_with_the_secret() {
        let v = verifier(|_| {});
        let body = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        for alg in ["none", "None", "HS512", "RS256", "ES256"] {
            let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT" }).to_string());
            let msg = refused(&v, &format!("{header}.{body}.")).await;
            assert!(msg.starts_with("algorithm not allowed"), "{alg}: {msg}");
            assert!(msg.contains("accepts HS256)"), "{msg}");
        }
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap(),
        )
        .unwrap();
        assert_eq!(refused(&v, &forged).await, "invalid signature");
        // A tampered payload breaks the signature too.
        let good = hs256(&claims(json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        let admin = URL_SAFE_NO_PAD.encode(claims(json!({ "role": "admin" })).to_string());
        let tampered = format!("{}.{admin}.{}", parts[0], parts[2]);
        assert_eq!(refused(&v, &tampered).await, "invalid signature");
        // Garbage in the header is a malformed token, not a crash.
        let msg = refused(&v, &format!("bm90IGpzb24.{body}.c2ln")).await;
        assert!(msg.starts_with("malformed token"), "{msg}");
    }

    #[test]
    fn short_secrets_and_plain_http_in_production_are_refused() {
        let mut l = Layers::default();
        l.set("jwt_hs256_secret", "short");
        let e = JwtVerifier::from_settings(&l.settings().unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");

        let mut l = Layers::default();
        l.set("env", "production")
            .set("jwt_jwks_url", "http://idp.example.com/jwks.json");
        let e = JwtVerifier::from_settings(&l.settings().unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("https://"), "{e}");

        assert!(
            JwtVerifier::from_settings(&Layers::default().settings().unwrap())
                .unwrap()
                .is_none()
        );
    }

    fn rsa_jwk(kid: &str, extra: Value) -> Value {
        // A 2048-bit modulus is 256 bytes; verification is not exercised here.
        let mut jwk = json!({
            "kty": "RSA", "kid": kid, "e": "AQAB",
            "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]),
        });
        for (k, v) in extra.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        jwk
    }

    #[test]
    fn jwks_keys_must_be_rs256_or_es256_signing_keys() {
        let ec = {
            use p256::elliptic_curve::Generate;
            let key = p256::SecretKey::generate();
            let point =
                p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&key.public_key(), false);
            json!({
                "kty": "EC", "crv": "P-256", "kid": "ec",
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            })
        };
        let doc = json!({ "keys": [
            rsa_jwk("rsa", json!({ "use": "sig", "alg": "RS256" })),
            rsa_jwk("rsa-plain", json!({})),
            ec,
            rsa_jwk("rsa-enc", json!({ "use": "enc" })),
            rsa_jwk("rsa-512", json!({ "alg": "RS512" })),
            { "kty": "RSA", "kid": "rsa-short", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]) },
            { "kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(SECRET) },
            { "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AA" },
            { "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB" },
            { "kid": "junk" },
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 10, "the key without a kid is skipped");
        assert_eq!(keys["rsa"].as_ref().unwrap().alg, KeyAlg::Rs256);
        assert_eq!(keys["rsa-plain"].as_ref().unwrap().alg, KeyAlg::Rs256);
        assert_eq!(keys["ec"].as_ref().unwrap().alg, KeyAlg::Es256);
        for (kid, why) in [
            ("rsa-enc", "not a signing key"),
            ("rsa-512", "other than RS256"),
            ("rsa-short", "shorter than 2048 bits"),
            ("hmac", "symmetric"),
            ("p384", "other than P-256"),
            ("ed", "other than RSA or EC"),
            ("junk", ""),
        ] {
            let err = keys[kid].as_ref().err().unwrap();
            assert!(err.contains(why), "{kid}: {err}");
        }
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{\"keys\": 1}").is_err());
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(cache_max_age(&h), None);
        h.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=300, must-revalidate".parse().unwrap(),
        );
        assert_eq!(cache_max_age(&h), Some(Duration::from_secs(300)));
        h.insert(reqwest::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(cache_max_age(&h), Some(Duration::ZERO));
    }

    fn state_with(keys: &[&str], fetched: Instant, ttl: Duration) -> CacheState {
        let key = usable_key(&serde_json::from_value(rsa_jwk("k", json!({}))).unwrap()).unwrap();
        CacheState {
            set: Some(Arc::new(KeySet {
                keys: keys
                    .iter()
                    .map(|k| (k.to_string(), Ok(key.clone())))
                    .collect(),
                fresh_until: fetched + ttl,
            })),
            last_attempt: Some(fetched),
            last_error: None,
            generation: 1,
        }
    }

    #[test]
    fn cache_fetches_on_a_miss_at_most_once_per_min_refresh() {
        let t0 = Instant::now();
        let min = Duration::from_secs(30);
        let ttl = Duration::from_secs(600);
        let empty = CacheState::default();
        assert!(matches!(empty.step("a", t0, min, true), Step::Fetch));

        let s = state_with(&["a"], t0, ttl);
        assert!(matches!(s.step("a", t0, min, true), Step::Use(_)));
        // An unknown kid right after a fetch is refused without fetching...
        let at = t0 + Duration::from_secs(29);
        match s.step("b", at, min, true) {
            Step::Refuse(msg) => assert!(msg.starts_with("unknown key id `b`"), "{msg}"),
            other => panic!("{other:?}"),
        }
        // ...and fetched for once the interval has passed.
        assert!(matches!(s.step("b", t0 + min, min, true), Step::Fetch));
        // Never when the caller already fetched.
        assert!(matches!(s.step("b", t0 + min, min, false), Step::Refuse(_)));
    }

    #[test]
    fn stale_sets_are_refreshed_and_serve_while_the_refresh_fails() {
        let t0 = Instant::now();
        let min = Duration::from_secs(30);
        let ttl = Duration::from_secs(600);
        let s = state_with(&["a"], t0, ttl);
        let later = t0 + ttl;
        assert!(matches!(s.step("a", later, min, true), Step::Fetch));

        // The refresh failed just now: the stale key still works, unknown ones are refused
        // with the reason.
        let mut failing = state_with(&["a"], t0, ttl);
        failing.last_attempt = Some(later);
        failing.last_error = Some("connection refused".into());
        assert!(matches!(failing.step("a", later, min, true), Step::Use(_)));
        match failing.step("b", later, min, true) {
            Step::Refuse(msg) => {
                assert!(msg.contains("could not be fetched"), "{msg}");
                assert!(msg.contains("connection refused"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // Never fetched successfully, and the attempt failed: refused until the interval ends.
        let down = CacheState {
            last_attempt: Some(t0),
            last_error: Some("HTTP 503".into()),
            ..CacheState::default()
        };
        assert!(matches!(down.step("a", t0, min, true), Step::Refuse(_)));
        assert!(matches!(down.step("a", t0 + min, min, true), Step::Fetch));
    }
}
