//! Rate limits at the HTTP edge of `/graphql`: the client's address (through trusted proxies),
//! admission (the failed-authentication lockout per address, authentication, then requests per
//! second per key and tenant, or per address without credentials), and the answers: 429 with
//! `Retry-After`, and the `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
//! `RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers-06 on every admitted or
//! refused response, reporting the quota closest to running out.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::graphql::{auth_failure, authenticate, bearer};
use super::HttpState;
use crate::error::AppError;
use crate::services::auth::Caller;
use crate::services::limits::{Refusal, Report};
use crate::state::AppState;

/// The client's address: the peer's, or the one trusted proxies put in `X-Forwarded-For`.
/// `None` when the server does not know its peers (a router served without connect info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The address `hops` entries from the right of `X-Forwarded-For` (each trusted proxy appends
/// the address it received the request from), else the peer's. With 0 hops the header is not
/// trusted at all; with fewer entries than hops, or an entry that is not an address, the peer's
/// address is used.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(index) = entries.len().checked_sub(hops) else {
        return peer;
    };
    let entry = entries[index];
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or(peer)
}

impl FromRequestParts<HttpState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self(client_address(
            peer,
            &parts.headers,
            state.app.settings.trusted_proxy_hops,
        )))
    }
}

/// A request let in: its caller (none without credentials) and the quota it was charged.
pub struct Admitted {
    pub caller: Option<Caller>,
    pub report: Report,
    /// The request's id (see [`super::access`]), for the GraphQL errors it gets.
    pub request_id: Option<String>,
}

impl Admitted {
    /// Adds the `RateLimit-*` fields of the request's quota to a response.
    pub fn decorate(&self, response: &mut Response) {
        set_fields(response.headers_mut(), &self.report);
    }
}

/// Lets a request in or answers it: refused while its address is locked out for failed
/// authentications, then authenticated (a failure counts against the address), then charged
/// one request to its key and tenant (or to its address when it has no credentials).
pub async fn admit(
    app: &AppState,
    headers: &HeaderMap,
    addr: ClientAddr,
) -> Result<Admitted, Box<Response>> {
    let limits = &app.limits;
    let Some(token) = bearer(headers)? else {
        let report = limits.anonymous(addr.0).await.map_err(too_many)?;
        return Ok(Admitted {
            caller: None,
            report,
            request_id: super::access::request_id(headers).map(str::to_string),
        });
    };
    let caller = authenticate_from(app, &token, addr)
        .await
        .map_err(|e| match e {
            Failure::Limited(r) => too_many(r),
            Failure::Auth(e) => auth_failure(e),
        })?;
    let report = limits.request(&caller).await.map_err(too_many)?;
    Ok(Admitted {
        caller: Some(caller),
        report,
        request_id: super::access::request_id(headers).map(str::to_string),
    })
}

/// Why credentials were not accepted.
pub enum Failure {
    /// The address is locked out for failed authentications.
    Limited(Refusal),
    /// The credentials failed (counted against the address unless the failure was ours).
    Auth(AppError),
}

/// Authenticates a token sent from `addr`, minding the address's failed-authentication lockout.
pub async fn authenticate_from(
    app: &AppState,
    token: &str,
    addr: ClientAddr,
) -> Result<Caller, Failure> {
    let limits = &app.limits;
    limits
        .before_authentication(addr.0)
        .await
        .map_err(Failure::Limited)?;
    match authenticate(app, token).await {
        Ok(caller) => Ok(caller),
        // The server's failure, not the client's: no lockout.
        Err(e @ (AppError::Internal(_) | AppError::Unavailable(_))) => Err(Failure::Auth(e)),
        Err(e) => {
            limits
                .authentication_failed(addr.0)
                .await
                .map_err(Failure::Limited)?;
            Err(Failure::Auth(e))
        }
    }
}

/// Seconds, rounded up.
fn secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil() as u64
}

/// Sets the `RateLimit-*` fields for the quota a report names (none when no quota applied).
pub fn set_fields(headers: &mut HeaderMap, report: &Report) {
    let Some((policy, decision)) = report.tightest else {
        return;
    };
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("ratelimit-limit", decision.limit.to_string());
    set("ratelimit-remaining", decision.remaining.to_string());
    set("ratelimit-reset", secs(decision.reset).to_string());
    set("ratelimit-policy", policy.header_item());
}

/// The 429 answer to a refusal: `Retry-After` when waiting helps, the quota's fields, and a
/// GraphQL error body with code `RATE_LIMITED`.
pub fn too_many_requests(refusal: &Refusal) -> Response {
    let body = serde_json::json!({ "errors": [refusal.to_json()] });
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(secs) = refusal.retry_after_secs() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    set_fields(headers, &refusal.report);
    response
}

fn too_many(refusal: Refusal) -> Box<Response> {
    Box::new(too_many_requests(&refusal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_entry_trusted_hops_from_the_right() {
        let peer: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let h = xff(&["198.51.100.1, 203.0.113.7", "192.0.2.9"]);
        assert_eq!(
            client_address(peer, &h, 0),
            peer,
            "0 hops: the header is ignored"
        );
        assert_eq!(client_address(peer, &h, 1), "192.0.2.9".parse().ok());
        assert_eq!(client_address(peer, &h, 2), "203.0.113.7".parse().ok());
        assert_eq!(client_address(peer, &h, 3), "198.51.100.1".parse().ok());
        assert_eq!(client_address(peer, &h, 4), peer, "fewer entries than hops");
        assert_eq!(client_address(peer, &HeaderMap::new(), 1), peer);
        let odd = xff(&["not-an-address"]);
        assert_eq!(client_address(peer, &odd, 1), peer);
        let ported = xff(&["[2001:db8::1]:443"]);
        assert_eq!(client_address(peer, &ported, 1), "2001:db8::1".parse().ok());
    }
}
