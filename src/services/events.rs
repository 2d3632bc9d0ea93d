//! Call events: written with an outbox row in the transaction of the change (by the store),
//! sequenced by the relay in commit order, and streamed to subscribers — replay from the
//! database, then live, with gaps (lag, lost messages) filled from the database so that no
//! subscriber misses or repeats one.

use std::time::Duration;

use async_stream::try_stream;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::EventEnvelope;
use crate::state::AppState;

pub use crate::domain::EventFilter;
pub use crate::store::{DEST_BLOB_DELETE, DEST_EVENTS, DEST_JOBS};

/// What a subscriber watches, once its arguments are checked.
#[derive(Debug, Clone)]
pub struct Watch {
    pub tenant: Uuid,
    pub filter: EventFilter,
    /// Replay every event after this position first.
    pub after: Option<i64>,
    /// Without `after`, replay the call's own events first (a call has few), so that
    /// subscribe-then-act never loses an event.
    pub replay_call: bool,
}

/// A subscriber's stream on its own (without a shared group): what `watch` asks to replay, then
/// the instance hub's events from the position it joined at.
pub fn stream(
    state: AppState,
    watch: Watch,
) -> impl Stream<Item = anyhow::Result<EventEnvelope>> + Send + 'static {
    try_stream! {
        let (position, mut hub) = state.hub.join();
        let from = watch.after.or(watch.replay_call.then_some(0));
        if let Some(from) = from.filter(|f| *f < position) {
            for e in state.store.events_between(watch.tenant, &watch.filter, from, position).await? {
                yield e;
            }
        }
        let mut last = position.max(watch.after.unwrap_or(0));
        loop {
            let item = match hub.recv().await {
                Ok(item) => item,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            };
            if item.seq <= last {
                continue;
            }
            if item.prev > last {
                for e in state.store.events_between(watch.tenant, &watch.filter, last, item.prev).await? {
                    yield e;
                }
            }
            if let Some(e) = &item.event {
                if watch.filter.matches(watch.tenant, e) {
                    yield e.clone();
                }
            }
            last = item.seq;
        }
    }
}

/// Publishes this instance's view of the last committed position, so subscribers notice events
/// that never reached them live (another process's relay, a message lost by the bus). On
/// Postgres the database's notices carry each new position, so nothing is read while they come
/// (only once at start, when the listener reconnects, and every `VOICEGRAPH_NOTIFY_FALLBACK_SECS`);
/// without them (SQLite, or while the listener reconnects) the position is read `every`.
pub async fn run_watermark(state: AppState, every: Duration, shutdown: CancellationToken) {
    let notifications = state.store.notifications().clone();
    let mut link = notifications.watch_link();
    let mut announced = notifications.events();
    let raise = |top: i64| {
        state.watermark.send_if_modified(|v| {
            let changed = top > *v;
            *v = (*v).max(top);
            changed
        });
    };
    let mut read = true;
    loop {
        if read {
            match state.store.max_seq().await {
                Ok(top) => raise(top),
                Err(e) => tracing::warn!(error = %e, "reading the event watermark failed"),
            }
        }
        let wait = if link.borrow_and_update().is_up() {
            state.settings.notify_fallback
        } else {
            every
        };
        read = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Connected (notices may have been missed) or lost (poll from now on): read now.
            changed = link.changed() => match changed {
                Ok(()) => true,
                Err(_) => return,
            },
            changed = announced.changed() => match changed {
                Ok(()) => {
                    raise(*announced.borrow_and_update());
                    false
                }
                Err(_) => return,
            },
            _ = tokio::time::sleep(wait) => true,
        };
    }
}

/// The sequenced events of some calls of a tenant (for the `events` field through a
/// DataLoader), oldest first.
pub async fn events_of_calls(
    store: &crate::store::Store,
    tenant: Uuid,
    call_ids: &[Uuid],
) -> anyhow::Result<Vec<EventEnvelope>> {
    store.events_of_calls(tenant, call_ids).await
}
