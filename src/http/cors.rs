//! Which browser origins may use the API: CORS for HTTP (tower-http's layer) and the same rule
//! for WebSocket upgrades, which browsers send cross-site without asking (cross-site WebSocket
//! hijacking). Origins come from `VOICEGRAPH_CORS_ORIGINS`; in development, with none set,
//! pages on localhost are allowed; in production, none unless set.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::graphql::error_response;
use crate::config::Settings;

/// Whether a page of `origin` (`scheme://host[:port]`) may call the API.
pub fn origin_allowed(settings: &Settings, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    if settings.cors_origins.is_empty() {
        return !settings.is_production() && is_localhost(origin);
    }
    settings
        .cors_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

fn is_localhost(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
        None => rest.split(':').next().map(str::to_string),
    };
    matches!(
        host.as_deref(),
        Some("localhost") | Some("127.0.0.1") | Some("[::1]")
    )
}

pub fn layer(settings: &Settings) -> CorsLayer {
    let s = settings.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| origin_allowed(&s, o))
        }))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-apollo-operation-name"),
            HeaderName::from_static("apollo-require-preflight"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("apollographql-client-name"),
            HeaderName::from_static("apollographql-client-version"),
        ])
        // The rate limit fields, so that browser apps can pace themselves.
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Refuses a WebSocket upgrade from a page of a foreign origin. Clients that are not browsers
/// send no `Origin` and pass; so does a page of the API's own origin.
#[allow(clippy::result_large_err)]
pub fn check_websocket_origin(
    settings: &Settings,
    headers: &HeaderMap,
) -> Result<(), Box<Response>> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.trim_end_matches('/').eq_ignore_ascii_case(host));
    let public = settings
        .public_url
        .as_deref()
        .is_some_and(|u| u.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if same_origin || public || origin_allowed(settings, origin) {
        return Ok(());
    }
    Err(Box::new(error_response(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        &format!("WebSocket connections from origin {origin:?} are not allowed (VOICEGRAPH_CORS_ORIGINS)"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &str, origins: &str) -> Settings {
        let mut l = crate::config::Layers::default();
        l.set("env", env).set("cors_origins", origins);
        l.settings().unwrap()
    }

    #[test]
    fn development_allows_localhost_pages_production_none_unless_listed() {
        let dev = settings("development", "");
        for o in [
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "https://localhost",
            "http://[::1]:8080",
        ] {
            assert!(origin_allowed(&dev, o), "{o}");
        }
        for o in [
            "http://evil.example",
            "http://localhost.evil.example",
            "file://",
            "null",
        ] {
            assert!(!origin_allowed(&dev, o), "{o}");
        }
        let prod = settings("production", "");
        assert!(!origin_allowed(&prod, "http://localhost:3000"));
        let listed = settings(
            "production",
            "https://app.example.com, https://admin.example.com",
        );
        assert!(origin_allowed(&listed, "https://app.example.com"));
        assert!(origin_allowed(&listed, "https://admin.example.com/"));
        assert!(!origin_allowed(&listed, "https://evil.example.com"));
        assert!(!origin_allowed(&listed, "http://localhost:3000"));
    }
}
