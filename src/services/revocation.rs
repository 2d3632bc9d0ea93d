//! Revocation reaching live connections. Every WebSocket and SSE stream authenticated with an API
//! key holds a [`KeyWatch`]. A key revoked on this instance ends its watches at once; on Postgres
//! so does the database's notice of a revocation on any other instance (sent from inside the
//! revoking transaction). Behind that, the instance checks the keys its connections use against
//! the database (one statement per 500 keys) every `VOICEGRAPH_REVOCATION_POLL_MS` while any is
//! open (an idle instance issues nothing), and ends the watches of keys revoked since: the only
//! way on SQLite, and the backstop for a notice missed while the listener reconnected.
//!
//! Why the database and not a notice through the event feed: the database is where revocation
//! is true, so no notice can be lost or announce a revocation that rolled back (Redis pub/sub
//! drops messages while an instance reconnects, and would need this check behind it anyway), and
//! it works the same with every backend, separate processes on the embedded stack included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::services::auth;
use crate::store::Store;

struct Watched {
    revoked: CancellationToken,
    holders: usize,
}

/// The API keys this instance's open connections use, and whether each still works.
pub struct Revocations {
    store: Store,
    interval: Duration,
    watched: Mutex<HashMap<Uuid, Watched>>,
    /// Wakes the checker when the first key is watched.
    wake: Notify,
}

/// Held by a connection for as long as it is open; [`KeyWatch::revoked`] completes when its key
/// is revoked.
pub struct KeyWatch {
    owner: Arc<Revocations>,
    key_id: Uuid,
    revoked: CancellationToken,
}

impl KeyWatch {
    /// Completes once the key is revoked.
    pub async fn revoked(&self) {
        self.revoked.cancelled().await
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }

    pub fn key_id(&self) -> Uuid {
        self.key_id
    }
}

/// Completes when the watched key is revoked; never without a watch (a JWT caller).
pub async fn until_revoked(watch: Option<&KeyWatch>) {
    match watch {
        Some(w) => w.revoked().await,
        None => std::future::pending().await,
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut watched = self.owner.lock();
        if let Some(w) = watched.get_mut(&self.key_id) {
            w.holders -= 1;
            if w.holders == 0 {
                watched.remove(&self.key_id);
            }
        }
    }
}

impl Revocations {
    pub fn new(store: Store, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            interval,
            watched: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Watched>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `key_id` for a connection. A key already found revoked gives a watch that has
    /// completed.
    pub fn watch(self: &Arc<Self>, key_id: Uuid) -> KeyWatch {
        let mut watched = self.lock();
        let first = watched.is_empty();
        let w = watched.entry(key_id).or_insert_with(|| Watched {
            revoked: CancellationToken::new(),
            holders: 0,
        });
        w.holders += 1;
        let revoked = w.revoked.clone();
        drop(watched);
        if first {
            self.wake.notify_one();
        }
        KeyWatch {
            owner: self.clone(),
            key_id,
            revoked,
        }
    }

    /// The key was revoked, by this instance or (as the database notified) another: its
    /// connections here end now, without waiting for the next check.
    pub fn revoked_here(&self, key_id: Uuid) {
        if let Some(w) = self.lock().get(&key_id) {
            w.revoked.cancel();
        }
    }

    /// How many distinct keys are watched.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    /// One check: ends the watches of every watched key that no longer works. Returns how many
    /// keys it found revoked.
    pub async fn check(&self) -> anyhow::Result<usize> {
        let ids: Vec<Uuid> = self
            .lock()
            .iter()
            .filter(|(_, w)| !w.revoked.is_cancelled())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let active = auth::active_keys(&self.store, &ids).await?;
        let watched = self.lock();
        let mut revoked = 0;
        for id in ids.iter().filter(|id| !active.contains(id)) {
            if let Some(w) = watched.get(id) {
                w.revoked.cancel();
                revoked += 1;
            }
        }
        if revoked > 0 {
            tracing::info!(
                keys = revoked,
                "closing the connections of revoked API keys"
            );
        }
        Ok(revoked)
    }

    /// Until `shutdown`: ends the watches of keys the database notifies revoked, and checks the
    /// watched keys every interval while there are any.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut notified = self.store.notifications().keys();
        let mut next_check: Option<tokio::time::Instant> = None;
        loop {
            if next_check.is_none() && self.watched() > 0 {
                next_check = Some(tokio::time::Instant::now() + self.interval);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // `notify_one` keeps a permit, so a watch taken since the check is not missed.
                _ = self.wake.notified(), if next_check.is_none() => continue,
                notice = notified.recv() => {
                    match notice {
                        Ok(key) => self.revoked_here(key),
                        // Some notices were dropped: check every watched key now.
                        Err(RecvError::Lagged(_)) => {
                            next_check = Some(tokio::time::Instant::now());
                        }
                        Err(RecvError::Closed) => break,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_check.unwrap_or_else(tokio::time::Instant::now)), if next_check.is_some() => {}
            }
            next_check = None;
            if let Err(e) = self.check().await {
                tracing::warn!(error = %format!("{e:#}"), "checking API keys for revocation failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn revocations() -> Arc<Revocations> {
        let store = Store::connect(crate::store::ConnectSettings {
            url: "sqlite::memory:".into(),
            max_connections: 2,
            on_statement: None,
        })
        .await
        .unwrap();
        Revocations::new(store, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn watches_are_counted_per_key_and_released_on_drop() {
        let r = revocations().await;
        let key = Uuid::new_v4();
        let a = r.watch(key);
        let b = r.watch(key);
        let other = r.watch(Uuid::new_v4());
        assert_eq!(r.watched(), 2);
        drop(a);
        assert_eq!(r.watched(), 2);
        drop(b);
        assert_eq!(r.watched(), 1);
        drop(other);
        assert_eq!(r.watched(), 0);
    }

    #[tokio::test]
    async fn revoking_here_ends_every_watch_of_the_key_and_no_other() {
        let r = revocations().await;
        let key = Uuid::new_v4();
        let a = r.watch(key);
        let b = r.watch(key);
        let other = r.watch(Uuid::new_v4());
        r.revoked_here(key);
        a.revoked().await;
        b.revoked().await;
        assert!(!other.is_revoked());
        // A connection that authenticated just before the revocation is ended too.
        let late = r.watch(key);
        assert!(late.is_revoked());
    }
}
