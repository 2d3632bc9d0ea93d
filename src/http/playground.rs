//! The analysts' playground: GraphiQL with an API-key field, preloaded with the example
//! operations of `playground/` (embedded at build time; a test checks none is missing).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

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

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
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
