//! The instance's event hub: one ordered, gap-free copy of the global event sequence for every
//! subscriber of this process. It reads the live feed, fills any gap (lag, a lost message, events
//! another process published, positions freed by deleted calls) with one database read per gap
//! for the whole instance, and broadcasts each position once, in order.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::domain::EventEnvelope;
use crate::state::AppState;

/// One step of the sequence: the positions in `(prev, seq]` are done, and `event` is the one at
/// `seq` if it still exists (the events of a deleted call leave holes).
#[derive(Debug)]
pub struct HubItem {
    pub prev: i64,
    pub seq: i64,
    pub event: Option<EventEnvelope>,
    /// Whether the event came on the live feed (else from the database, filling a gap).
    pub from_feed: bool,
}

struct Inner {
    position: i64,
    tx: broadcast::Sender<Arc<HubItem>>,
}

pub struct EventHub {
    inner: Mutex<Inner>,
}

impl EventHub {
    /// `capacity` items are kept for receivers that fall behind; beyond that they are told they
    /// lagged and read what they missed from the database.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self {
            inner: Mutex::new(Inner { position: 0, tx }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position up to which every event has been broadcast, and a receiver of every later
    /// step; taken together, so a joiner neither misses nor repeats a step.
    pub fn join(&self) -> (i64, broadcast::Receiver<Arc<HubItem>>) {
        let inner = self.lock();
        (inner.position, inner.tx.subscribe())
    }

    pub fn position(&self) -> i64 {
        self.lock().position
    }

    /// Sets the starting position (the database's last one); call once before serving.
    pub fn start_at(&self, position: i64) {
        let mut inner = self.lock();
        inner.position = position;
    }

    fn emit(&self, seq: i64, event: Option<EventEnvelope>, from_feed: bool) {
        let mut inner = self.lock();
        if seq <= inner.position {
            return;
        }
        let item = Arc::new(HubItem {
            prev: inner.position,
            seq,
            event,
            from_feed,
        });
        inner.position = seq;
        // No receivers is fine: nobody listens on this instance right now.
        let _ = inner.tx.send(item);
    }

    /// Reads `(position, upto]` from the database and broadcasts it, holes included.
    async fn fill(&self, state: &AppState, upto: i64) -> anyhow::Result<()> {
        let from = self.position();
        if upto <= from {
            return Ok(());
        }
        for e in state.store.events_between_all(from, upto).await? {
            let seq = e.seq;
            self.emit(seq, Some(e), false);
        }
        self.emit(upto, None, false);
        state.metrics.hub_gap_reads.inc();
        Ok(())
    }
}

/// Listens to the feed, then reads the last committed position and starts the hub there (in
/// that order, so that nothing published in between is missed). Call before serving; hand the
/// receiver to [`run`].
pub async fn start(state: &AppState) -> anyhow::Result<broadcast::Receiver<Arc<EventEnvelope>>> {
    let live = state.feed.subscribe();
    let top = state.store.max_seq().await?;
    state.hub.start_at(top);
    Ok(live)
}

/// Runs the hub until `shutdown`: the live feed in order, gaps from the database, and the
/// instance's watermark for what the feed never brought.
pub async fn run(
    state: AppState,
    mut live: broadcast::Receiver<Arc<EventEnvelope>>,
    shutdown: CancellationToken,
) {
    let hub = state.hub.clone();
    let mut watermark = state.watermark.subscribe();
    loop {
        let target = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = live.recv() => match received {
                Ok(e) => {
                    let position = hub.position();
                    if e.seq <= position {
                        continue;
                    }
                    if e.seq == position + 1 {
                        hub.emit(e.seq, Some(Arc::unwrap_or_clone(e)), true);
                        continue;
                    }
                    // A jump ahead: fill the gap, but never past what the database holds, so a
                    // stray message (another deployment on the same channel) moves nothing.
                    Target::UpTo(e.seq)
                }
                Err(RecvError::Lagged(_)) => Target::Top,
                Err(RecvError::Closed) => return,
            },
            changed = watermark.changed() => match changed {
                Ok(()) => {
                    let top = *watermark.borrow_and_update();
                    if top <= hub.position() {
                        continue;
                    }
                    Target::Committed(top)
                }
                Err(_) => return,
            },
        };
        let result = async {
            let upto = match target {
                Target::Committed(n) => n,
                Target::UpTo(n) => n.min(state.store.max_seq().await?),
                Target::Top => state.store.max_seq().await?,
            };
            hub.fill(&state, upto).await
        }
        .await;
        if let Err(e) = result {
            // The next live event or watermark tick tries again.
            tracing::warn!(error = %format!("{e:#}"), "filling the event hub from the database failed");
        }
    }
}

enum Target {
    /// A position known to be committed (the watermark read it from the database).
    Committed(i64),
    /// A position seen on the feed: committed only as far as the database says.
    UpTo(i64),
    /// Wherever the database is now.
    Top,
}
