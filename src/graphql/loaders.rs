//! DataLoaders for nested lists, keyed by (tenant, call): a page of calls costs one query per
//! kind of nested list, not one per call. Each HTTP request gets its own caching set, which the
//! `calls` resolver primes for the whole page; subscriptions use a shared set without a cache, so
//! long-lived streams never see stale rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use uuid::Uuid;

use super::types::Segment;
use crate::domain::{AnalysisRecord, CallRecord, CategoryRecord, EventEnvelope};
use crate::services::{calls, events};
use crate::store::Store;

/// (tenant, id).
pub type Key = (Uuid, Uuid);

/// Groups keys by tenant so that every query stays inside one tenant.
fn by_tenant(keys: &[Key]) -> HashMap<Uuid, Vec<Uuid>> {
    let mut m: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (tenant, id) in keys {
        m.entry(*tenant).or_default().push(*id);
    }
    m
}

pub struct Loaders {
    pub segments: DataLoader<SegmentsLoader, HashMapCache>,
    pub events: DataLoader<EventsLoader, HashMapCache>,
    pub calls: DataLoader<CallLoader, HashMapCache>,
    pub analyses: DataLoader<AnalysesLoader, HashMapCache>,
    /// Keyed by (tenant, category id).
    pub categories: DataLoader<CategoryLoader, HashMapCache>,
}

impl Loaders {
    pub fn new(db: &Store, delay: Duration, cache: bool) -> Arc<Self> {
        fn make<L: Loader<Key>>(l: L, delay: Duration, cache: bool) -> DataLoader<L, HashMapCache> {
            let d = DataLoader::with_cache(l, tokio::spawn, HashMapCache::default()).delay(delay);
            d.enable_all_cache(cache);
            d
        }
        Arc::new(Self {
            segments: make(SegmentsLoader(db.clone()), delay, cache),
            events: make(EventsLoader(db.clone()), delay, cache),
            calls: make(CallLoader(db.clone()), delay, cache),
            analyses: make(AnalysesLoader(db.clone()), delay, cache),
            categories: make(CategoryLoader(db.clone()), delay, cache),
        })
    }
}

pub struct SegmentsLoader(pub Store);
pub struct EventsLoader(pub Store);
pub struct CallLoader(pub Store);
pub struct AnalysesLoader(pub Store);
pub struct CategoryLoader(pub Store);

impl Loader<Key> for SegmentsLoader {
    type Value = Vec<Segment>;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out: HashMap<Key, Vec<Segment>> = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for s in calls::segments_of_calls(&self.0, tenant, &ids)
                .await
                .map_err(Arc::new)?
            {
                out.entry((tenant, s.call_id)).or_default().push(Segment {
                    index: s.idx,
                    speaker: s.speaker,
                    channel: s.channel,
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    text: s.text,
                    sentiment: s.sentiment,
                    grounded: s.grounded,
                });
            }
        }
        Ok(out)
    }
}

impl Loader<Key> for EventsLoader {
    type Value = Vec<EventEnvelope>;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out: HashMap<Key, Vec<EventEnvelope>> = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for e in events::events_of_calls(&self.0, tenant, &ids)
                .await
                .map_err(Arc::new)?
            {
                out.entry((tenant, e.call_id)).or_default().push(e);
            }
        }
        Ok(out)
    }
}

impl Loader<Key> for CallLoader {
    type Value = Arc<CallRecord>;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for c in calls::calls_by_ids(&self.0, tenant, &ids)
                .await
                .map_err(Arc::new)?
            {
                out.insert((tenant, c.id), Arc::new(c));
            }
        }
        Ok(out)
    }
}

impl Loader<Key> for AnalysesLoader {
    type Value = Vec<AnalysisRecord>;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for (call, list) in self
                .0
                .analyses_of_calls(tenant, &ids)
                .await
                .map_err(Arc::new)?
            {
                out.insert((tenant, call), list);
            }
        }
        Ok(out)
    }
}

impl Loader<Key> for CategoryLoader {
    type Value = CategoryRecord;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for c in self
                .0
                .list_categories(tenant)
                .await
                .map_err(|e| Arc::new(anyhow::anyhow!("{e}")))?
            {
                if ids.contains(&c.id) {
                    out.insert((tenant, c.id), c);
                }
            }
        }
        Ok(out)
    }
}
