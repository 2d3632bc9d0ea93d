//! DataLoaders for nested lists, keyed by (tenant, call): a page of calls costs one query per
//! kind of nested list, not one per call. No cache, so live streams never see stale rows.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use super::types::Segment;
use crate::domain::EventEnvelope;
use crate::services::{calls, events};

type Key = (Uuid, Uuid);

/// Groups keys by tenant so that every query stays inside one tenant.
fn by_tenant(keys: &[Key]) -> HashMap<Uuid, Vec<Uuid>> {
    let mut m: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (tenant, id) in keys {
        m.entry(*tenant).or_default().push(*id);
    }
    m
}

pub struct SegmentsLoader(pub DatabaseConnection);
pub struct EventsLoader(pub DatabaseConnection);
pub struct CallLoader(pub DatabaseConnection);

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
                    speaker: s.speaker,
                    channel: s.channel,
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    text: s.text,
                    sentiment: s.sentiment,
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
                if let Some(env) = events::envelope(&e) {
                    out.entry((tenant, e.call_id)).or_default().push(env);
                }
            }
        }
        Ok(out)
    }
}

impl Loader<Key> for CallLoader {
    type Value = entities::calls::Model;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[Key]) -> Result<HashMap<Key, Self::Value>, Self::Error> {
        let mut out = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for c in calls::calls_by_ids(&self.0, tenant, &ids)
                .await
                .map_err(Arc::new)?
            {
                out.insert((tenant, c.id), c);
            }
        }
        Ok(out)
    }
}
