//! Live call events. Both streams are gap-free and resumable: positions are dense and committed
//! in order, replay comes from the database, and the live part from the instance's event hub
//! (shared among subscribers through `graphql::live`).

use async_graphql::{Context, ErrorExtensions, Result, Subscription, ID};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::domain::{CallStatus, EventEnvelope};
use crate::error::AppError;
use crate::graphql::live::SourceSlot;
use crate::graphql::types::{CallEvent, CallEventFilter};
use crate::graphql::{caller, parse_id, state};
use crate::services::auth::Permission;
use crate::services::calls;
use crate::services::events::{self, EventFilter, Watch};

#[derive(Default)]
pub struct SubscriptionRoot;

/// The events a resolver asked for: from the source its executor provides (a shared group, a
/// replay), or straight from the instance's hub.
fn open(ctx: &Context<'_>, watch: Watch) -> BoxStream<'static, Result<CallEvent>> {
    let events: BoxStream<'static, anyhow::Result<EventEnvelope>> =
        match ctx.data_opt::<SourceSlot>() {
            Some(source) => source.0.open(watch),
            None => events::stream(state(ctx).clone(), watch).boxed(),
        };
    events
        .map(|r| r.map(CallEvent).map_err(|e| AppError::Internal(e).extend()))
        .boxed()
}

fn parse_cursor(after: Option<String>) -> Result<Option<i64>> {
    after
        .map(|a| {
            a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                AppError::bad_input("after is not a valid cursor: use the `cursor` of an event")
                    .extend()
            })
        })
        .transpose()
}

/// Live call events, over WebSocket (`graphql-transport-ws`, or the legacy
/// `graphql-ws`). Any role.
#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The events of one call. Without `after`, the call's events so far come first, then every
    /// new one as it happens, so subscribing and then acting on the call never misses an event.
    /// With `after` (the `cursor` of an event already seen), only the later ones come. A
    /// `DELETED` event is the last one of a call. Fails with `NOT_FOUND` for a call that does
    /// not exist (or belongs to another tenant) and `BAD_USER_INPUT` for an invalid cursor.
    async fn call_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "The call to follow (`Call.id`); NOT_FOUND when the tenant has no such call."
        )]
        id: ID,
        #[graphql(
            desc = "A `CallEvent.cursor` of this call seen before: replay its later events, then go on live. Without it, the call's events so far come first. BAD_USER_INPUT when it is not a cursor."
        )]
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<CallEvent>>> {
        let id = parse_id(&id)?;
        let after = parse_cursor(after)?;
        let st = state(ctx);
        let who = caller(ctx)?;
        who.require(Permission::ReadCalls).map_err(|e| e.extend())?;
        if calls::get_call(&st.store, who, id)
            .await
            .map_err(|e| e.extend())?
            .is_none()
        {
            return Err(AppError::not_found("call").extend());
        }
        let watch = Watch {
            tenant: who.tenant_id,
            filter: EventFilter {
                call_id: Some(id),
                ..Default::default()
            },
            after,
            replay_call: true,
        };
        Ok(open(ctx, watch))
    }

    /// The events of every call of the caller's tenant, as they happen. With `after` (the
    /// `cursor` of an event already seen), every later event is replayed from the database
    /// first and the stream then continues live: nothing missed, nothing twice — the way to
    /// resume after a reconnect. Without `after` the stream starts with the next event.
    async fn call_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which events; all of the tenant's when null.")] filter: Option<
            CallEventFilter,
        >,
        #[graphql(
            desc = "A `CallEvent.cursor` seen before: replay every later event, then go on live (`\"0\"` replays the whole history). Without it, events from now on. BAD_USER_INPUT when it is not a cursor."
        )]
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<CallEvent>>> {
        let who = caller(ctx)?;
        who.require(Permission::ReadCalls).map_err(|e| e.extend())?;
        let after = parse_cursor(after)?;
        let f = filter.unwrap_or_default();
        let kinds: Vec<String> = f
            .kinds
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.as_str().to_string())
            .collect();
        if kinds.len() > 20 || kinds.iter().any(|k| k.len() > 32) {
            return Err(
                AppError::bad_input("kinds: at most 20 names of at most 32 characters").extend(),
            );
        }
        let watch = Watch {
            tenant: who.tenant_id,
            filter: EventFilter {
                call_id: f.call_id.as_ref().map(parse_id).transpose()?,
                kinds,
                statuses: f
                    .status
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<Vec<CallStatus>>(),
            },
            after,
            replay_call: false,
        };
        Ok(open(ctx, watch))
    }
}
