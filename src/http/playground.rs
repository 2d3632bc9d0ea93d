//! The analysts' playground: GraphiQL with an API-key field, preloaded with the example
//! operations of `playground/` (embedded at build time; a test checks none is missing).
//!
//! Everything the page loads comes from here: its script and styles are bundled from npm
//! packages pinned by `playground/web/package-lock.json` when the binary is built (`build.rs`)
//! and embedded in it, and the page's Content-Security-Policy lets it reach nothing but this
//! origin.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every example operation under `playground/`, by file name.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "01-submit-call.graphql",
        include_str!("../../playground/01-submit-call.graphql"),
    ),
    (
        "02-create-upload.graphql",
        include_str!("../../playground/02-create-upload.graphql"),
    ),
    (
        "03-submit-uploaded.graphql",
        include_str!("../../playground/03-submit-uploaded.graphql"),
    ),
    (
        "04-watch-events.graphql",
        include_str!("../../playground/04-watch-events.graphql"),
    ),
    (
        "05-call-details.graphql",
        include_str!("../../playground/05-call-details.graphql"),
    ),
    (
        "06-list-calls.graphql",
        include_str!("../../playground/06-list-calls.graphql"),
    ),
    (
        "07-call-stats.graphql",
        include_str!("../../playground/07-call-stats.graphql"),
    ),
    (
        "08-tag-retry-delete.graphql",
        include_str!("../../playground/08-tag-retry-delete.graphql"),
    ),
    (
        "09-admin-keys.graphql",
        include_str!("../../playground/09-admin-keys.graphql"),
    ),
];

const PAGE: &str = include_str!("../../playground/index.html");
const PAGE_CSS: &str = include_str!("../../playground/page.css");
const DASHBOARD: &str = include_str!("../../playground/dashboard.html");
const DASHBOARD_CSS: &str = include_str!("../../playground/dashboard.css");
const DASHBOARD_SCRIPT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/playground/dashboard.js"));
const DASHBOARD_LEGAL: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/playground/dashboard.js.LEGAL.txt"
));
const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/playground/playground.js"));
const STYLES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/playground/playground.css"));
/// The licence notices of what the bundles hold (esbuild gathers them; the bundles link here).
const SCRIPT_LEGAL: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/playground/playground.js.LEGAL.txt"
));
const STYLES_LEGAL: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/playground/playground.css.LEGAL.txt"
));

/// `built`, or `missing: <why>` when the build could not bundle the assets (then the page says
/// why and how to fix it, and the start-up log warns).
pub const ASSETS: &str = env!("VOICEGRAPH_PLAYGROUND_ASSETS");

/// Only this origin: scripts and styles from here (GraphiQL sets inline styles), data: for the
/// fonts and icons bundled into the styles, and the API over HTTP and WebSocket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    html(PAGE)
}

/// The analysts' dashboard (`/dashboard`): charts of the tenant's calls from the public API.
pub async fn dashboard() -> Response {
    html(DASHBOARD)
}

fn html(page: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        page,
    )
        .into_response()
}

/// The bundled assets, by name.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match name.as_str() {
        "playground.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "playground.css" => (STYLES, "text/css; charset=utf-8"),
        "page.css" => (PAGE_CSS.as_bytes(), "text/css; charset=utf-8"),
        "dashboard.js" => (DASHBOARD_SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (DASHBOARD_CSS.as_bytes(), "text/css; charset=utf-8"),
        "dashboard.js.LEGAL.txt" => (DASHBOARD_LEGAL, "text/plain; charset=utf-8"),
        "playground.js.LEGAL.txt" => (SCRIPT_LEGAL, "text/plain; charset=utf-8"),
        "playground.css.LEGAL.txt" => (STYLES_LEGAL, "text/plain; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(kind).expect("a valid header"),
    );
    // Revalidated, not cached for good: the same URL serves the next release's bundle.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The trusted documents manifest of the examples (`playground/trusted-documents.json`,
/// generated by `voicegraph print-trusted-documents`): the SHA-256 of each file's text, which is
/// what the playground sends, to the text.
pub fn trusted_documents() -> String {
    let map: std::collections::BTreeMap<String, &str> = EXAMPLES
        .iter()
        .map(|(_, doc)| (crate::graphql::documents::sha256_hex(doc), *doc))
        .collect();
    let mut out = serde_json::to_string_pretty(&map).unwrap_or_default();
    out.push('\n');
    out
}

pub async fn examples() -> Response {
    let list: Vec<_> = EXAMPLES
        .iter()
        .map(|(name, query)| serde_json::json!({ "name": name, "query": query }))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(list).to_string(),
    )
        .into_response()
}
