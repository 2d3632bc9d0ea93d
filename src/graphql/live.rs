//! Live subscriptions shared across subscribers. Subscribers of one tenant and role that watch
//! the same document with the same variables (cursors aside) form a group; the group executes
//! the selection once per event and hands every member the same serialized result, so the cost
//! of an event grows with the number of distinct subscriptions, not of subscribers. A member
//! replays what it asked for from the database (its cursor, or a call's own history) with its
//! own execution, then follows the group from the exact position it joined at. When traces are
//! exported, each event a group delivers is a span of that event's trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Request, Response, Value, Variables};
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use opentelemetry::KeyValue;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::AppSchema;
use crate::domain::EventEnvelope;
use crate::services::auth::{Caller, Role};
use crate::services::events::Watch as Spec;
use crate::services::live::HubItem;
use crate::state::AppState;
use crate::telemetry;

/// Where a subscription resolver's events come from: set in the request's data by whoever
/// executes it. Without one the resolver follows the instance's hub on its own.
pub trait EventSource: Send + Sync {
    fn open(&self, spec: Spec) -> BoxStream<'static, anyhow::Result<EventEnvelope>>;
}

#[derive(Clone)]
pub struct SourceSlot(pub Arc<dyn EventSource>);

/// One message for a subscriber.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// An execution result (`{"data": …}`, maybe with `errors`), serialized once for everyone.
    Next(Arc<str>),
    /// The operation was refused before it started (parse or validation errors): a JSON array
    /// of GraphQL errors. Nothing follows.
    Error(Arc<str>),
}

/// Serializes an execution result. A request error (refused before execution: no path on any
/// error and no data) has no `data` entry, as the GraphQL spec asks.
pub fn result_json(resp: &Response) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        errors: Option<serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        extensions: Option<&'a std::collections::BTreeMap<String, Value>>,
    }
    let request_error = is_request_error(resp);
    let errors = (!resp.errors.is_empty()).then(|| {
        let mut errors = serde_json::to_value(&resp.errors).unwrap_or_default();
        if request_error {
            // Refusals the executor itself makes (an unknown operation name) carry no code.
            for e in errors.as_array_mut().into_iter().flatten() {
                if e.pointer("/extensions/code").is_none() {
                    e["extensions"]["code"] = "BAD_USER_INPUT".into();
                }
            }
        }
        errors
    });
    let out = Out {
        data: (!request_error).then_some(&resp.data),
        errors,
        extensions: (!resp.extensions.is_empty()).then_some(&resp.extensions),
    };
    serde_json::to_string(&out).unwrap_or_else(|e| {
        tracing::error!(error = %e, "encoding a GraphQL response failed");
        r#"{"errors":[{"message":"internal error: the response could not be encoded","extensions":{"code":"INTERNAL"}}]}"#.into()
    })
}

/// Whether the response is a request error: nothing was executed.
pub fn is_request_error(resp: &Response) -> bool {
    resp.data == Value::Null
        && !resp.errors.is_empty()
        && resp.errors.iter().all(|e| e.path.is_empty())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    tenant: Uuid,
    role: Role,
    platform_admin: bool,
    query: String,
    operation_name: Option<String>,
    /// The variables as canonical JSON, without the cursor variable.
    variables: String,
}

enum GroupItem {
    Next {
        seq: i64,
        payload: Arc<str>,
    },
    /// The group's execution ended; its last result, if any, goes to every member.
    End(Option<Arc<str>>),
}

struct GroupInner {
    /// Every matching event up to here has been sent to members.
    position: i64,
    tx: broadcast::Sender<Arc<GroupItem>>,
    members: usize,
    ended: bool,
}

struct Group {
    key: GroupKey,
    caller: Caller,
    variables: Variables,
    inner: Mutex<GroupInner>,
    stop: CancellationToken,
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self) -> Request {
        let mut r = Request::new(self.key.query.clone()).variables(self.variables.clone());
        if let Some(op) = &self.key.operation_name {
            r = r.operation_name(op.clone());
        }
        r
    }

    /// Sends a result and moves the position past it, together.
    fn publish(&self, seq: i64, payload: Arc<str>) {
        let mut inner = self.lock();
        inner.position = seq;
        let _ = inner.tx.send(Arc::new(GroupItem::Next { seq, payload }));
    }

    fn advance(&self, seq: i64) {
        let mut inner = self.lock();
        inner.position = inner.position.max(seq);
    }

    fn end(&self, last: Option<Arc<str>>) {
        let mut inner = self.lock();
        inner.ended = true;
        let _ = inner.tx.send(Arc::new(GroupItem::End(last)));
    }
}

/// The live subscriptions of this instance.
pub struct Live {
    schema: AppSchema,
    state: AppState,
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
}

impl Live {
    pub fn new(schema: AppSchema, state: AppState) -> Arc<Self> {
        Arc::new(Self {
            schema,
            state,
            groups: Mutex::new(HashMap::new()),
        })
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, Arc<Group>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Distinct executions running now.
    pub fn group_count(&self) -> usize {
        self.groups().len()
    }

    /// Runs a subscription operation for `caller`: replay, then the group's results. The request
    /// must be a subscription (see [`operation_type`]).
    pub fn subscribe(self: &Arc<Self>, caller: Caller, mut request: Request) -> LiveStream {
        let key = group_key(&caller, &mut request);
        let join = Arc::new(Join {
            live: self.clone(),
            key,
            joined: Mutex::new(None),
        });
        let replay = self.schema.execute_stream(
            request
                .data(SourceSlot(join.clone() as Arc<dyn EventSource>))
                .data(caller),
        );
        LiveStream {
            inner: member(self.clone(), join, replay).boxed(),
        }
    }

    /// Joins the group of `key`, creating it when there is none; returns it with its position
    /// and a receiver of everything after that position.
    fn join(
        self: &Arc<Self>,
        key: GroupKey,
        caller: Caller,
        variables: Variables,
    ) -> (Arc<Group>, i64, broadcast::Receiver<Arc<GroupItem>>) {
        let mut groups = self.groups();
        if let Some(group) = groups.get(&key) {
            let mut inner = group.lock();
            if !inner.ended {
                inner.members += 1;
                let position = inner.position;
                let rx = inner.tx.subscribe();
                drop(inner);
                return (group.clone(), position, rx);
            }
        }
        let (position, hub) = self.state.hub.join();
        // Results kept for members slow to take them; one further behind replays from the
        // database.
        let (tx, rx) = broadcast::channel(self.state.settings.subscription_buffer.max(1));
        let group = Arc::new(Group {
            key: key.clone(),
            caller,
            variables,
            inner: Mutex::new(GroupInner {
                position,
                tx,
                members: 1,
                ended: false,
            }),
            stop: CancellationToken::new(),
        });
        groups.insert(key, group.clone());
        self.state
            .metrics
            .subscription_groups
            .set(groups.len() as i64);
        tokio::spawn(run_group(self.clone(), group.clone(), position, hub));
        (group, position, rx)
    }

    fn leave(&self, group: &Arc<Group>) {
        let mut groups = self.groups();
        let mut inner = group.lock();
        inner.members = inner.members.saturating_sub(1);
        if inner.members == 0 {
            drop(inner);
            Self::remove(&mut groups, group, &self.state);
            group.stop.cancel();
        }
    }

    /// Takes an ended group out of the map, so that the next subscriber starts a new one.
    fn forget(&self, group: &Arc<Group>) {
        Self::remove(&mut self.groups(), group, &self.state);
    }

    fn remove(groups: &mut HashMap<GroupKey, Arc<Group>>, group: &Arc<Group>, state: &AppState) {
        if groups
            .get(&group.key)
            .is_some_and(|g| Arc::ptr_eq(g, group))
        {
            groups.remove(&group.key);
            state.metrics.subscription_groups.set(groups.len() as i64);
        }
    }
}

/// The operation type the request will run, or `None` when the document does not parse or
/// names no operation (execution then reports why).
pub fn operation_type(request: &mut Request) -> Option<OperationType> {
    let name = request.operation_name.clone();
    let doc = request.parsed_query().ok()?;
    let op = match &name {
        Some(n) => doc
            .operations
            .iter()
            .find(|(o, _)| o.map(|o| o.as_str()) == Some(n.as_str())),
        None => {
            let mut ops = doc.operations.iter();
            let first = ops.next();
            if ops.next().is_some() {
                return None;
            }
            first
        }
    };
    op.map(|(_, o)| o.node.ty)
}

/// The name of the operation the request will run (the one asked for, or the document's only
/// one when it is named), for the access log; `None` for an anonymous or unparsable one.
pub fn operation_name(request: &mut Request) -> Option<String> {
    if let Some(name) = &request.operation_name {
        return Some(name.clone());
    }
    let doc = request.parsed_query().ok()?;
    let mut ops = doc.operations.iter();
    let (name, _) = ops.next()?;
    if ops.next().is_some() {
        return None;
    }
    name.map(|n| n.to_string())
}

/// The group a subscription belongs to: everything that shapes its results, except the value of
/// the root field's `after` variable (members replay their own cursor).
fn group_key(caller: &Caller, request: &mut Request) -> (GroupKey, Variables) {
    let mut variables = request.variables.clone();
    if let Some(cursor_var) = cursor_variable(request) {
        variables.remove(cursor_var.as_str());
    }
    let json = serde_json::to_string(&variables).unwrap_or_default();
    (
        GroupKey {
            tenant: caller.tenant_id,
            role: caller.role,
            platform_admin: caller.platform_admin,
            query: request.query.clone(),
            operation_name: request.operation_name.clone(),
            variables: json,
        },
        variables,
    )
}

/// The variable bound to the root field's `after` argument, if it is one.
fn cursor_variable(request: &mut Request) -> Option<String> {
    let name = request.operation_name.clone();
    let doc = request.parsed_query().ok()?;
    let op = doc
        .operations
        .iter()
        .find(|(o, _)| name.is_none() || o.map(|o| o.as_str()) == name.as_deref())?
        .1;
    let field = op
        .node
        .selection_set
        .node
        .items
        .iter()
        .find_map(|s| match &s.node {
            Selection::Field(f) => Some(f),
            _ => None,
        })?;
    field
        .node
        .arguments
        .iter()
        .find_map(|(arg, value)| match (&arg.node, &value.node) {
            (a, async_graphql_value::Value::Variable(v)) if a.as_str() == "after" => {
                Some(v.to_string())
            }
            _ => None,
        })
}

/// A member's link to its group, made when its resolver opens the source.
struct Join {
    live: Arc<Live>,
    key: (GroupKey, Variables),
    joined: Mutex<Option<Joined>>,
}

struct Joined {
    membership: Membership,
    rx: broadcast::Receiver<Arc<GroupItem>>,
    /// Results at or below this position were replayed (or are before the member's cursor).
    skip_upto: i64,
}

impl EventSource for Join {
    fn open(&self, spec: Spec) -> BoxStream<'static, anyhow::Result<EventEnvelope>> {
        let (group, position, rx) =
            self.live
                .join(self.key.0.clone(), self.group_caller(), self.key.1.clone());
        let from = spec.after.or(spec.replay_call.then_some(0));
        *self.joined.lock().unwrap_or_else(|e| e.into_inner()) = Some(Joined {
            membership: Membership::new(self.live.clone(), group),
            rx,
            skip_upto: position.max(spec.after.unwrap_or(0)),
        });
        match from {
            Some(from) if from < position => {
                self.live.state.metrics.subscription_replays.inc();
                replay(self.live.state.clone(), spec, from, position)
            }
            _ => stream::empty().boxed(),
        }
    }
}

impl Join {
    fn group_caller(&self) -> Caller {
        let k = &self.key.0;
        Caller {
            tenant_id: k.tenant,
            role: k.role,
            key_id: None,
            platform_admin: k.platform_admin,
            expires_at: None,
            subject: None,
        }
    }

    fn take(&self) -> Option<Joined> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The events of `spec` in `(from, upto]`, read from the database.
fn replay(
    state: AppState,
    spec: Spec,
    from: i64,
    upto: i64,
) -> BoxStream<'static, anyhow::Result<EventEnvelope>> {
    stream::once(async move {
        state
            .store
            .events_between(spec.tenant, &spec.filter, from, upto)
            .await
    })
    .flat_map(|r| match r {
        Ok(v) => stream::iter(v.into_iter().map(Ok)).boxed(),
        Err(e) => stream::once(async move { Err(e) }).boxed(),
    })
    .boxed()
}

/// A fixed range of a group's events, for a member that fell behind its group.
struct Range {
    state: AppState,
    from: i64,
    upto: i64,
}

impl EventSource for Range {
    fn open(&self, spec: Spec) -> BoxStream<'static, anyhow::Result<EventEnvelope>> {
        self.state.metrics.subscription_replays.inc();
        replay(self.state.clone(), spec, self.from, self.upto)
    }
}

/// The group's own source: the events its task feeds, one at a time.
struct Feed {
    spec: Mutex<Option<oneshot::Sender<Spec>>>,
    events: Mutex<Option<mpsc::Receiver<EventEnvelope>>>,
}

impl EventSource for Feed {
    fn open(&self, spec: Spec) -> BoxStream<'static, anyhow::Result<EventEnvelope>> {
        if let Some(tx) = self.spec.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(spec);
        }
        match self.events.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(rx) => tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(Ok)
                .boxed(),
            None => stream::empty().boxed(),
        }
    }
}

async fn run_group(
    live: Arc<Live>,
    group: Arc<Group>,
    start: i64,
    mut hub: broadcast::Receiver<Arc<HubItem>>,
) {
    let (spec_tx, spec_rx) = oneshot::channel();
    let (feed_tx, feed_rx) = mpsc::channel(1);
    let feed = Feed {
        spec: Mutex::new(Some(spec_tx)),
        events: Mutex::new(Some(feed_rx)),
    };
    let mut responses = live.schema.execute_stream(
        group
            .request()
            .data(SourceSlot(Arc::new(feed)))
            .data(group.caller.clone()),
    );
    let stop = group.stop.clone();
    let spec = tokio::select! {
        _ = stop.cancelled() => return,
        spec = spec_rx => spec.ok(),
        first = responses.next() => {
            // Refused before it started (the members' own executions report why).
            group.end(first.map(|r| Arc::from(result_json(&r))));
            live.forget(&group);
            return;
        }
    };
    let Some(spec) = spec else {
        group.end(None);
        live.forget(&group);
        return;
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = follow(&live, &group, &spec, start, &mut hub, &feed_tx, &mut responses) => {
            group.end(None);
            live.forget(&group);
        }
    }
}

/// Feeds the group's execution every matching event in order and publishes each result;
/// returns when the hub or the execution ends.
async fn follow(
    live: &Live,
    group: &Group,
    spec: &Spec,
    start: i64,
    hub: &mut broadcast::Receiver<Arc<HubItem>>,
    feed: &mpsc::Sender<EventEnvelope>,
    responses: &mut BoxStream<'static, Response>,
) {
    let mut last = start;
    loop {
        let item = match hub.recv().await {
            Ok(item) => item,
            // The next item tells how far behind this group is.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if item.seq <= last {
            continue;
        }
        if item.prev > last {
            let missed = match live
                .state
                .store
                .events_between(spec.tenant, &spec.filter, last, item.prev)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "a subscription group could not read the events it missed");
                    return;
                }
            };
            for e in missed {
                let seq = e.seq;
                let at = e.at;
                let span = delivery_span(group, &e, false);
                let Some(resp) = execute_one(feed, responses, e).instrument(span).await else {
                    return;
                };
                fanned_out(live, at);
                group.publish(seq, resp);
            }
            group.advance(item.prev);
        }
        match &item.event {
            Some(e) if spec.filter.matches(spec.tenant, e) => {
                let span = delivery_span(group, e, item.from_feed);
                let Some(resp) = execute_one(feed, responses, e.clone())
                    .instrument(span)
                    .await
                else {
                    return;
                };
                fanned_out(live, e.at);
                group.publish(item.seq, resp);
            }
            _ => group.advance(item.seq),
        }
        last = item.seq;
    }
}

/// The span of an event's delivery to a group's subscribers (its selection executed and the
/// result handed to them), continuing the trace context the event came with: the fan-out's or
/// the relay's when it came on the feed, the writer's (stored with the event) when it was read
/// from the database.
fn delivery_span(group: &Group, event: &EventEnvelope, from_feed: bool) -> tracing::Span {
    let span = tracing::info_span!("deliver event", event = event.id, seq = event.seq, kind = %event.kind, call = %event.call_id, tenant = %event.tenant_id);
    telemetry::continue_trace(&span, event.traceparent.as_deref());
    let subscribers = group.lock().members as i64;
    telemetry::set_attributes(
        &span,
        [
            KeyValue::new("voicegraph.subscribers", subscribers),
            KeyValue::new(
                "voicegraph.event_source",
                if from_feed { "feed" } else { "database" },
            ),
        ],
    );
    span
}

/// Records how long an event took to reach this instance's subscribers: measured before its
/// result is published, so that a subscriber that has it can see the measurement.
fn fanned_out(live: &Live, recorded: chrono::DateTime<chrono::Utc>) {
    let took = (chrono::Utc::now() - recorded).to_std().unwrap_or_default();
    live.state
        .metrics
        .event_fanout_seconds
        .observe(took.as_secs_f64());
}

/// Runs the group's selection on one event.
async fn execute_one(
    feed: &mpsc::Sender<EventEnvelope>,
    responses: &mut BoxStream<'static, Response>,
    event: EventEnvelope,
) -> Option<Arc<str>> {
    feed.send(event).await.ok()?;
    let resp = responses.next().await?;
    Some(Arc::from(result_json(&resp)))
}

/// A member's stream: its replay, then its group's results from where it joined.
fn member(
    live: Arc<Live>,
    join: Arc<Join>,
    mut replay: BoxStream<'static, Response>,
) -> impl futures::Stream<Item = LiveItem> + Send + 'static {
    async_stream::stream! {
        while let Some(resp) = replay.next().await {
            if join.joined.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                // The resolver refused before it opened a source: report and stop.
                if is_request_error(&resp) {
                    yield LiveItem::Error(Arc::from(
                        serde_json::to_string(&resp.errors).unwrap_or_default(),
                    ));
                } else {
                    yield LiveItem::Next(Arc::from(result_json(&resp)));
                }
                return;
            }
            yield LiveItem::Next(Arc::from(result_json(&resp)));
        }
        drop(replay);
        let Some(Joined { membership, mut rx, skip_upto }) = join.take() else {
            return;
        };
        let group = membership.group.clone();
        let mut last = skip_upto;
        loop {
            let item = match rx.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fallen behind the group's buffer: replay what was dropped from the
                    // database, then go on from the oldest result still buffered.
                    let Ok(next) = rx.recv().await else { return };
                    let upto = match &*next {
                        GroupItem::Next { seq, .. } => seq - 1,
                        GroupItem::End(_) => group.lock().position,
                    };
                    if upto > last {
                        let mut missed = live.schema.execute_stream(
                            group
                                .request()
                                .data(SourceSlot(Arc::new(Range {
                                    state: live.state.clone(),
                                    from: last,
                                    upto,
                                })))
                                .data(group.caller.clone()),
                        );
                        while let Some(resp) = missed.next().await {
                            yield LiveItem::Next(Arc::from(result_json(&resp)));
                        }
                        last = upto;
                    }
                    next
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match &*item {
                GroupItem::Next { seq, payload } => {
                    if *seq <= last {
                        continue;
                    }
                    last = *seq;
                    yield LiveItem::Next(payload.clone());
                }
                GroupItem::End(payload) => {
                    if let Some(p) = payload {
                        yield LiveItem::Next(p.clone());
                    }
                    return;
                }
            }
        }
    }
}

/// A member of a group: counted as a live subscription from the moment it joined, and leaving
/// the group when dropped.
struct Membership {
    live: Arc<Live>,
    group: Arc<Group>,
}

impl Membership {
    fn new(live: Arc<Live>, group: Arc<Group>) -> Self {
        live.state.metrics.subscriptions.inc();
        Self { live, group }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.live.state.metrics.subscriptions.dec();
        self.live.leave(&self.group);
    }
}

/// A subscriber's stream of messages.
pub struct LiveStream {
    inner: BoxStream<'static, LiveItem>,
}

impl futures::Stream for LiveStream {
    type Item = LiveItem;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<LiveItem>> {
        self.inner.poll_next_unpin(cx)
    }
}
