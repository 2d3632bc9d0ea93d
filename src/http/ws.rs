//! GraphQL over WebSocket: the `graphql-transport-ws` protocol (the graphql-ws library's) and the
//! legacy `graphql-ws` one (subscriptions-transport-ws). Auth in `connection_init` (or on the
//! upgrade request); the server pings on an interval and closes a client that stops answering;
//! close codes as graphql-transport-ws defines them; a JWT's expiry ends the connection unless
//! the client refreshed it in-band with a `ping` carrying a new `Authorization`; revoking the
//! API key it signed in with ends it (4403) on every instance (on Postgres when the revocation's
//! notice arrives, at the latest within the revocation check interval), and each new operation
//! on it checks the key first. The connection is one of its
//! key's capped sockets, each subscription one of its capped subscriptions, and each operation
//! a request charged to the key's rate and cost budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::OperationType;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::channel::mpsc;
use futures::stream::{self, BoxStream};
use futures::SinkExt as _;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::ratelimit::{admit, authenticate_from, ClientAddr, Failure};
use super::HttpState;
use crate::error::AppError;
use crate::graphql::budget::CostCharge;
use crate::graphql::documents::Params;
use crate::graphql::live::{is_request_error, operation_type, result_json, LiveItem};
use crate::graphql::loaders::Loaders;
use crate::ports::Slot;
use crate::services::auth::{self, Caller};
use crate::services::limits::Refusal;
use crate::services::revocation::{until_revoked, KeyWatch};
use crate::state::AppState;

pub const TRANSPORT_WS: &str = "graphql-transport-ws";
pub const LEGACY_WS: &str = "graphql-ws";

/// Longest subscription id accepted.
const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    TransportWs,
    Legacy,
}

/// What a subscription sends its client.
enum Out {
    Next(Arc<str>),
    /// Refused before it started: a JSON array of GraphQL errors; the operation is over.
    Error(Arc<str>),
    Complete,
}

impl From<LiveItem> for Out {
    fn from(item: LiveItem) -> Self {
        match item {
            LiveItem::Next(p) => Out::Next(p),
            LiveItem::Error(e) => Out::Error(e),
        }
    }
}

/// Why the server closes a connection: a close code and its reason.
type Close = (u16, String);

fn close(code: u16, reason: impl Into<String>) -> Close {
    (code, reason.into())
}

fn invalid(why: &str) -> Close {
    close(4400, format!("Invalid message received: {why}"))
}

/// Upgrades `GET /graphql` to a WebSocket, after checking its origin, any token on the upgrade
/// request itself and the request rate.
pub async fn upgrade(
    state: HttpState,
    addr: ClientAddr,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(r) = super::cors::check_websocket_origin(&state.app.settings, &headers) {
        return *r;
    }
    let header_caller = match admit(&state.app, &headers, addr).await {
        Ok(a) => a.caller,
        Err(r) => return *r,
    };
    let s = &state.app.settings;
    ws.protocols([TRANSPORT_WS, LEGACY_WS])
        .read_buffer_size(s.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(s.ws_max_message_bytes)
        .max_frame_size(s.ws_max_message_bytes)
        .on_upgrade(move |socket| async move {
            let protocol = match socket.protocol().and_then(|p| p.to_str().ok()) {
                Some(TRANSPORT_WS) => Some(Protocol::TransportWs),
                Some(LEGACY_WS) => Some(Protocol::Legacy),
                _ => None,
            };
            let metrics = state.app.metrics.clone();
            metrics.ws_connections.inc();
            match protocol {
                Some(protocol) => {
                    let (outbox, inbox) = mpsc::channel(OUTBOX_MESSAGES);
                    let mut connection = Connection {
                        state,
                        protocol,
                        addr,
                        caller: None,
                        socket_slot: None,
                        watch: None,
                        init_received: false,
                        acked: false,
                        subs: HashMap::new(),
                        generation: 0,
                        outbox,
                        inbox,
                    };
                    if let Some(caller) = header_caller {
                        connection.set_caller(caller);
                    }
                    connection.serve(socket).await
                }
                None => {
                    let mut socket = socket;
                    let _ = socket
                        .send(close_message(close(
                            4406,
                            "Subprotocol not acceptable: use graphql-transport-ws (or graphql-ws)",
                        )))
                        .await;
                }
            }
            metrics.ws_connections.dec();
        })
}

fn close_message((code, reason): Close) -> Message {
    // A close reason is at most 123 bytes.
    let mut reason = reason;
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// The token in a `connection_init` (or `ping`) payload: `Authorization` (`Bearer …` or bare),
/// `authorization`, `token`, `apiKey`, or `headers.Authorization`.
fn token_from_payload(payload: &Value) -> Option<String> {
    let obj = payload.as_object()?;
    let raw = ["Authorization", "authorization", "token", "apiKey"]
        .iter()
        .find_map(|k| obj.get(*k))
        .or_else(|| {
            obj.get("headers")
                .and_then(|h| h.get("Authorization").or_else(|| h.get("authorization")))
        })?
        .as_str()?;
    let token = match raw.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t,
        _ => raw,
    };
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

struct Connection {
    state: HttpState,
    protocol: Protocol,
    addr: ClientAddr,
    caller: Option<Caller>,
    /// This connection's place among its key's sockets, taken at `connection_init`.
    socket_slot: Option<Slot>,
    /// Ends when the caller's API key is revoked (none for JWT callers).
    watch: Option<KeyWatch>,
    init_received: bool,
    acked: bool,
    /// The running operations by id. Each runs in a task of its own that forwards its messages
    /// to `outbox`, so that an operation whose stream is waiting on the database makes progress
    /// (and gives its connection back) while this socket's loop awaits something else, such as a
    /// new operation's key check; polled only from this loop, one blocked socket could otherwise
    /// hold pool connections that its own next step waits for.
    subs: HashMap<Arc<str>, Running>,
    /// Bumped for every operation started, so that a message of a finished operation is never
    /// delivered to a later one reusing its id.
    generation: u64,
    // futures' channel allocates per message rather than a block of slots up front, so an idle
    // socket's channel costs little.
    outbox: mpsc::Sender<(Arc<str>, u64, Out)>,
    inbox: mpsc::Receiver<(Arc<str>, u64, Out)>,
}

/// An operation's task; dropping it stops the operation (and gives back its places).
struct Running {
    generation: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages a socket's operations may have waiting for the client at once; beyond it they wait
/// (no database connection held) until the client reads.
const OUTBOX_MESSAGES: usize = 16;

const REVOKED: &str = "Forbidden: the API key was revoked";

/// Whether the connection's API key (its id, and whether its watch already ended) was revoked,
/// asked of the database (not of the key cache HTTP requests use), so that no operation starts
/// after a revocation, even before this instance hears of it.
async fn key_revoked(app: &AppState, watched: Option<(uuid::Uuid, bool)>) -> anyhow::Result<bool> {
    let Some((key, revoked)) = watched else {
        return Ok(false);
    };
    if revoked {
        return Ok(true);
    }
    let active = auth::active_keys(&app.store, &[key]).await?;
    if !active.contains(&key) {
        app.revocations.revoked_here(key);
        return Ok(true);
    }
    Ok(false)
}

impl Connection {
    /// Signs the connection in as `caller`, watching its API key for revocation.
    fn set_caller(&mut self, caller: Caller) {
        let same_key = self.watch.as_ref().map(KeyWatch::key_id) == caller.key_id;
        if !same_key {
            self.watch = caller.key_id.map(|k| self.state.app.revocations.watch(k));
        }
        self.caller = Some(caller);
    }

    /// When the caller's credentials expire (a JWT's `exp`), as an instant of this clock.
    fn expiry(&self) -> Option<Instant> {
        let exp = self.caller.as_ref()?.expires_at?;
        let left = (exp - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        Some(Instant::now() + left)
    }

    async fn serve(mut self, mut socket: WebSocket) {
        let settings = self.state.app.settings.clone();
        let shutdown = self.state.app.shutdown.clone();
        let init_deadline = Instant::now() + settings.ws_init_timeout;
        let mut ping_at = Instant::now() + settings.ws_ping_interval;
        let mut pong_due: Option<Instant> = None;
        let closing = loop {
            let expiry = self.expiry();
            let deadline = [
                (!self.acked).then_some(init_deadline),
                Some(ping_at),
                pong_due,
                expiry,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(ping_at);
            tokio::select! {
                _ = shutdown.cancelled() => {
                    break Some(close(1001, "going away: the server is restarting; reconnect and resume from your last cursor"));
                }
                _ = until_revoked(self.watch.as_ref()) => {
                    break Some(close(4403, REVOKED));
                }
                msg = socket.recv() => {
                    // Anything from the client shows it is alive.
                    pong_due = None;
                    match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                        Some(Ok(Message::Text(text))) => {
                            // Boxed: handling a message (authentication, documents) is a large
                            // future that an idle connection should not carry around.
                            if let Err(c) = Box::pin(self.on_message(&mut socket, text.as_str())).await {
                                break Some(c);
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            break Some(invalid("binary messages are not part of the protocol"));
                        }
                        Some(Ok(_)) => {}
                    }
                }
                Some((id, generation, out)) = self.inbox.next() => {
                    // A message of an operation the client stopped, or that ended, is dropped.
                    if self.subs.get(&id).is_some_and(|r| r.generation == generation) {
                        if matches!(out, Out::Complete) {
                            self.subs.remove(&id);
                        }
                        if self.deliver(&mut socket, id, out).await.is_err() {
                            break None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if !self.acked && now >= init_deadline {
                        break Some(close(4408, "Connection initialisation timeout"));
                    }
                    if expiry.is_some_and(|e| now >= e) {
                        break Some(close(4403, "Forbidden: the token expired (refresh it with a ping carrying a new Authorization)"));
                    }
                    if pong_due.is_some_and(|d| now >= d) {
                        break Some(close(3008, "keep-alive timeout: no answer to the server's ping"));
                    }
                    if now >= ping_at {
                        if self.ping(&mut socket).await.is_err() {
                            break None;
                        }
                        ping_at = now + settings.ws_ping_interval;
                        pong_due.get_or_insert(now + settings.ws_pong_timeout);
                    }
                }
            }
        };
        if let Some(c) = closing {
            tracing::debug!(code = c.0, reason = %c.1, "closing a GraphQL WebSocket");
            let _ = socket.send(close_message(c)).await;
        }
    }

    async fn ping(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        match self.protocol {
            Protocol::TransportWs => send(socket, r#"{"type":"ping"}"#.into()).await,
            // The legacy protocol's keep-alive needs no answer; a WebSocket ping frame gets one
            // from every client (browsers answer them by themselves).
            Protocol::Legacy => {
                send(socket, r#"{"type":"ka"}"#.into()).await?;
                socket.send(Message::Ping(Default::default())).await
            }
        }
    }

    async fn on_message(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Close> {
        let msg: Value = serde_json::from_str(text).map_err(|_| invalid("not JSON"))?;
        let ty = msg
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `type`"))?;
        match (self.protocol, ty) {
            (_, "connection_init") => self.on_init(socket, msg.get("payload")).await,
            (Protocol::TransportWs, "ping") => {
                if let Some(payload) = msg.get("payload").filter(|p| !p.is_null()) {
                    self.refresh(payload).await?;
                }
                send(socket, r#"{"type":"pong"}"#.into())
                    .await
                    .map_err(|_| close(1011, "write failed"))
            }
            (Protocol::TransportWs, "pong") => Ok(()),
            (Protocol::TransportWs, "subscribe") | (Protocol::Legacy, "start") => {
                self.on_subscribe(socket, &msg).await
            }
            (Protocol::TransportWs, "complete") => {
                let id = msg
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("`complete` needs an `id`"))?;
                self.subs.remove(id);
                Ok(())
            }
            // The legacy protocol confirms a `stop` with `complete`.
            (Protocol::Legacy, "stop") => {
                let id = msg
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("`stop` needs an `id`"))?;
                if self.subs.remove(id).is_some() {
                    self.deliver(socket, Arc::from(id), Out::Complete)
                        .await
                        .map_err(|_| close(1011, "write failed"))?;
                }
                Ok(())
            }
            (Protocol::Legacy, "connection_terminate") => Err(close(1000, "")),
            (_, other) => Err(invalid(&format!(
                "unknown type {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    async fn on_init(
        &mut self,
        socket: &mut WebSocket,
        payload: Option<&Value>,
    ) -> Result<(), Close> {
        if self.init_received {
            return Err(close(4429, "Too many initialisation requests"));
        }
        self.init_received = true;
        let payload = payload.cloned().unwrap_or(Value::Null);
        if !(payload.is_object() || payload.is_null()) {
            return Err(invalid("the `connection_init` payload must be an object"));
        }
        match token_from_payload(&payload) {
            Some(token) => match authenticate_from(&self.state.app, &token, self.addr).await {
                Ok(c) => self.set_caller(c),
                Err(Failure::Auth(AppError::Internal(e))) => {
                    tracing::error!(error = ?e, "authenticating a WebSocket failed");
                    return Err(close(1011, "internal error while authenticating; retry"));
                }
                Err(Failure::Auth(AppError::Unavailable(message))) => {
                    // 1013, "try again later": the client reconnects, as after a restart.
                    tracing::warn!(error = %message, "authenticating a WebSocket could not reach the database");
                    return Err(close(1013, "the database is unavailable; reconnect shortly"));
                }
                Err(Failure::Auth(e)) => {
                    let reason = format!("Forbidden: {e}");
                    return Err(refuse_init(self.protocol, socket, 4403, reason).await);
                }
                Err(Failure::Limited(r)) => {
                    return Err(refuse_init(self.protocol, socket, 4429, r.message).await);
                }
            },
            None if self.caller.is_some() => {}
            None => {
                return Err(close(
                    4403,
                    "Forbidden: send {\"Authorization\": \"Bearer <API key or JWT>\"} in connection_init",
                ))
            }
        }
        if let Some(caller) = &self.caller {
            match self.state.app.limits.socket(caller).await {
                Ok(slot) => self.socket_slot = Some(slot),
                Err(r) => return Err(refuse_init(self.protocol, socket, 4429, r.message).await),
            }
        }
        self.acked = true;
        let ack = match self.protocol {
            Protocol::TransportWs => r#"{"type":"connection_ack"}"#,
            Protocol::Legacy => r#"{"type":"connection_ack"}"#,
        };
        send(socket, ack.into())
            .await
            .map_err(|_| close(1011, "write failed"))?;
        if self.protocol == Protocol::Legacy {
            let _ = send(socket, r#"{"type":"ka"}"#.into()).await;
        }
        Ok(())
    }

    /// A `ping` whose payload carries a new `Authorization` replaces the connection's
    /// credentials, for the same tenant and role (a token about to expire is refreshed without
    /// reconnecting). A payload without one is just a ping.
    async fn refresh(&mut self, payload: &Value) -> Result<(), Close> {
        let Some(token) = token_from_payload(payload) else {
            return Ok(());
        };
        if !self.acked {
            return Err(close(4401, "Unauthorized"));
        }
        let new = authenticate_from(&self.state.app, &token, self.addr)
            .await
            .map_err(|e| match e {
                Failure::Auth(e) => close(
                    4403,
                    format!("Forbidden: the refreshed credentials failed: {e}"),
                ),
                Failure::Limited(r) => close(4429, r.message),
            })?;
        let same = self
            .caller
            .as_ref()
            .is_some_and(|old| old.tenant_id == new.tenant_id && old.role == new.role);
        if !same {
            return Err(close(
                4403,
                "Forbidden: a refreshed token must be for the same tenant and role",
            ));
        }
        self.set_caller(new);
        Ok(())
    }

    async fn on_subscribe(&mut self, socket: &mut WebSocket, msg: &Value) -> Result<(), Close> {
        if !self.acked {
            return Err(close(4401, "Unauthorized"));
        }
        let id = msg
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
            .ok_or_else(|| invalid("a subscription needs an `id` of 1 to 128 characters"))?;
        let payload = msg
            .get("payload")
            .filter(|p| p.is_object())
            .cloned()
            .ok_or_else(|| invalid("a subscription needs a `payload` object"))?;
        if self.subs.contains_key(id) {
            return Err(close(4409, format!("Subscriber for {id} already exists")));
        }
        let id: Arc<str> = Arc::from(id);
        let watched = self.watch.as_ref().map(|w| (w.key_id(), w.is_revoked()));
        match key_revoked(&self.state.app, watched).await {
            Ok(false) => {}
            Ok(true) => return Err(close(4403, REVOKED)),
            Err(e) => {
                let error_id = uuid::Uuid::new_v4();
                tracing::error!(error_id = %error_id, error = ?e, "checking a WebSocket's API key failed");
                let errors = json!([{
                    "message": format!("internal error (error id {error_id})"),
                    "extensions": { "code": "INTERNAL", "errorId": error_id.to_string() },
                }]);
                return self
                    .deliver(socket, id, Out::Error(Arc::from(errors.to_string())))
                    .await
                    .map_err(|_| close(1011, "write failed"));
            }
        }
        let max = self.state.app.settings.ws_max_subscriptions;
        if self.subs.len() >= max {
            let errors = json!([{
                "message": format!("at most {max} operations may run at once on one connection"),
                "extensions": { "code": "RATE_LIMITED" },
            }]);
            return self
                .deliver(socket, id, Out::Error(Arc::from(errors.to_string())))
                .await
                .map_err(|_| close(1011, "write failed"));
        }
        // Each operation sent on the socket is a request of its key and tenant.
        if let Some(caller) = &self.caller {
            if let Err(r) = self.state.app.limits.request(caller).await {
                return self
                    .deliver(socket, id, refusal(&r))
                    .await
                    .map_err(|_| close(1011, "write failed"));
            }
        }
        let mut op = operation(self.state.clone(), self.caller.clone(), payload);
        self.generation += 1;
        let generation = self.generation;
        let mut outbox = self.outbox.clone();
        let key = id.clone();
        let task = tokio::spawn(async move {
            while let Some(out) = op.next().await {
                if outbox.send((key.clone(), generation, out)).await.is_err() {
                    break;
                }
            }
        });
        self.subs.insert(
            id,
            Running {
                generation,
                task: task.abort_handle(),
            },
        );
        Ok(())
    }

    /// Sends one of an operation's messages in the connection's protocol.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        id: Arc<str>,
        out: Out,
    ) -> Result<(), axum::Error> {
        let quoted = serde_json::to_string(&*id).unwrap_or_default();
        let text = match (self.protocol, out) {
            (Protocol::TransportWs, Out::Next(p)) => {
                format!(r#"{{"id":{quoted},"type":"next","payload":{p}}}"#)
            }
            (Protocol::Legacy, Out::Next(p)) => {
                format!(r#"{{"id":{quoted},"type":"data","payload":{p}}}"#)
            }
            (Protocol::TransportWs, Out::Error(e)) => {
                self.subs.remove(&*id);
                format!(r#"{{"id":{quoted},"type":"error","payload":{e}}}"#)
            }
            (Protocol::Legacy, Out::Error(e)) => {
                self.subs.remove(&*id);
                // The legacy protocol's error payload is one error object.
                let first = serde_json::from_str::<Value>(&e)
                    .ok()
                    .and_then(|v| v.get(0).cloned())
                    .unwrap_or(Value::Null);
                format!(r#"{{"id":{quoted},"type":"error","payload":{first}}}"#)
            }
            (_, Out::Complete) => format!(r#"{{"id":{quoted},"type":"complete"}}"#),
        };
        send(socket, text).await
    }
}

/// Refuses a `connection_init` with a close code and reason (told first with `connection_error`
/// on the legacy protocol, whose clients read that).
async fn refuse_init(
    protocol: Protocol,
    socket: &mut WebSocket,
    code: u16,
    reason: String,
) -> Close {
    if protocol == Protocol::Legacy {
        let _ = send(
            socket,
            json!({"type": "connection_error", "payload": {"message": reason}}).to_string(),
        )
        .await;
    }
    close(code, reason)
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(Utf8Bytes::from(text))).await
}

/// A rate limit's refusal of one operation.
fn refusal(r: &Refusal) -> Out {
    Out::Error(Arc::from(json!([r.to_json()]).to_string()))
}

/// One operation sent on the socket, charged to the caller's cost budget: a subscription (one of
/// the key's capped subscriptions) through the shared live groups, anything else executed once;
/// then `complete`.
fn operation(state: HttpState, caller: Option<Caller>, payload: Value) -> BoxStream<'static, Out> {
    stream::once(async move {
        let params = match Params::from_json(payload) {
            Ok(p) => p,
            Err(msg) => return refused("BAD_USER_INPUT", &msg),
        };
        // The big futures are boxed so that the finished stage costs a subscription nothing.
        let mut request = match Box::pin(state.documents.resolve(params, caller.as_ref())).await {
            Ok(r) => r,
            Err(e) => {
                return stream::iter([Out::Error(Arc::from(json!([e.to_json()]).to_string()))])
                    .boxed()
            }
        };
        request = request.data(CostCharge::new());
        match (operation_type(&mut request), caller) {
            (Some(OperationType::Subscription), Some(caller)) => {
                let slot = match state.app.limits.subscription(&caller).await {
                    Ok(slot) => slot,
                    Err(r) => return stream::iter([refusal(&r)]).boxed(),
                };
                state
                    .live
                    .subscribe(caller, request)
                    .map(move |item| {
                        // The place is given back when the subscription's stream is dropped.
                        let _held = &slot;
                        Out::from(item)
                    })
                    .boxed()
            }
            (_, caller) => {
                let app = &state.app;
                request = request.data(Loaders::new(&app.store, app.settings.loader_delay, true));
                if let Some(c) = caller {
                    request = request.data(c);
                }
                let resp =
                    Box::pin(crate::graphql::execute_bounded(&state.schema, app, request)).await;
                let out = if is_request_error(&resp) {
                    Out::Error(Arc::from(
                        serde_json::to_string(&resp.errors).unwrap_or_default(),
                    ))
                } else {
                    Out::Next(Arc::from(result_json(&resp)))
                };
                stream::iter([out]).boxed()
            }
        }
    })
    .flatten()
    .chain(stream::iter([Out::Complete]))
    .boxed()
}

fn refused(code: &str, message: &str) -> BoxStream<'static, Out> {
    let errors = json!([{ "message": message, "extensions": { "code": code } }]);
    stream::iter([Out::Error(Arc::from(errors.to_string()))]).boxed()
}
