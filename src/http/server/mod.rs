//! The HTTP/1 server around the router. It caps connections (in total, and per client address
//! when clients connect directly) so that the process keeps file descriptors for itself; evicts
//! the longest half-open or idle connection when full; times out slow headers, idle keep-alives,
//! trickled bodies and clients that do not read; survives running out of descriptors at
//! `accept`; and on shutdown stops accepting, closes idle connections and lets requests finish.

mod body;
mod conn;
mod registry;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use self::body::Progress;
pub use self::conn::Timeouts;

use self::body::ProgressBody;
use self::conn::{Conn, Guarded, RequestGuard};
use self::registry::{Refusal, Registry, Ticket};
use crate::config::Settings;
use crate::http::metrics::Metrics;

/// Descriptors kept for the process itself at least (database pool, Redis, AWS clients, files,
/// upload temporaries), whatever the limit.
const MIN_FD_RESERVE: u64 = 256;

/// The caps and timeouts a listener holds its connections to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// `None`: no per-address cap (behind proxies, or turned off).
    pub max_connections_per_address: Option<usize>,
    pub timeouts: Timeouts,
    pub body: Progress,
    /// The largest body any route accepts (a recording and its request): a `Content-Length`
    /// above it is refused before the router sees the request.
    pub max_body_bytes: u64,
}

impl Limits {
    /// The limits of the main listener, under a file-descriptor limit of `fd_limit`.
    pub fn from_settings(settings: &Settings, fd_limit: Option<u64>) -> Self {
        let max_connections = settings
            .max_connections
            .unwrap_or_else(|| default_max_connections(fd_limit));
        Self {
            max_connections,
            max_connections_per_address: (settings.trusted_proxy_hops == 0
                && settings.max_connections_per_ip > 0)
                .then_some(settings.max_connections_per_ip),
            timeouts: Timeouts {
                header_read: settings.header_read_timeout,
                keep_alive: settings.keep_alive_timeout,
                write: settings.write_timeout,
            },
            body: Progress::new(settings.body_read_timeout, settings.body_min_bytes_per_sec),
            max_body_bytes: settings
                .max_recording_bytes
                .saturating_add(settings.max_request_bytes as u64),
        }
    }

    /// The limits of the metrics listener: a few scrapers at a time.
    pub fn for_metrics(settings: &Settings) -> Self {
        Self {
            max_connections: 16,
            max_connections_per_address: None,
            ..Self::from_settings(settings, None)
        }
    }
}

/// Connections allowed by default under a descriptor limit: the limit minus a reserve of a
/// quarter of it (at least `MIN_FD_RESERVE`, at most half), which the database pool, Redis, the
/// AWS clients, recordings and upload temporaries draw on.
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    // Unknown or unlimited: as if the common 64Ki.
    let limit = fd_limit.filter(|l| *l < (1 << 24)).unwrap_or(65_536);
    let reserve = (limit / 4).max(MIN_FD_RESERVE).min(limit / 2);
    (limit - reserve).max(1) as usize
}

/// Raises the soft file-descriptor limit to the hard one and returns it (`None` where the
/// platform has no such limit or it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the file-descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The largest request head (request line and headers) accepted (431 above it), so that a
/// connection still sending its headers holds little memory however many there are; tokens and
/// cookies fit many times over.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long `accept` pauses after failing for lack of resources (descriptors, memory); the
/// client stays queued in the backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for the requests in
/// flight (upgraded WebSockets close themselves).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(Registry::new(
        limits.max_connections,
        limits.max_connections_per_address,
        metrics.clone(),
    ));
    let tracker = TaskTracker::new();
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                metrics.http_accept_errors.inc();
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_error_log = Some(Instant::now());
                    tracing::error!(error = %e, "accept failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        match registry.admit(peer.ip(), Instant::now()) {
            Ok(ticket) => {
                tracker.spawn(connection(
                    stream,
                    peer,
                    ticket,
                    router.clone(),
                    limits,
                    metrics.clone(),
                    shutdown.clone(),
                ));
            }
            Err(why) => refuse(stream, why, &metrics),
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Errors of one client's connection attempt, not of the listener.
fn is_peer_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

fn canned(status: &str, code: &str, message: &str, retry_after: u32) -> Vec<u8> {
    let body =
        serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })
            .to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

static FULL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "503 Service Unavailable",
        "SERVICE_UNAVAILABLE",
        "the server has as many connections as it can take; retry shortly",
        1,
    )
});

static PER_ADDRESS: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "429 Too Many Requests",
        "RATE_LIMITED",
        "too many connections from your address; reuse or close some",
        1,
    )
});

/// Answers a connection over a cap with what fits in the socket's buffer, and closes it.
fn refuse(stream: TcpStream, why: Refusal, metrics: &Metrics) {
    let (cap, answer) = match why {
        Refusal::Full => ("total", &*FULL),
        Refusal::PerAddress => ("per_address", &*PER_ADDRESS),
    };
    metrics
        .http_connections_refused
        .with_label_values(&[cap])
        .inc();
    let _ = stream.try_write(answer);
}

/// The answer to a request whose body was cut for arriving too slowly.
fn too_slow(progress: &Progress) -> Response {
    let mut r = crate::http::graphql::error_response(
        StatusCode::REQUEST_TIMEOUT,
        "BAD_USER_INPUT",
        &format!(
            "the request body arrived too slowly: send at least {} bytes every {} s",
            progress.min_bytes,
            progress.window.as_secs()
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The response, holding its connection busy until its body is sent (or dropped).
fn held(resp: Response, guard: RequestGuard) -> Response {
    resp.map(|b| {
        Body::new(http_body_util::BodyExt::map_frame(b, move |f| {
            let _busy = &guard;
            f
        }))
    })
}

/// The answer to a request announcing a body larger than any route accepts.
fn too_large(max: u64) -> Response {
    let mut r = crate::http::graphql::error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "BAD_USER_INPUT",
        &format!("the request body is larger than {max} bytes"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Serves one connection: HTTP/1 with upgrades, under its timeouts, until it closes, times out,
/// is evicted, or (idle at shutdown, or after its last response) is let go.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let evicted = ticket.evicted.clone();
    let conn = Arc::new(Conn::new(ticket, Instant::now()));
    let io = TokioIo::new(Guarded::new(stream, conn.clone()));
    let service = {
        let conn = conn.clone();
        let metrics = metrics.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = conn.start_request();
            let router = router.clone();
            let metrics = metrics.clone();
            async move {
                if hyper::body::Body::size_hint(req.body()).lower() > limits.max_body_bytes {
                    return Ok(held(too_large(limits.max_body_bytes), guard));
                }
                let cut = Arc::new(AtomicBool::new(false));
                let mut req =
                    req.map(|b| Body::new(ProgressBody::new(b, limits.body, cut.clone())));
                req.extensions_mut().insert(ConnectInfo(peer));
                let resp = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let resp = if body::was_cut(&cut) {
                    metrics.http_timeouts.with_label_values(&["body"]).inc();
                    too_slow(&limits.body)
                } else {
                    resp
                };
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    guard.upgraded();
                }
                Ok::<_, Infallible>(held(resp, guard))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timeout is kept here, apart from the keep-alive one (hyper's counts both).
    http.header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(MAX_HEADER_BYTES);
    let mut served = pin!(http.serve_connection(io, service).with_upgrades());
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&limits.timeouts);
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = conn.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline.map_or_else(Instant::now, |d| d.0)), if deadline.is_some() => {
                if let Some((at, what)) = conn.deadline(&limits.timeouts) {
                    if at <= Instant::now() {
                        metrics.http_timeouts.with_label_values(&[what.label()]).inc();
                        tracing::debug!(%peer, timeout = what.label(), "connection timed out");
                        return;
                    }
                }
            }
            _ = evicted.cancelled() => return,
            _ = shutdown.cancelled(), if !draining => {
                if conn.is_idle() {
                    return;
                }
                // Finish the request in flight, then close.
                served.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_a_reserve_below_the_descriptor_limit() {
        assert_eq!(default_max_connections(Some(20_000)), 15_000);
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(256)), 128);
        assert_eq!(default_max_connections(Some(u64::MAX)), 49_152);
        assert_eq!(default_max_connections(None), 49_152);
    }

    #[test]
    fn the_per_address_cap_applies_only_without_trusted_proxies() {
        let mut l = crate::config::Layers::default();
        l.set("max_connections", "100")
            .set("max_connections_per_ip", "7");
        let s = l.settings().unwrap();
        let limits = Limits::from_settings(&s, Some(20_000));
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.max_connections_per_address, Some(7));
        l.set("trusted_proxy_hops", "1");
        let s = l.settings().unwrap();
        assert_eq!(
            Limits::from_settings(&s, Some(20_000)).max_connections_per_address,
            None
        );
        let s = crate::config::Layers::default().settings().unwrap();
        let limits = Limits::from_settings(&s, Some(20_000));
        assert_eq!(limits.max_connections, 15_000);
        assert_eq!(limits.max_connections_per_address, Some(512));
        assert_eq!(limits.timeouts.header_read, Duration::from_secs(30));
    }
}
