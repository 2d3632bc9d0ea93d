//! Database notifications (Postgres `LISTEN`/`NOTIFY`): one listening connection per process,
//! fanned out in process. Triggers send them from inside the transactions that make the changes
//! (`migrations::m20261205_000001_notifications`), so a notice arrives only once its change is
//! committed: outbox rows written, events sequenced (with the new last position), jobs of the
//! embedded queue due sooner, API keys revoked (with the key's id). The roles wait on them instead
//! of polling; what becomes due by time alone (a lease that runs out, a delay that ends, an outbox
//! row's retry) they compute and sleep until.
//!
//! A notice sent while nobody listens is lost. So the [`Link`] says whether notices are being
//! received: while it is not up, consumers poll (as they do on SQLite, which sends none) and the
//! API-key cache is bypassed; each time the listener (re)connects, the generation changes and
//! every waiting role runs one round at once, since it may have missed something. A heartbeat (a
//! notice the listener sends itself through the pool, every `heartbeat`) finds a connection that
//! died without the socket noticing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use migrations::{EVENTS_CHANNEL, JOBS_CHANNEL, KEYS_CHANNEL, OUTBOX_CHANNEL};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Store;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listener waits for its own heartbeat to come back.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Revoked keys kept for receivers that fall behind (they then forget every key).
const KEYS_BUFFER: usize = 1024;

/// Whether this process receives database notifications right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The database sends none (SQLite): poll.
    Unsupported,
    /// Not listening (not started, connecting, or reconnecting): notices may be missed.
    Down,
    /// Listening. `generation` counts the connections made so far: when it changes, notices sent
    /// in between may have been lost.
    Up { generation: u64 },
}

impl Link {
    pub fn is_up(self) -> bool {
        matches!(self, Link::Up { .. })
    }
}

/// The process's view of the database's notifications, shared by every role through the
/// [`Store`].
pub struct Notifications {
    link: watch::Sender<Link>,
    generations: AtomicU64,
    outbox: Notify,
    /// Outbox rows committed whose notice is left to this process (submissions): one `NOTIFY`
    /// is sent for all those committed before it goes out.
    deferred_outbox: Notify,
    jobs: Notify,
    events: watch::Sender<i64>,
    keys: broadcast::Sender<Uuid>,
    /// The last heartbeat that came back.
    echo: watch::Sender<u64>,
    started: AtomicBool,
}

impl Notifications {
    pub(super) fn new(backend: DbBackend) -> Self {
        let link = if backend == DbBackend::Postgres {
            Link::Down
        } else {
            Link::Unsupported
        };
        Self {
            link: watch::channel(link).0,
            generations: AtomicU64::new(0),
            outbox: Notify::new(),
            deferred_outbox: Notify::new(),
            jobs: Notify::new(),
            events: watch::channel(0).0,
            keys: broadcast::channel(KEYS_BUFFER).0,
            echo: watch::channel(0).0,
            started: AtomicBool::new(false),
        }
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Changes whenever the listener connects or loses its connection.
    pub fn watch_link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// Notified (`notify_one`, so a notice that comes while nobody waits is kept for the next
    /// wait) when outbox rows were committed, and whenever the link changes.
    pub fn outbox(&self) -> &Notify {
        &self.outbox
    }

    /// Notified (`notify_waiters`: register with `notified()` before looking) when a job of the
    /// embedded queue became due sooner, and whenever the link changes.
    pub fn jobs(&self) -> &Notify {
        &self.jobs
    }

    /// The last event position a notice announced: every position up to it is committed.
    pub fn events(&self) -> watch::Receiver<i64> {
        self.events.subscribe()
    }

    /// The ids of API keys revoked (or changed, or deleted) since subscribing, on any instance.
    /// A receiver that lags must assume any key may have been revoked.
    pub fn keys(&self) -> broadcast::Receiver<Uuid> {
        self.keys.subscribe()
    }

    /// Asks for an outbox notice for rows just committed without one (see
    /// [`Store::send_deferred_notices`]); notices asked for while one is being sent are sent
    /// together, once, after it.
    pub(super) fn defer_outbox_notice(&self) {
        self.deferred_outbox.notify_one();
    }

    fn set_link(&self, link: Link) {
        self.link.send_replace(link);
        // Waiting roles look again: after a reconnect for what they may have missed, after a
        // loss to start polling.
        self.outbox.notify_one();
        self.jobs.notify_waiters();
    }

    fn set_up(&self) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.set_link(Link::Up { generation });
        generation
    }

    fn set_down(&self) {
        if self.link().is_up() {
            self.set_link(Link::Down);
        }
    }

    fn dispatch(&self, channel: &str, payload: &str, ping_channel: &str) {
        match channel {
            OUTBOX_CHANNEL => self.outbox.notify_one(),
            JOBS_CHANNEL => self.jobs.notify_waiters(),
            EVENTS_CHANNEL => match payload.parse::<i64>() {
                Ok(seq) => raise(&self.events, seq),
                Err(_) => tracing::warn!(payload, "unreadable event notification"),
            },
            KEYS_CHANNEL => match Uuid::parse_str(payload) {
                Ok(id) => {
                    // Nobody subscribed is fine: nothing on this instance caches keys.
                    let _ = self.keys.send(id);
                }
                Err(_) => tracing::warn!(payload, "unreadable API key notification"),
            },
            c if c == ping_channel => {
                if let Ok(n) = payload.parse::<u64>() {
                    raise(&self.echo, n);
                }
            }
            other => tracing::debug!(channel = other, "notification on an unknown channel"),
        }
    }
}

fn raise<T: Ord + Copy>(value: &watch::Sender<T>, to: T) {
    value.send_if_modified(|v| {
        let higher = to > *v;
        if higher {
            *v = to;
        }
        higher
    });
}

impl Store {
    /// This process's notifications (on SQLite, a link that is never up).
    pub fn notifications(&self) -> &Arc<Notifications> {
        &self.notifications
    }

    /// Sends the outbox notices submissions leave to the process, until `stop`. A submission's
    /// transaction sends none itself: Postgres serialises the commits of notifying transactions
    /// on one lock held through the commit's WAL flush, which would cap submissions at one flush
    /// each. Instead the process sends one `NOTIFY` (a transaction of its own, after the
    /// submissions' commits) for every submission committed before it, at most one at a time.
    /// Should the process die in between, the relay's fallback round finds the rows.
    async fn send_deferred_notices(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.notifications.deferred_outbox.notified() => {}
                _ = stop.cancelled() => return,
            }
            let sent = self
                .db
                .execute_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT pg_notify('{OUTBOX_CHANNEL}', '')"),
                ))
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "sending an outbox notice failed; the relay's fallback round finds the rows");
            }
        }
    }

    /// Starts listening, on Postgres (once per store; later calls do nothing), until `stop`, with
    /// a heartbeat every `heartbeat`. Returns once the first connection attempt is over, so that
    /// the roles start with notifications live, or knowing they are not (they are then retried in
    /// the background, with backoff).
    pub async fn listen(&self, heartbeat: Duration, stop: CancellationToken) {
        if !self.is_postgres() || self.notifications.started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(self.clone().send_deferred_notices(stop.clone()));
        let options = (*self.db.get_postgres_connection_pool().connect_options()).clone();
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(listen_loop(
            self.clone(),
            options,
            heartbeat.max(Duration::from_millis(100)),
            stop,
            first_tx,
        ));
        let _ = first_rx.await;
    }

    /// Sends the listener its own heartbeat, through the pool as every other notice travels.
    async fn send_heartbeat(&self, channel: &str, n: u64) -> anyhow::Result<()> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [channel.into(), n.to_string().into()],
            ))
            .await
            .context("sending the notification heartbeat")?;
        Ok(())
    }
}

/// Keeps one listening connection until `stop`: connect, `LISTEN`, dispatch, and on a loss
/// reconnect with exponential backoff (reset once a connection was established).
async fn listen_loop(
    store: Store,
    options: PgConnectOptions,
    heartbeat: Duration,
    stop: CancellationToken,
    first: oneshot::Sender<()>,
) {
    let notifications = store.notifications.clone();
    // The heartbeat has a channel of its own, so that no other process hears it.
    let ping_channel = format!("voicegraph_ping_{}", Uuid::new_v4().simple());
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = listen_once(&store, &options, &ping_channel, heartbeat, &mut first) => outcome,
        };
        let was_up = notifications.link().is_up();
        notifications.set_down();
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        match outcome {
            Ok(()) => {
                tracing::warn!("database notification listener lost its connection; reconnecting")
            }
            Err(e) if was_up || failures == 0 => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "database notification listener failed; polling until it reconnects")
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), retry_in = ?backoff, "database notification listener still failing")
            }
        }
        if was_up {
            backoff = BACKOFF_MIN;
            failures = 0;
        } else {
            failures += 1;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    notifications.set_down();
    tracing::debug!("database notification listener stopped");
}

/// One connection: returns `Ok` when it is lost, `Err` when it could not be set up, failed, or
/// stopped bringing the heartbeat back.
async fn listen_once(
    store: &Store,
    options: &PgConnectOptions,
    ping_channel: &str,
    heartbeat: Duration,
    first: &mut Option<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let notifications = &store.notifications;
    // A pool of its own with one connection, so that listening takes nothing from the store's.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = tokio::time::timeout(CONNECT_TIMEOUT, PgListener::connect_with(&pool))
        .await
        .context("timed out connecting")?
        .context("connecting")?;
    // A lost connection is reported (`Ok(None)`), not silently replaced: the generation must
    // change with it.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        listener.listen_all([
            OUTBOX_CHANNEL,
            EVENTS_CHANNEL,
            JOBS_CHANNEL,
            KEYS_CHANNEL,
            ping_channel,
        ]),
    )
    .await
    .context("timed out sending LISTEN")?
    .context("LISTEN")?;
    store.count_statement();
    let generation = notifications.set_up();
    tracing::info!(generation, "listening for database notifications");
    if let Some(first) = first.take() {
        let _ = first.send(());
    }
    let receive = async {
        loop {
            match listener.try_recv().await.context("receiving")? {
                Some(n) => notifications.dispatch(n.channel(), n.payload(), ping_channel),
                None => return anyhow::Ok(()),
            }
        }
    };
    let check = check_heartbeat(store, ping_channel, heartbeat);
    tokio::select! {
        r = receive => r,
        r = check => r,
    }
}

/// Sends a heartbeat every `every` and fails when one does not come back in time.
async fn check_heartbeat(store: &Store, ping_channel: &str, every: Duration) -> anyhow::Result<()> {
    let mut echo = store.notifications.echo.subscribe();
    let mut sent = *echo.borrow();
    loop {
        tokio::time::sleep(every).await;
        sent += 1;
        store.send_heartbeat(ping_channel, sent).await?;
        tokio::time::timeout(ECHO_TIMEOUT, echo.wait_for(|n| *n >= sent))
            .await
            .context("the heartbeat did not come back")?
            .context("the heartbeat channel closed")?;
    }
}
