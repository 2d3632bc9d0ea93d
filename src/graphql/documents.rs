//! Which document a request runs: the GraphQL-over-HTTP parameters read strictly, Apollo's
//! automatic persisted queries (a hash instead of the text, stored so every instance knows it),
//! and trusted documents (a manifest of the only operations allowed, in production).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_graphql::{Request, Variables};
use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::graphql::limits::DocumentLimits;
use crate::ports::DocumentStore;
use crate::services::auth::Caller;

/// Documents remembered in process in front of the shared store.
const CACHE_ENTRIES: usize = 1024;

/// The parameters of one GraphQL request, before the document is known.
#[derive(Debug, Default)]
pub struct Params {
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
    /// A trusted document's id (`documentId`, or `doc_id`/`id` as Relay sends it).
    pub document_id: Option<String>,
}

impl Params {
    /// Reads one request object (a JSON body, a batch entry, a WebSocket or SSE payload). Each
    /// parameter must have its specified type; anything else is refused with the reason.
    pub fn from_json(v: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut obj) = v else {
            return Err("a GraphQL request must be a JSON object".into());
        };
        let query = match obj.remove("query") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => return Err("`query` must be a string".into()),
        };
        let operation_name = match obj.remove("operationName") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s).filter(|s| !s.is_empty()),
            Some(_) => return Err("`operationName` must be a string".into()),
        };
        let variables = object_param(obj.remove("variables"), "variables")?;
        let extensions = object_param(obj.remove("extensions"), "extensions")?;
        let document_id = ["documentId", "doc_id", "id"]
            .iter()
            .find_map(|k| match obj.remove(*k) {
                Some(serde_json::Value::String(s)) => Some(Ok(s)),
                None | Some(serde_json::Value::Null) => None,
                Some(_) => Some(Err(format!("`{k}` must be a string"))),
            })
            .transpose()?;
        Ok(Self {
            query,
            operation_name,
            variables,
            extensions,
            document_id,
        })
    }

    /// Reads the parameters of a `GET` request's query string (`variables` and `extensions` as
    /// JSON text).
    pub fn from_query_string(qs: &str) -> Result<Self, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(qs).map_err(|e| format!("invalid query string: {e}"))?;
        let mut obj = serde_json::Map::new();
        for (k, v) in pairs {
            let value = match k.as_str() {
                "variables" | "extensions" if !v.is_empty() => {
                    serde_json::from_str(&v).map_err(|e| format!("`{k}` is not valid JSON: {e}"))?
                }
                "variables" | "extensions" => serde_json::Value::Null,
                _ => serde_json::Value::String(v),
            };
            obj.insert(k, value);
        }
        Self::from_json(serde_json::Value::Object(obj))
    }
}

fn object_param(
    v: Option<serde_json::Value>,
    name: &str,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("`{name}` must be an object")),
    }
}

/// Why no document could be chosen; each is a request error with its own code.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Invalid(String),
    #[error("PersistedQueryNotFound")]
    NotFound,
    #[error("provided sha does not match query")]
    HashMismatch,
    #[error("this server only runs trusted documents; the operation is not in its manifest")]
    NotTrusted,
    #[error("persisted queries are unavailable right now; send the query text")]
    Unavailable(#[source] anyhow::Error),
    /// A document limit (bytes, tokens), with its code and the setting it names.
    #[error("{}", .0.message)]
    Limit(Box<async_graphql::ServerError>),
}

impl DocumentError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) | Self::HashMismatch => "BAD_USER_INPUT",
            Self::NotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::NotTrusted => "PERSISTED_QUERY_NOT_IN_LIST",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Limit(_) => "BAD_USER_INPUT",
        }
    }

    /// The GraphQL error object clients see.
    pub fn to_json(&self) -> serde_json::Value {
        if let Self::Unavailable(e) = self {
            tracing::warn!(error = %format!("{e:#}"), "the persisted document store failed");
        }
        if let Self::Limit(e) = self {
            return serde_json::to_value(e.as_ref()).unwrap_or_default();
        }
        serde_json::json!({ "message": self.to_string(), "extensions": { "code": self.code() } })
    }
}

/// The manifest of trusted documents: id (a SHA-256 hash, or any id the client build chose)
/// → document.
pub struct TrustedDocuments {
    by_id: HashMap<String, Arc<str>>,
    by_hash: HashMap<String, Arc<str>>,
}

impl TrustedDocuments {
    /// Reads a JSON object of id → document (what graphql-codegen's client preset and Relay's
    /// compiler emit).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read VOICEGRAPH_TRUSTED_DOCUMENTS={}: {e}",
                path.display()
            )
        })?;
        let map: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "VOICEGRAPH_TRUSTED_DOCUMENTS={} must be a JSON object of id to document: {e}",
                path.display()
            )
        })?;
        Ok(Self::from_map(map))
    }

    pub fn from_map(map: HashMap<String, String>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_hash = HashMap::new();
        for (id, doc) in map {
            let doc: Arc<str> = Arc::from(doc);
            by_hash.insert(sha256_hex(&doc), doc.clone());
            by_id.insert(strip_algorithm(&id).to_string(), doc);
        }
        Self { by_id, by_hash }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn by_id(&self, id: &str) -> Option<&Arc<str>> {
        let id = strip_algorithm(id);
        self.by_id.get(id).or_else(|| self.by_hash.get(id))
    }
}

/// `sha256:<hex>` → `<hex>` (the persisted documents proposal prefixes the algorithm).
fn strip_algorithm(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Chooses the document of each request.
pub struct Documents {
    store: Arc<dyn DocumentStore>,
    cache: Mutex<LruCache<String, Arc<str>>>,
    trusted: Option<TrustedDocuments>,
    exempt_platform_admins: bool,
    limits: DocumentLimits,
}

impl Documents {
    pub fn new(
        store: Arc<dyn DocumentStore>,
        trusted: Option<TrustedDocuments>,
        exempt_platform_admins: bool,
        limits: DocumentLimits,
    ) -> Self {
        Self {
            limits,
            store,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"),
            )),
            trusted,
            exempt_platform_admins,
        }
    }

    fn trusted_for(&self, caller: Option<&Caller>) -> Option<&TrustedDocuments> {
        let exempt = self.exempt_platform_admins && caller.is_some_and(|c| c.platform_admin);
        self.trusted.as_ref().filter(|_| !exempt)
    }

    /// The request to execute for `params`: the document from its text, its persisted hash or its
    /// trusted id.
    pub async fn resolve(
        &self,
        params: Params,
        caller: Option<&Caller>,
    ) -> Result<Request, DocumentError> {
        let persisted = params
            .extensions
            .as_ref()
            .and_then(|e| e.get("persistedQuery"))
            .map(persisted_hash)
            .transpose()?;
        let query = match self.trusted_for(caller) {
            Some(trusted) => {
                let listed = params
                    .document_id
                    .as_deref()
                    .or(persisted.as_deref())
                    .and_then(|id| trusted.by_id(id))
                    .or_else(|| {
                        params
                            .query
                            .as_deref()
                            .and_then(|q| trusted.by_hash.get(&sha256_hex(q)))
                    });
                match (listed, &params.query) {
                    (Some(doc), _) => doc.to_string(),
                    (None, None) if params.document_id.is_some() || persisted.is_some() => {
                        return Err(DocumentError::NotFound)
                    }
                    _ => return Err(DocumentError::NotTrusted),
                }
            }
            None => match (params.query, persisted) {
                (Some(q), Some(hash)) => {
                    // Checked before anything is hashed, stored or parsed.
                    self.check_text(&q)?;
                    if sha256_hex(&q) != hash {
                        return Err(DocumentError::HashMismatch);
                    }
                    self.remember(&hash, &q).await?;
                    q
                }
                (Some(q), None) => {
                    self.check_text(&q)?;
                    q
                }
                (None, Some(hash)) => self.lookup(&hash).await?.to_string(),
                (None, None) if params.document_id.is_some() => {
                    return Err(DocumentError::Invalid(
                        "`documentId` needs trusted documents (VOICEGRAPH_TRUSTED_DOCUMENTS), which this server does not use; send `query`".into(),
                    ))
                }
                (None, None) => {
                    return Err(DocumentError::Invalid(
                        "the `query` parameter is required".into(),
                    ))
                }
            },
        };
        let mut request = Request::new(query);
        if let Some(name) = params.operation_name {
            request = request.operation_name(name);
        }
        if let Some(vars) = params.variables {
            request = request.variables(Variables::from_json(serde_json::Value::Object(vars)));
        }
        Ok(request)
    }

    /// For requests whose document came another way (multipart): refuses one that is not
    /// trusted when only trusted documents may run.
    pub fn check(&self, request: &Request, caller: Option<&Caller>) -> Result<(), DocumentError> {
        self.check_text(&request.query)?;
        match self.trusted_for(caller) {
            Some(t) if !t.by_hash.contains_key(&sha256_hex(&request.query)) => {
                Err(DocumentError::NotTrusted)
            }
            _ => Ok(()),
        }
    }

    /// The document limits that need no parsing (bytes, tokens), so that no transport parses a
    /// document before they held (the schema checks them again, for any other caller).
    fn check_text(&self, query: &str) -> Result<(), DocumentError> {
        self.limits
            .check_text(query)
            .map_err(|e| DocumentError::Limit(Box::new(e)))
    }

    fn cached(&self, hash: &str) -> Option<Arc<str>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    fn cache(&self, hash: &str, doc: Arc<str>) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(hash.to_string(), doc);
    }

    async fn lookup(&self, hash: &str) -> Result<Arc<str>, DocumentError> {
        if let Some(doc) = self.cached(hash) {
            return Ok(doc);
        }
        let doc: Arc<str> = self
            .store
            .get(hash)
            .await
            .map_err(DocumentError::Unavailable)?
            .ok_or(DocumentError::NotFound)?
            .into();
        self.cache(hash, doc.clone());
        Ok(doc)
    }

    /// Stores a document that parses (garbage is not worth keeping).
    async fn remember(&self, hash: &str, query: &str) -> Result<(), DocumentError> {
        if self.cached(hash).is_some() || async_graphql::parser::parse_query(query).is_err() {
            return Ok(());
        }
        self.store
            .put(hash, query)
            .await
            .map_err(DocumentError::Unavailable)?;
        self.cache(hash, Arc::from(query));
        Ok(())
    }
}

/// The hash of `extensions.persistedQuery` (`{version: 1, sha256Hash}`).
fn persisted_hash(v: &serde_json::Value) -> Result<String, DocumentError> {
    let bad = || {
        DocumentError::Invalid(
            "`extensions.persistedQuery` must be {\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}"
                .into(),
        )
    };
    let obj = v.as_object().ok_or_else(bad)?;
    if obj.get("version").and_then(|v| v.as_i64()) != Some(1) {
        return Err(DocumentError::Invalid(
            "unsupported persisted query version: only version 1 is supported".into(),
        ));
    }
    let hash = obj
        .get("sha256Hash")
        .and_then(|h| h.as_str())
        .ok_or_else(bad)?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hash.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_must_have_their_types() {
        assert!(Params::from_json(json!({"query": "{ a }"})).is_ok());
        for bad in [
            json!({"query": {"obj": 1}}),
            json!({"query": 0}),
            json!({"query": "{a}", "variables": "x"}),
            json!({"query": "{a}", "variables": []}),
            json!({"query": "{a}", "extensions": 0}),
            json!({"query": "{a}", "operationName": false}),
            json!(["{a}"]),
        ] {
            assert!(Params::from_json(bad.clone()).is_err(), "{bad}");
        }
        let p = Params::from_json(
            json!({"query": "{a}", "variables": null, "extensions": null, "operationName": null}),
        )
        .unwrap();
        assert!(p.variables.is_none() && p.extensions.is_none() && p.operation_name.is_none());
        let p = Params::from_query_string(
            "query=%7Ba%7D&variables=%7B%22x%22%3A1%7D&extensions=&operationName=Q",
        )
        .unwrap();
        assert_eq!(p.query.as_deref(), Some("{a}"));
        assert_eq!(p.variables.unwrap()["x"], 1);
        assert_eq!(p.operation_name.as_deref(), Some("Q"));
    }

    #[test]
    fn trusted_ids_accept_the_algorithm_prefix_and_the_hash() {
        let doc = "query Q { a }";
        let t = TrustedDocuments::from_map(HashMap::from([("abc".to_string(), doc.to_string())]));
        assert_eq!(t.by_id("abc").map(|d| &**d), Some(doc));
        assert_eq!(t.by_id("sha256:abc").map(|d| &**d), Some(doc));
        assert_eq!(t.by_id(&sha256_hex(doc)).map(|d| &**d), Some(doc));
        assert!(t.by_id("nope").is_none());
    }

    #[test]
    fn persisted_query_extension_is_checked() {
        let h = sha256_hex("{ a }");
        assert_eq!(
            persisted_hash(&json!({"version": 1, "sha256Hash": h})).unwrap(),
            h
        );
        assert!(persisted_hash(&json!({"version": 2, "sha256Hash": h})).is_err());
        assert!(persisted_hash(&json!({"version": 1, "sha256Hash": "zz"})).is_err());
        assert!(persisted_hash(&json!("x")).is_err());
    }
}
