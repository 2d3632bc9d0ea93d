//! Typed, layered settings: built-in defaults < config file < `VOICEGRAPH_*` environment <
//! secret (merged later by the wiring). Every setting is documented here and in `.env.example`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// Where settings come from, as plain strings keyed by the setting name in lower case
/// (`database_url`), before they are typed.
#[derive(Debug, Clone, Default)]
pub struct Layers(BTreeMap<String, String>, ReadKeys);

/// The keys [`Layers::settings`] looked up, so that [`Layers::unknown`] can name the others.
#[derive(Debug, Clone, Default)]
struct ReadKeys(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl Layers {
    /// Reads the optional file named by `VOICEGRAPH_CONFIG` (or `./voicegraph.toml` when present)
    /// and then the `VOICEGRAPH_*` environment over it.
    pub fn from_process() -> anyhow::Result<Self> {
        let mut layers = Self::default();
        let explicit = std::env::var("VOICEGRAPH_CONFIG").ok();
        let path = explicit.clone().unwrap_or_else(|| "voicegraph.toml".into());
        match std::fs::read_to_string(&path) {
            Ok(text) => layers.merge_toml(&text)?,
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read config file {path}: {e}"),
        }
        layers.merge_env(std::env::vars());
        Ok(layers)
    }

    pub fn merge_toml(&mut self, text: &str) -> anyhow::Result<()> {
        let table: toml::Table = toml::from_str(text)?;
        for (k, v) in table {
            let value = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            self.0.insert(k.to_ascii_lowercase(), value);
        }
        Ok(())
    }

    pub fn merge_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (k, v) in vars {
            if let Some(name) = k.strip_prefix("VOICEGRAPH_") {
                if name != "CONFIG" {
                    self.0.insert(name.to_ascii_lowercase(), v);
                }
            }
        }
    }

    /// Merges a JSON object (the Secrets Manager secret) over everything else.
    pub fn merge_json(&mut self, object: &serde_json::Map<String, serde_json::Value>) {
        for (k, v) in object {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            self.0.insert(k.to_ascii_lowercase(), value);
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// The value set for `key` (lower case, without the `VOICEGRAPH_` prefix), if any.
    pub fn get(&self, key: &str) -> Option<String> {
        self.str(key)
    }

    /// The keys set (`VOICEGRAPH_*` variables, config file keys) that name no setting: typos,
    /// or settings of another version. The start-up logs each. An error when the settings do
    /// not type (then the keys after the bad one were not looked at).
    pub fn unknown(&self) -> anyhow::Result<Vec<String>> {
        self.settings()?;
        let read = self.1 .0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self
            .0
            .keys()
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect())
    }

    fn str(&self, key: &str) -> Option<String> {
        self.1
             .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        self.0
            .get(key)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn parse<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| {
                anyhow::anyhow!("VOICEGRAPH_{} is not valid: {e}", key.to_uppercase())
            }),
        }
    }

    /// Types every setting, with defaults for what is unset.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let data_dir = PathBuf::from(self.str("data_dir").unwrap_or_else(|| "./data".into()));
        let env = match self.str("env").as_deref() {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => anyhow::bail!(
                "VOICEGRAPH_ENV={other:?} is not valid: use development or production"
            ),
        };
        let analyzer = match self.str("analyzer").as_deref() {
            None | Some("local") => AnalyzerKind::Local,
            Some("gemini") => AnalyzerKind::Gemini,
            Some(other) => {
                anyhow::bail!("VOICEGRAPH_ANALYZER={other:?} is not valid: use local or gemini")
            }
        };
        let secret = |k: &str| self.str(k).map(SecretString::from);
        let rate_limit_rps: f64 = self.parse("rate_limit_rps", 100.0)?;
        let tenant_rate_limit_rps: f64 = self.parse("tenant_rate_limit_rps", 500.0)?;
        let address_rate_limit_rps: f64 = self.parse("address_rate_limit_rps", 20.0)?;
        // A burst left unset is two seconds' worth of the rate.
        let twice = |rps: f64| (rps * 2.0).ceil().max(1.0) as u64;
        for (name, rps) in [
            ("RATE_LIMIT_RPS", rate_limit_rps),
            ("TENANT_RATE_LIMIT_RPS", tenant_rate_limit_rps),
            ("ADDRESS_RATE_LIMIT_RPS", address_rate_limit_rps),
        ] {
            anyhow::ensure!(
                rps.is_finite() && rps >= 0.0,
                "VOICEGRAPH_{name} must be a number of requests per second, 0 or more"
            );
        }
        Ok(Settings {
            env,
            listen: self
                .str("listen")
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            public_url: self.str("public_url"),
            database_url: self.str("database_url"),
            migrate_database_url: self.str("migrate_database_url"),
            database_runtime_role: self.str("database_runtime_role"),
            job_queue_url: self.str("job_queue_url"),
            events_topic_arn: self.str("events_topic_arn"),
            realtime_queue_url: self.str("realtime_queue_url"),
            redis_url: self.str("redis_url"),
            redis_channel: self
                .str("redis_channel")
                .unwrap_or_else(|| crate::adapters::redis::CHANNEL.into()),
            blob_url: self.str("blob_url"),
            secret_id: self.str("secret_id"),
            database_password_secret_id: self.str("database_password_secret_id"),
            migrate_database_password_secret_id: self.str("migrate_database_password_secret_id"),
            redis_password_secret_id: self.str("redis_password_secret_id"),
            analyzer,
            gemini_api_key: secret("gemini_api_key"),
            gemini_model: self
                .str("gemini_model")
                .unwrap_or_else(|| "gemini-2.5-flash".into()),
            gemini_base_url: self
                .str("gemini_base_url")
                .unwrap_or_else(|| "https://generativelanguage.googleapis.com".into()),
            gemini_chunk: Duration::from_secs(self.parse("gemini_chunk_secs", 600)?),
            gemini_chunk_overlap: Duration::from_secs(self.parse("gemini_chunk_overlap_secs", 15)?),
            gemini_inline_limit_bytes: self.parse("gemini_inline_limit_bytes", 14 * 1024 * 1024)?,
            gemini_max_concurrent: self.parse("gemini_max_concurrent", 4)?,
            gemini_max_attempts: self.parse("gemini_max_attempts", 5)?,
            gemini_backoff_base: Duration::from_millis(self.parse("gemini_backoff_base_ms", 1000)?),
            gemini_request_timeout: Duration::from_secs(
                self.parse("gemini_request_timeout_secs", 300)?,
            ),
            bootstrap_admin_key: secret("bootstrap_admin_key"),
            jwt_hs256_secret: secret("jwt_hs256_secret"),
            jwt_jwks_url: self.str("jwt_jwks_url"),
            jwt_issuer: self.str("jwt_issuer"),
            jwt_audience: self.str("jwt_audience"),
            jwt_leeway: Duration::from_secs(self.parse("jwt_leeway_secs", 10)?),
            jwt_tenant_claim: self
                .str("jwt_tenant_claim")
                .unwrap_or_else(|| "tenant".into()),
            jwt_role_claim: self.str("jwt_role_claim").unwrap_or_else(|| "role".into()),
            jwt_jwks_min_refresh: Duration::from_secs(self.parse("jwt_jwks_min_refresh_secs", 30)?),
            jwt_jwks_refresh: Duration::from_secs(self.parse("jwt_jwks_refresh_secs", 600)?),
            blob_signing_key: secret("blob_signing_key"),
            log_format: match self.str("log_format").as_deref() {
                Some("json") => LogFormat::Json,
                Some("text") => LogFormat::Text,
                None if env == Environment::Production => LogFormat::Json,
                None => LogFormat::Text,
                Some(other) => anyhow::bail!("VOICEGRAPH_LOG_FORMAT={other:?}: use text or json"),
            },
            max_recording_bytes: self.parse("max_recording_bytes", 200 * 1024 * 1024)?,
            max_request_bytes: self.parse("max_request_bytes", 2 * 1024 * 1024)?,
            max_page_size: self.parse("max_page_size", 100)?,
            max_query_depth: self.parse("max_query_depth", 16)?,
            max_query_complexity: self.parse("max_query_complexity", 50_000)?,
            max_aliases: self.parse("max_aliases", 30)?,
            max_document_bytes: self.parse("max_document_bytes", 32 * 1024)?,
            max_document_tokens: self.parse("max_document_tokens", 5_000)?,
            max_directives_per_field: self.parse("max_directives_per_field", 4)?,
            max_root_fields: self.parse("max_root_fields", 30)?,
            max_batch_size: self.parse::<usize>("max_batch_size", 10)?.max(1),
            request_timeout: Duration::from_millis(
                self.parse::<u64>("request_timeout_ms", 30_000)?.max(1),
            ),
            max_response_bytes: self.parse("max_response_bytes", 16 * 1024 * 1024)?,
            url_expiry: Duration::from_secs(self.parse("url_expiry_secs", 900)?),
            job_visibility: Duration::from_secs(self.parse("job_visibility_secs", 60)?),
            job_max_receives: self.parse("job_max_receives", 5)?,
            dead_letter_poll: Duration::from_secs(self.parse("dead_letter_poll_secs", 10)?.max(1)),
            worker_concurrency: self.parse("worker_concurrency", 2)?,
            ws_init_timeout: Duration::from_secs(self.parse("ws_init_timeout_secs", 10)?),
            ws_ping_interval: Duration::from_millis(
                self.parse::<u64>("ws_ping_interval_ms", 15_000)?.max(10),
            ),
            ws_pong_timeout: Duration::from_millis(
                self.parse::<u64>("ws_pong_timeout_ms", 10_000)?.max(10),
            ),
            ws_read_buffer_bytes: self.parse("ws_read_buffer_bytes", 1024)?,
            ws_max_message_bytes: self.parse("ws_max_message_bytes", 64 * 1024)?,
            ws_max_subscriptions: self.parse("ws_max_subscriptions", 100)?,
            subscription_buffer: self.parse("subscription_buffer", 256)?,
            cors_origins: self
                .str("cors_origins")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            trusted_documents: self.str("trusted_documents").map(PathBuf::from),
            trusted_documents_exempt_platform_admins: self
                .parse("trusted_documents_exempt_platform_admins", false)?,
            job_retry_base: Duration::from_millis(self.parse("job_retry_base_ms", 2000)?),
            relay_poll: Duration::from_millis(self.parse("relay_poll_ms", 500)?),
            webhook_allow_private: self
                .parse("webhook_allow_private", env == Environment::Development)?,
            webhook_timeout: Duration::from_millis(
                self.parse::<u64>("webhook_timeout_ms", 10_000)?
                    .clamp(100, 60_000),
            ),
            webhook_retry_base: Duration::from_millis(
                self.parse::<u64>("webhook_retry_base_ms", 5000)?.max(1),
            ),
            webhook_max_attempts: self
                .parse::<u32>(
                    "webhook_max_attempts",
                    crate::domain::webhooks::RetrySchedule::DEFAULT_ATTEMPTS,
                )?
                .clamp(1, 50),
            watermark_poll: Duration::from_millis(self.parse("watermark_poll_ms", 500)?),
            notify_fallback: Duration::from_secs(
                self.parse::<u64>("notify_fallback_secs", 30)?.max(1),
            ),
            key_cache_ttl: Duration::from_millis(self.parse("key_cache_ttl_ms", 1000)?),
            response_cache_bytes: self
                .parse::<usize>("response_cache_mb", 64)?
                .min(1 << 20)
                .saturating_mul(1 << 20),
            revocation_poll: Duration::from_millis(
                self.parse::<u64>("revocation_poll_ms", 1000)?.max(10),
            ),
            event_buffer: self.parse("event_buffer", 4096)?,
            loader_delay: Duration::from_millis(self.parse("loader_delay_ms", 5)?),
            db_max_connections: self.parse("db_max_connections", 16)?,
            rate_limit_rps,
            rate_limit_burst: self.parse("rate_limit_burst", twice(rate_limit_rps))?,
            tenant_rate_limit_rps,
            tenant_rate_limit_burst: self
                .parse("tenant_rate_limit_burst", twice(tenant_rate_limit_rps))?,
            address_rate_limit_rps,
            address_rate_limit_burst: self.parse("address_rate_limit_burst", 200)?,
            auth_failures_per_minute: self.parse("auth_failures_per_minute", 30)?,
            cost_budget_per_minute: self.parse("cost_budget_per_minute", 300_000)?,
            tenant_cost_budget_per_minute: self
                .parse("tenant_cost_budget_per_minute", 1_500_000)?,
            max_sockets_per_key: self.parse("max_sockets_per_key", 100)?,
            max_subscriptions_per_key: self.parse("max_subscriptions_per_key", 1000)?,
            trusted_proxy_hops: self.parse("trusted_proxy_hops", 0)?,
            header_read_timeout: Duration::from_secs(
                self.parse::<u64>("header_read_timeout_secs", 30)?.max(1),
            ),
            keep_alive_timeout: Duration::from_secs(
                self.parse::<u64>("keep_alive_timeout_secs", 75)?.max(1),
            ),
            body_read_timeout: Duration::from_secs(
                self.parse::<u64>("body_read_timeout_secs", 30)?.max(1),
            ),
            body_min_bytes_per_sec: self.parse("body_min_bytes_per_sec", 1024)?,
            write_timeout: Duration::from_secs(self.parse::<u64>("write_timeout_secs", 30)?.max(1)),
            max_connections: match self.str("max_connections") {
                None => None,
                Some(_) => Some(self.parse("max_connections", 0usize)?.max(1)),
            },
            max_connections_per_ip: self.parse("max_connections_per_ip", 512)?,
            metrics_listen: self.str("metrics_listen"),
            metrics_token: secret("metrics_token"),
            otlp_endpoint: self
                .str("otlp_endpoint")
                .map(|v| otlp_endpoint(&v))
                .transpose()?,
            playground: self.parse("playground", env == Environment::Development)?,
            data_dir,
        })
    }
}

/// Checks `VOICEGRAPH_OTLP_ENDPOINT`: an `http` or `https` URL with a host and no query or
/// fragment. Returned without a trailing slash.
fn otlp_endpoint(value: &str) -> anyhow::Result<String> {
    let invalid = |why: &str| {
        anyhow::anyhow!(
            "VOICEGRAPH_OTLP_ENDPOINT={value:?} is not valid: {why}; give the base URL of an \
             OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans go to <it>/v1/traces)"
        )
    };
    let url = reqwest::Url::parse(value).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it may have no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials do not go in the URL (use OTEL_EXPORTER_OTLP_HEADERS)",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Which analyser analyses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum AnalyzerKind {
    /// The local analyser: acoustic analysis (speech, talk time, silence, overlap, interruptions)
    /// and a lexicon reading of a submitted transcript. Always available, costs no tokens.
    Local,
    /// Google Gemini, grounded on the local acoustic analysis: transcript, summary, sentiment,
    /// topics, action items, issues, intent, outcome and categories from the audio itself.
    /// Available when the deployment has a Gemini API key.
    Gemini,
}

impl AnalyzerKind {
    /// The name stored with an analysis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Gemini => "gemini",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "gemini" => Some(Self::Gemini),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// All settings, typed. Backends are chosen from these in `wiring.rs`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `development` or `production`; production refuses embedded backends and hides introspection.
    pub env: Environment,
    /// HTTP listen address (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Base URL clients use to reach this service (for signed blob URLs); defaults to the listen address.
    pub public_url: Option<String>,
    /// Where embedded backends keep their files.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; default: SQLite file in the data dir.
    pub database_url: Option<String>,
    /// Where `voicegraph migrate` connects: the role that owns the tables (Postgres); default:
    /// `database_url`.
    pub migrate_database_url: Option<String>,
    /// The role the service runs as on Postgres, granted what it needs by `voicegraph migrate`:
    /// it owns nothing and bypasses no row-level security. Unset: nothing is granted.
    pub database_runtime_role: Option<String>,
    /// SQS queue URL for jobs; default: the embedded queue.
    pub job_queue_url: Option<String>,
    /// SNS topic for call events; default: in-process.
    pub events_topic_arn: Option<String>,
    /// SQS queue subscribed to the events topic, read by `relay`.
    pub realtime_queue_url: Option<String>,
    /// Redis for fan-out to instances; default: in-process.
    pub redis_url: Option<String>,
    /// The Redis pub/sub channel of this deployment (deployments sharing a Redis need their own).
    pub redis_channel: String,
    /// `s3://bucket/prefix` or `file://dir`; default: `file://<data dir>/blobs`.
    pub blob_url: Option<String>,
    /// Secrets Manager secret whose JSON keys override these settings.
    pub secret_id: Option<String>,
    /// A Secrets Manager secret holding the password of `database_url` (a JSON object's
    /// `password`, as RDS and Secrets Manager's generated secrets keep it, or the whole string),
    /// put into the URL at start-up.
    pub database_password_secret_id: Option<String>,
    /// The same for `migrate_database_url` (e.g. the RDS-managed master user secret).
    pub migrate_database_password_secret_id: Option<String>,
    /// The same for `redis_url` (the ElastiCache AUTH token).
    pub redis_password_secret_id: Option<String>,
    /// `local` (acoustic analyser) or `gemini`.
    pub analyzer: AnalyzerKind,
    /// Gemini API key.
    pub gemini_api_key: Option<SecretString>,
    /// Gemini model name.
    pub gemini_model: String,
    /// Gemini endpoint (a proxy or test server may stand in).
    pub gemini_base_url: String,
    /// Calls longer than this are analysed in windows of this length (`VOICEGRAPH_GEMINI_CHUNK_SECS`).
    pub gemini_chunk: Duration,
    /// How much consecutive windows share, so that no utterance is cut without context.
    pub gemini_chunk_overlap: Duration,
    /// A window whose audio is at most this many bytes goes inline (base64) in the request;
    /// a larger one through the Files API. Gemini's inline limit is 20 MB per request, base64
    /// and prompt included.
    pub gemini_inline_limit_bytes: u64,
    /// Gemini requests in flight at once from this process.
    pub gemini_max_concurrent: usize,
    /// Attempts per Gemini request (429 and 5xx are retried with backoff).
    pub gemini_max_attempts: u32,
    /// The first retry's backoff; each further one doubles, with jitter.
    pub gemini_backoff_base: Duration,
    /// Time allowed for one Gemini request.
    pub gemini_request_timeout: Duration,
    /// Platform-admin API key created at first start with no tenants.
    pub bootstrap_admin_key: Option<SecretString>,
    /// HS256 secret for frontend JWTs (at least 32 bytes); unset: HS256 tokens are refused.
    pub jwt_hs256_secret: Option<SecretString>,
    /// The identity provider's JWKS (RS256/ES256 keys); unset: RS256/ES256 tokens are refused.
    pub jwt_jwks_url: Option<String>,
    /// The `iss` every JWT must carry, when set.
    pub jwt_issuer: Option<String>,
    /// The audience every JWT's `aud` must contain, when set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// The JWT claim holding the tenant's id (may be a namespaced URL, e.g. `https://example.com/tenant`).
    pub jwt_tenant_claim: String,
    /// The JWT claim holding the role (`admin`, `integrator`, `analyst` or `viewer`).
    pub jwt_role_claim: String,
    /// Shortest time between two JWKS fetches, however many tokens name unknown keys.
    pub jwt_jwks_min_refresh: Duration,
    /// How long fetched JWKS keys are used before the set is fetched again (a shorter
    /// `Cache-Control: max-age` wins), so that removed keys stop working.
    pub jwt_jwks_refresh: Duration,
    /// HMAC key for the directory blob store's signed URLs; default: generated once into the data dir.
    pub blob_signing_key: Option<SecretString>,
    /// `text` or `json` logs (json by default in production).
    pub log_format: LogFormat,
    /// Largest recording accepted, in bytes.
    pub max_recording_bytes: u64,
    /// Largest non-upload request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest `first`/`last` of a connection.
    pub max_page_size: usize,
    /// Deepest GraphQL selection accepted.
    pub max_query_depth: usize,
    /// Highest GraphQL complexity accepted.
    pub max_query_complexity: usize,
    /// Most aliases in one document.
    pub max_aliases: usize,
    /// Largest GraphQL document, in bytes; checked before it is parsed.
    pub max_document_bytes: usize,
    /// Most lexical tokens in one document (names, punctuators, values); counted by a lexer
    /// pass before the document is parsed.
    pub max_document_tokens: usize,
    /// Most directives on one field (`__typename` included).
    pub max_directives_per_field: usize,
    /// Most fields selected at the root of one operation (fragments included).
    pub max_root_fields: usize,
    /// Most operations in one array-batched HTTP request.
    pub max_batch_size: usize,
    /// Longest a query may execute; past it the work is dropped and the client gets `TIMEOUT`.
    /// Mutations run to completion once started, so that none is cut half-way.
    pub request_timeout: Duration,
    /// Largest GraphQL response body, in bytes; a larger result is replaced by a
    /// `RESPONSE_TOO_LARGE` error.
    pub max_response_bytes: usize,
    /// Lifetime of signed recording/result/upload URLs.
    pub url_expiry: Duration,
    /// Job lease (visibility timeout).
    pub job_visibility: Duration,
    /// Receives after which a job goes to the dead-letter queue.
    pub job_max_receives: u32,
    /// How often a worker looks for dead-lettered jobs whose calls it has not marked `FAILED`
    /// yet (on SQS, the long poll of the dead-letter queue, up to 20 s, comes first).
    pub dead_letter_poll: Duration,
    /// Jobs one worker processes at once.
    pub worker_concurrency: usize,
    /// Time a WebSocket has to send `connection_init` before it is closed with 4408.
    pub ws_init_timeout: Duration,
    /// How often the server pings a WebSocket (`ping`, or `ka` and a ping frame on the legacy
    /// protocol) and sends an SSE keep-alive comment; below load balancers' idle timeouts.
    pub ws_ping_interval: Duration,
    /// A WebSocket client that sends nothing for this long after a ping is closed (3008).
    pub ws_pong_timeout: Duration,
    /// Read buffer of each WebSocket, allocated per connection (small keeps idle ones cheap).
    pub ws_read_buffer_bytes: usize,
    /// Largest WebSocket message (and frame) accepted, in bytes.
    pub ws_max_message_bytes: usize,
    /// Operations that may run at once on one WebSocket.
    pub ws_max_subscriptions: usize,
    /// Results a shared subscription keeps for subscribers slow to take them; one further
    /// behind catches up from the database.
    pub subscription_buffer: usize,
    /// Browser origins allowed (CORS and WebSocket `Origin`); `*` allows any. Empty: localhost
    /// pages in development, none in production.
    pub cors_origins: Vec<String>,
    /// A manifest of trusted documents (JSON object of id → document): when set, only those
    /// operations run.
    pub trusted_documents: Option<PathBuf>,
    /// Platform admins may run any operation in trusted-documents mode.
    pub trusted_documents_exempt_platform_admins: bool,
    /// First retry delay of a failed job; it doubles with each receive.
    pub job_retry_base: Duration,
    /// How often the relay looks for outbox rows written by other processes when the database
    /// sends no notifications (SQLite; Postgres while its listener reconnects).
    pub relay_poll: Duration,
    /// Whether webhook endpoints may be private, loopback or link-local addresses (checked
    /// after DNS resolution). Only in development by default.
    pub webhook_allow_private: bool,
    /// The longest a webhook endpoint may take to answer (connecting is bounded by half of it).
    pub webhook_timeout: Duration,
    /// The first retry delay of a failed webhook delivery; later ones grow to about a day in all
    /// with the default (`domain::webhooks::RetrySchedule`).
    pub webhook_retry_base: Duration,
    /// Attempts of a webhook delivery before it is dead.
    pub webhook_max_attempts: u32,
    /// How often an API instance checks for events its live feed did not bring, when the
    /// database sends no notifications (SQLite; Postgres while its listener reconnects).
    pub watermark_poll: Duration,
    /// On Postgres, the longest the relay, the workers and an API instance's event watermark
    /// wait for a database notification before looking anyway, and how often the notification
    /// listener checks its connection with a heartbeat.
    pub notify_fallback: Duration,
    /// Without database notifications (SQLite), how long an instance trusts an API key it
    /// resolved before reading it again: a key revoked by another process fails here within this
    /// time. 0 reads the key on every request. On Postgres the revocation notice invalidates it.
    pub key_cache_ttl: Duration,
    /// On Postgres, the memory for answers to repeated queries, kept while the database has
    /// not changed (see `graphql::response_cache`); 0 keeps none.
    pub response_cache_bytes: usize,
    /// How often an API instance checks whether the API keys of its open WebSockets and SSE
    /// streams were revoked (one statement per 500 keys, only while any are open); a revoked key's
    /// connections end within this time on every instance.
    pub revocation_poll: Duration,
    /// Events buffered per instance for slow subscribers before they catch up from the database.
    pub event_buffer: usize,
    /// How long a DataLoader collects keys before it queries: longer batches more, shorter answers sooner.
    pub loader_delay: Duration,
    /// Largest database connection pool of this process.
    pub db_max_connections: u32,
    /// Requests per second per key (API key, or JWT subject and tenant); operations sent on a
    /// socket count too. 0 turns the limit off.
    pub rate_limit_rps: f64,
    /// Requests a key may send at once, above its rate (default: two seconds' worth).
    pub rate_limit_burst: u64,
    /// Requests per second per tenant, all its keys together; 0 turns the limit off.
    pub tenant_rate_limit_rps: f64,
    /// Requests a tenant may send at once (default: two seconds' worth).
    pub tenant_rate_limit_burst: u64,
    /// Requests per second without credentials, per client address; 0 turns the limit off.
    pub address_rate_limit_rps: f64,
    /// Requests without credentials one address may send at once.
    pub address_rate_limit_burst: u64,
    /// Failed authentications per client address per minute; past them, credentials from that
    /// address are refused (429) until the failures age. 0 turns the lockout off.
    pub auth_failures_per_minute: u64,
    /// GraphQL cost (computed complexity) a key may spend per minute; 0 turns it off.
    pub cost_budget_per_minute: u64,
    /// GraphQL cost a tenant may spend per minute, all its keys together; 0 turns it off.
    pub tenant_cost_budget_per_minute: u64,
    /// WebSocket connections and SSE streams one key may hold open at once; 0: no cap.
    pub max_sockets_per_key: u64,
    /// Subscriptions one key may run at once (WebSocket and SSE); 0: no cap.
    pub max_subscriptions_per_key: u64,
    /// Proxies in front of the service that append to `X-Forwarded-For` (1 behind an ALB): the
    /// client address is the entry this many from the right; 0 uses the peer address. With any,
    /// every connection comes from a proxy, so no per-address connection cap applies.
    pub trusted_proxy_hops: usize,
    /// Time a client has to send a request's headers, from connecting (or from the first byte
    /// of a later request on a kept-alive connection); slower ones are disconnected.
    pub header_read_timeout: Duration,
    /// How long an HTTP/1 connection may stay idle between requests (above load balancers' idle
    /// timeouts, so that they close first).
    pub keep_alive_timeout: Duration,
    /// A request body is read in windows of this much waiting for the client; a window that
    /// brings less than `body_min_bytes_per_sec` × its length cuts the body (408).
    pub body_read_timeout: Duration,
    /// Slowest request body accepted, in bytes per second of waiting (0: any progress at all
    /// within each `body_read_timeout`).
    pub body_min_bytes_per_sec: u64,
    /// A client that reads none of its response for this long is disconnected.
    pub write_timeout: Duration,
    /// Most HTTP connections open at once (WebSockets and streams included); default: the
    /// process's file-descriptor limit (`RLIMIT_NOFILE`) minus a reserve for its own files.
    pub max_connections: Option<usize>,
    /// Most connections open at once from one client address (IPv6: one /64), when clients
    /// connect directly (`trusted_proxy_hops` is 0); 0 turns the cap off.
    pub max_connections_per_ip: usize,
    /// A separate listen address serving only `/metrics` (e.g. `127.0.0.1:9090`), for any role.
    pub metrics_listen: Option<String>,
    /// A bearer token that opens `/metrics` on the main listener.
    pub metrics_token: Option<SecretString>,
    /// Base URL of an OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`): when set, spans are
    /// exported to `<endpoint>/v1/traces` (an endpoint already ending so is used as it is) and a
    /// call's trace context travels with its jobs and events; unset, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Whether `/` serves the playground (default: in development only).
    pub playground: bool,
}

impl Settings {
    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }

    /// Where spans go: the collector's traces URL, when one is configured.
    pub fn otlp_traces_url(&self) -> Option<String> {
        self.otlp_endpoint.as_ref().map(|e| {
            if e.ends_with("/v1/traces") {
                e.clone()
            } else {
                format!("{e}/v1/traces")
            }
        })
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("voicegraph.db").display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_and_keep_numeric_secrets_as_strings() {
        let mut l = Layers::default();
        l.merge_toml("listen = \"0.0.0.0:9000\"\nmax_page_size = 50\nbootstrap_admin_key = 1234")
            .unwrap();
        l.merge_env([
            ("VOICEGRAPH_MAX_PAGE_SIZE".to_string(), "70".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]);
        let s = l.settings().unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.max_page_size, 70);
        use secrecy::ExposeSecret;
        assert_eq!(
            s.bootstrap_admin_key.as_ref().unwrap().expose_secret(),
            "1234"
        );
        assert!(s
            .database_url()
            .starts_with("sqlite://./data/voicegraph.db"));
    }

    #[test]
    fn keys_that_name_no_setting_are_reported() {
        let mut l = Layers::default();
        l.set("max_page_size", "5")
            .set("databse_url", "postgres://typo")
            .set("redis_password_secret_id", "s");
        assert_eq!(l.unknown().unwrap(), vec!["databse_url".to_string()]);
        assert_eq!(Layers::default().unknown().unwrap(), Vec::<String>::new());
        l.set("max_page_size", "many");
        assert!(l.unknown().is_err());
    }

    #[test]
    fn rate_limit_bursts_default_to_two_seconds_of_the_rate() {
        let mut l = Layers::default();
        l.set("rate_limit_rps", "2.5")
            .set("tenant_rate_limit_burst", "7");
        let s = l.settings().unwrap();
        assert_eq!(s.rate_limit_burst, 5);
        assert_eq!(s.tenant_rate_limit_burst, 7);
        assert_eq!((s.max_sockets_per_key, s.trusted_proxy_hops), (100, 0));
        let mut l = Layers::default();
        l.set("rate_limit_rps", "-1");
        let e = l.settings().unwrap_err().to_string();
        assert!(e.contains("VOICEGRAPH_RATE_LIMIT_RPS"), "{e}");
    }

    #[test]
    fn the_playground_is_on_in_development_and_off_in_production_unless_enabled() {
        let mut l = Layers::default();
        assert!(l.settings().unwrap().playground);
        l.set("env", "production");
        assert!(!l.settings().unwrap().playground);
        l.set("playground", "true");
        assert!(l.settings().unwrap().playground);
        l.set("env", "development").set("playground", "false");
        assert!(!l.settings().unwrap().playground);
    }

    #[test]
    fn connection_limits_have_defaults_and_an_unset_cap_is_derived_later() {
        let s = Layers::default().settings().unwrap();
        assert_eq!(s.header_read_timeout, Duration::from_secs(30));
        assert_eq!(s.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(s.body_read_timeout, Duration::from_secs(30));
        assert_eq!(s.body_min_bytes_per_sec, 1024);
        assert_eq!(s.write_timeout, Duration::from_secs(30));
        assert_eq!(s.max_connections, None);
        assert_eq!(s.max_connections_per_ip, 512);
        assert_eq!(s.trusted_proxy_hops, 0);
        let mut l = Layers::default();
        l.set("max_connections", "100");
        assert_eq!(l.settings().unwrap().max_connections, Some(100));
        l.set("max_connections", "many");
        let e = l.settings().unwrap_err().to_string();
        assert!(e.contains("VOICEGRAPH_MAX_CONNECTIONS"), "{e}");
    }

    #[test]
    fn the_otlp_endpoint_is_a_collector_base_url_checked_at_start_up() {
        let s = Layers::default().settings().unwrap();
        assert_eq!(
            (s.otlp_endpoint.as_deref(), s.otlp_traces_url()),
            (None, None)
        );
        for (given, traces) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://otel.example.com/",
                "https://otel.example.com/v1/traces",
            ),
            (
                "http://collector:4318/otlp",
                "http://collector:4318/otlp/v1/traces",
            ),
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
        ] {
            let mut l = Layers::default();
            l.set("otlp_endpoint", given);
            assert_eq!(
                l.settings().unwrap().otlp_traces_url().as_deref(),
                Some(traces)
            );
        }
        for bad in [
            "127.0.0.1:4318",
            "grpc://collector:4317",
            "http://",
            "http://collector:4318/?x=1",
            "http://user:pw@collector:4318",
            "not a url",
        ] {
            let mut l = Layers::default();
            l.set("otlp_endpoint", bad);
            let e = l.settings().unwrap_err().to_string();
            assert!(e.contains("VOICEGRAPH_OTLP_ENDPOINT"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut l = Layers::default();
        l.set("max_page_size", "lots");
        let e = l.settings().unwrap_err().to_string();
        assert!(e.contains("VOICEGRAPH_MAX_PAGE_SIZE"), "{e}");
        let mut l = Layers::default();
        l.set("env", "staging");
        assert!(l
            .settings()
            .unwrap_err()
            .to_string()
            .contains("VOICEGRAPH_ENV"));
    }
}
