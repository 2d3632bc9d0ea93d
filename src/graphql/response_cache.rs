//! Answers to repeated queries, kept while the database has not changed (Postgres only).
//!
//! An answer is stored with the database snapshot it was computed in
//! (`pg_current_snapshot()`: which transactions had committed), and served again only while the
//! database reports that same snapshot: no transaction has committed anywhere since, on any
//! instance, so executing the query again would read the same rows and answer the same bytes.
//! There is no invalidation to send or to lose, and nothing is ever served stale: a write
//! committed before a request arrives changes the snapshot that request reads.
//!
//! An answer is stored only when the snapshot read before its execution equals the one read
//! after it (no commit happened while it ran, so every statement it made saw that snapshot),
//! when it has no error, is a query, and nothing in it depends on the clock or on anything
//! but the database: signed URLs and `viewer` mark their answers as not to be kept
//! ([`not_cacheable`]). Answers are keyed by everything that shapes them: the caller (tenant,
//! key or JWT subject, role), the document, the operation name and the variables. A hit is
//! still authenticated, rate limited and charged its cost like an execution; it costs one
//! statement, the snapshot, read once for all the requests waiting for one (a read that started
//! after each of them arrived).
//!
//! A query is first executed as usual; its second sighting stores it (the cache holds only
//! what is asked again), and from its third it is served while the database stays as it was.
//! Memory is bounded by `VOICEGRAPH_RESPONSE_CACHE_MB` (least recently used answers leave
//! first; 0 turns the cache off).

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::Context;
use lru::LruCache;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::services::auth::Caller;
use crate::store::Store;

/// What an answer is keyed by.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    tenant: Option<Uuid>,
    key_id: Option<Uuid>,
    subject: Option<String>,
    role: &'static str,
    platform_admin: bool,
    query: String,
    operation: Option<String>,
    variables: String,
}

impl Key {
    pub fn new(caller: Option<&Caller>, request: &async_graphql::Request) -> Self {
        Self {
            tenant: caller.map(|c| c.tenant_id),
            key_id: caller.and_then(|c| c.key_id),
            subject: caller.and_then(|c| c.subject.clone()),
            role: caller.map_or("", |c| c.role.as_str()),
            platform_admin: caller.is_some_and(|c| c.platform_admin),
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables: serde_json::to_string(&request.variables).unwrap_or_default(),
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn bytes(&self) -> usize {
        self.query.len()
            + self.variables.len()
            + self.subject.as_ref().map_or(0, String::len)
            + self.operation.as_ref().map_or(0, String::len)
            + std::mem::size_of::<Self>()
    }
}

/// A kept answer.
pub struct Entry {
    snapshot: Arc<str>,
    /// The response body, as it was answered.
    pub body: Arc<str>,
    /// Its cost, charged again to every caller it is served to.
    pub complexity: usize,
    /// The operation's name, for the metrics and the access log.
    pub operation: Option<String>,
}

/// What the cache knows of a key.
pub enum Found {
    /// A kept answer, to be served if the database is still at its snapshot.
    Entry(Arc<Entry>),
    /// Executed once before: this execution may be kept.
    Seen,
    /// Never seen (now remembered).
    New,
}

/// Set in a request's data; resolvers whose answers depend on something besides the database
/// mark it (see [`not_cacheable`]).
#[derive(Clone, Default)]
pub struct Hint(Arc<AtomicBool>);

impl Hint {
    pub fn cacheable(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

/// Keeps the answer of the request being executed from being stored: it depends on the clock
/// (a signed URL, an expiry) or on something besides the database.
pub fn not_cacheable(ctx: &Context<'_>) {
    if let Some(h) = ctx.data_opt::<Hint>() {
        h.0.store(true, Ordering::Relaxed);
    }
}

struct Entries {
    map: LruCache<Key, Arc<Entry>>,
    bytes: usize,
    /// Fingerprints of queries executed once: the second sighting reads a snapshot to store.
    seen: LruCache<u64, ()>,
}

pub struct ResponseCache {
    clock: Arc<SnapshotClock>,
    entries: Mutex<Entries>,
    capacity: usize,
    max_entry: usize,
    metrics: prometheus::IntCounterVec,
}

/// Queries remembered as seen once.
const SEEN: usize = 16_384;

impl ResponseCache {
    /// A cache of at most `capacity` bytes; `None` without a database that reports snapshots.
    pub fn new(
        store: &Store,
        capacity: usize,
        metrics: prometheus::IntCounterVec,
    ) -> Option<Arc<Self>> {
        if capacity == 0 || !store.is_postgres() {
            return None;
        }
        Some(Arc::new(Self {
            clock: Arc::new(SnapshotClock {
                store: store.clone(),
                state: Mutex::new(ClockState::default()),
            }),
            entries: Mutex::new(Entries {
                map: LruCache::unbounded(),
                bytes: 0,
                seen: LruCache::new(NonZeroUsize::new(SEEN).expect("nonzero")),
            }),
            capacity,
            max_entry: (capacity / 16).max(1),
            metrics,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, outcome: &str) {
        self.metrics.with_label_values(&[outcome]).inc();
    }

    /// What is known of `key`.
    pub fn find(&self, key: &Key) -> Found {
        let mut e = self.lock();
        if let Some(entry) = e.map.get(key) {
            return Found::Entry(entry.clone());
        }
        let fingerprint = key.fingerprint();
        let seen = e.seen.get(&fingerprint).is_some();
        if !seen {
            e.seen.put(fingerprint, ());
        }
        drop(e);
        if seen {
            self.count("miss");
            return Found::Seen;
        }
        self.count("miss");
        Found::New
    }

    /// The database's snapshot, read after this call (`None` when it could not be read).
    pub async fn now(&self) -> Option<Arc<str>> {
        self.clock.read().await
    }

    /// Whether a kept answer is the database's answer at `now`; counts the lookup.
    pub fn current(&self, entry: &Entry, now: &str) -> bool {
        let current = *entry.snapshot == *now;
        self.count(if current { "hit" } else { "stale" });
        current
    }

    /// Keeps an answer computed after `before` was read, if the database is still at `before`.
    pub async fn store(
        &self,
        key: Key,
        before: Arc<str>,
        body: Arc<str>,
        complexity: usize,
        operation: Option<String>,
    ) {
        let size = key.bytes() + body.len() + std::mem::size_of::<Entry>();
        if size > self.max_entry {
            return;
        }
        match self.clock.read().await {
            Some(after) if after == before => {}
            _ => return,
        }
        let entry = Arc::new(Entry {
            snapshot: before,
            body,
            complexity,
            operation,
        });
        let mut e = self.lock();
        if let Some((old_key, old)) = e.map.push(key, entry) {
            e.bytes -= old_key.bytes() + old.body.len() + std::mem::size_of::<Entry>();
        }
        e.bytes += size;
        while e.bytes > self.capacity {
            let Some((k, v)) = e.map.pop_lru() else { break };
            e.bytes -= k.bytes() + v.body.len() + std::mem::size_of::<Entry>();
        }
        drop(e);
        self.count("stored");
    }

    /// The bytes kept now (keys and answers).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[derive(Default)]
struct ClockState {
    reading: bool,
    waiters: Vec<oneshot::Sender<Option<Arc<str>>>>,
}

/// Reads the database's snapshot for many requests at once: every waiter gets the result of a
/// read that started after it asked (the waiters that arrive during a read wait for the next).
struct SnapshotClock {
    store: Store,
    state: Mutex<ClockState>,
}

impl SnapshotClock {
    /// The current snapshot, or `None` when it could not be read.
    async fn read(self: &Arc<Self>) -> Option<Arc<str>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.waiters.push(tx);
            !std::mem::replace(&mut s.reading, true)
        };
        if start {
            // A task of its own, so that a request given up on does not strand the others.
            let me = self.clone();
            tokio::spawn(async move { me.run().await });
        }
        rx.await.ok().flatten()
    }

    async fn run(&self) {
        loop {
            let waiters = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if s.waiters.is_empty() {
                    s.reading = false;
                    return;
                }
                std::mem::take(&mut s.waiters)
            };
            let snapshot = match self.store.snapshot().await {
                Ok(s) => s.map(Arc::from),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the database snapshot");
                    None
                }
            };
            for w in waiters {
                let _ = w.send(snapshot.clone());
            }
        }
    }
}
