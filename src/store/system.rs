//! The reads and writes that cross tenants — the only ones. On Postgres each calls a
//! `SECURITY DEFINER` function the migrations create (the runtime role may execute those and is
//! otherwise held to one tenant per transaction by row-level security); on SQLite the same query
//! runs directly.
//!
//! - `key_by_hash`: authenticating an API key, before its tenant is known;
//! - `active_keys`: which of the keys behind this instance's open sockets still work;
//! - `key_tenant`: the tenant of a key the platform admin revokes;
//! - `events_between_all`: the instance's event hub catching up, for every tenant at once;
//! - `events_by_id`: the outbox relay publishing events;
//! - `sequence_pending`: the relay giving committed events their positions, and making their
//!   deliveries to the tenants' webhook endpoints.

use std::collections::{HashMap, HashSet};

use entities::{api_keys, call_events, outbox, sequencer, webhook_deliveries, webhooks};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};
use uuid::Uuid;

use super::events::{envelope, REPLAY_PAGE};
use super::webhooks::{new_delivery, takes};
use super::Store;
use crate::domain::{ApiKeyRecord, EventEnvelope};

/// Ids per statement (and per array argument).
const CHUNK: usize = 500;

fn pg(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A Postgres array literal of `items`, passed as text and cast in SQL (`$1::uuid[]`).
fn array_literal<T: ToString>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{{}}}", inner.join(","))
}

impl Store {
    /// The key whose hash is `hash`, in whichever tenant it is.
    pub async fn key_by_hash(&self, hash: &str) -> anyhow::Result<Option<ApiKeyRecord>> {
        let query = api_keys::Entity::find();
        let found = if self.is_postgres() {
            query
                .from_raw_sql(pg(
                    "SELECT * FROM voicegraph_key_by_hash($1)",
                    vec![hash.into()],
                ))
                .one(&self.db)
                .await?
        } else {
            query
                .filter(api_keys::Column::KeyHash.eq(hash))
                .one(&self.db)
                .await?
        };
        Ok(found.map(Into::into))
    }

    /// Which of `ids` are keys that still work (not revoked); the others were revoked (or never
    /// existed). One statement per 500 ids.
    pub async fn active_keys(&self, ids: &[Uuid]) -> anyhow::Result<HashSet<Uuid>> {
        let mut active = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let found: Vec<Uuid> = if self.is_postgres() {
                self.db
                    .query_all_raw(pg(
                        "SELECT id FROM voicegraph_active_keys($1::uuid[]) AS t(id)",
                        vec![array_literal(chunk).into()],
                    ))
                    .await?
                    .iter()
                    .map(|row| row.try_get_by_index::<Uuid>(0))
                    .collect::<Result<_, _>>()?
            } else {
                api_keys::Entity::find()
                    .select_only()
                    .column(api_keys::Column::Id)
                    .filter(api_keys::Column::Id.is_in(chunk.iter().copied()))
                    .filter(api_keys::Column::RevokedAt.is_null())
                    .into_tuple()
                    .all(&self.db)
                    .await?
            };
            active.extend(found);
        }
        Ok(active)
    }

    /// The tenant a key belongs to, if the key exists.
    pub async fn key_tenant(&self, id: Uuid) -> anyhow::Result<Option<Uuid>> {
        if self.is_postgres() {
            let row = self
                .db
                .query_one_raw(pg(
                    "SELECT voicegraph_key_tenant($1::uuid)",
                    vec![id.to_string().into()],
                ))
                .await?;
            Ok(match row {
                Some(row) => row.try_get_by_index::<Option<Uuid>>(0)?,
                None => None,
            })
        } else {
            Ok(api_keys::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .map(|k| k.tenant_id))
        }
    }

    /// Sequenced events of every tenant in (after, upto], in order: the instance hub's read.
    pub async fn events_between_all(
        &self,
        after: i64,
        upto: i64,
    ) -> anyhow::Result<Vec<EventEnvelope>> {
        let mut out = Vec::new();
        let mut from = after;
        loop {
            let page = if self.is_postgres() {
                call_events::Entity::find()
                    .from_raw_sql(pg(
                        "SELECT * FROM voicegraph_events_between($1, $2, $3)",
                        vec![from.into(), upto.into(), (REPLAY_PAGE as i32).into()],
                    ))
                    .all(&self.db)
                    .await?
            } else {
                call_events::Entity::find()
                    .filter(call_events::Column::Seq.gt(from))
                    .filter(call_events::Column::Seq.lte(upto))
                    .order_by_asc(call_events::Column::Seq)
                    .limit(REPLAY_PAGE)
                    .all(&self.db)
                    .await?
            };
            let full = page.len() as u64 == REPLAY_PAGE;
            from = page.last().and_then(|m| m.seq).unwrap_or(upto);
            out.extend(page.iter().filter_map(envelope));
            if !full {
                return Ok(out);
            }
        }
    }

    /// Events by id, whichever their tenant: present when the event exists, `Some` once it is
    /// sequenced.
    pub async fn events_by_id(
        &self,
        ids: &[i64],
    ) -> anyhow::Result<HashMap<i64, Option<EventEnvelope>>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows = if self.is_postgres() {
                call_events::Entity::find()
                    .from_raw_sql(pg(
                        "SELECT * FROM voicegraph_events_by_id($1::bigint[])",
                        vec![array_literal(chunk).into()],
                    ))
                    .all(&self.db)
                    .await?
            } else {
                call_events::Entity::find()
                    .filter(call_events::Column::Id.is_in(chunk.iter().copied()))
                    .all(&self.db)
                    .await?
            };
            out.extend(rows.iter().map(|m| (m.id, envelope(m))));
        }
        Ok(out)
    }

    /// Gives every committed, unsequenced event the next positions of the global sequence. The
    /// sequencer row is locked first, so concurrent relays commit in the order of the numbers
    /// they hand out and a reader never sees position n+1 before n.
    pub async fn sequence_pending(&self) -> anyhow::Result<usize> {
        const LIMIT: i32 = 1000;
        if self.is_postgres() {
            let row = self
                .db
                .query_one_raw(pg(
                    "SELECT voicegraph_sequence_pending($1)",
                    vec![LIMIT.into()],
                ))
                .await?;
            let n = match row {
                Some(row) => row.try_get_by_index::<i32>(0)?,
                None => 0,
            };
            return Ok(n.max(0) as usize);
        }
        let txn = self.db.begin().await?;
        sequencer::Entity::update_many()
            .col_expr(
                sequencer::Column::Value,
                Expr::col(sequencer::Column::Value),
            )
            .filter(sequencer::Column::Id.eq(1))
            .exec(&txn)
            .await?;
        let pending = call_events::Entity::find()
            .filter(call_events::Column::Seq.is_null())
            .order_by_asc(call_events::Column::Id)
            .limit(LIMIT as u64)
            .all(&txn)
            .await?;
        if pending.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let current = sequencer::Entity::find_by_id(1)
            .one(&txn)
            .await?
            .map(|s| s.value)
            .unwrap_or(0);
        for (i, event) in pending.iter().enumerate() {
            call_events::Entity::update_many()
                .col_expr(
                    call_events::Column::Seq,
                    Expr::value(current + 1 + i as i64),
                )
                .filter(call_events::Column::Id.eq(event.id))
                .exec(&txn)
                .await?;
        }
        // The deliveries to the tenants' webhook endpoints, as Postgres's function makes them.
        let tenants: HashSet<Uuid> = pending.iter().map(|e| e.tenant_id).collect();
        let endpoints = webhooks::Entity::find()
            .filter(webhooks::Column::TenantId.is_in(tenants))
            .order_by_asc(webhooks::Column::CreatedAt)
            .all(&txn)
            .await?;
        if !endpoints.is_empty() {
            let now = chrono::Utc::now();
            let (deliveries, rows): (Vec<_>, Vec<_>) = pending
                .iter()
                .enumerate()
                .flat_map(|(i, event)| {
                    endpoints
                        .iter()
                        .filter(|w| w.tenant_id == event.tenant_id && takes(&w.events, &event.kind))
                        .map(move |w| new_delivery(w.id, event, current + 1 + i as i64, now))
                })
                .unzip();
            for chunk in deliveries.chunks(100) {
                webhook_deliveries::Entity::insert_many(chunk.to_vec())
                    .exec(&txn)
                    .await?;
            }
            for chunk in rows.chunks(100) {
                outbox::Entity::insert_many(chunk.to_vec())
                    .exec(&txn)
                    .await?;
            }
        }
        sequencer::Entity::update_many()
            .col_expr(
                sequencer::Column::Value,
                Expr::value(current + pending.len() as i64),
            )
            .filter(sequencer::Column::Id.eq(1))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(pending.len())
    }
}
