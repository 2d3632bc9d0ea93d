//! Live call events. Both streams are gap-free and resumable (see `services::events`).

use async_graphql::{Context, ErrorExtensions, Result, Subscription, ID};
use futures::{Stream, StreamExt};

use crate::domain::CallStatus;
use crate::error::AppError;
use crate::graphql::types::{CallEvent, CallEventFilter};
use crate::graphql::{caller, parse_id, state};
use crate::services::auth::Permission;
use crate::services::{calls, events};

#[derive(Default)]
pub struct SubscriptionRoot;

fn to_graphql(
    s: impl Stream<Item = anyhow::Result<crate::domain::EventEnvelope>>,
) -> impl Stream<Item = Result<CallEvent>> {
    s.map(|r| r.map(CallEvent).map_err(|e| AppError::Internal(e).extend()))
}

/// Live call events, over WebSocket (`graphql-transport-ws`, or the legacy
/// `graphql-ws`). Any role.
#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Events of one call from now on.
    async fn call_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            desc = "The call to follow (`Call.id`); NOT_FOUND when the tenant has no such call."
        )]
        id: ID,
    ) -> Result<impl Stream<Item = Result<CallEvent>>> {
        let id = parse_id(&id)?;
        let st = state(ctx).clone();
        let who = caller(ctx)?.clone();
        if calls::get_call(&st.db, &who, id)
            .await
            .map_err(|e| e.extend())?
            .is_none()
        {
            return Err(AppError::not_found("call").extend());
        }
        let filter = events::EventFilter {
            call_id: Some(id),
            ..Default::default()
        };
        Ok(to_graphql(events::stream(st, who, filter, None)))
    }

    /// Events of the tenant's calls. With `after` (a cursor from an earlier event), replays every
    /// later event first, then continues live: nothing missed, nothing twice.
    async fn call_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which events; all of the tenant's when null.")] filter: Option<
            CallEventFilter,
        >,
        #[graphql(
            desc = "A `CallEvent.cursor` seen before: replay every later event, then go on live. Without it, events from now on. BAD_USER_INPUT when it is not a cursor."
        )]
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<CallEvent>>> {
        let st = state(ctx).clone();
        let who = caller(ctx)?.clone();
        who.require(Permission::ReadCalls).map_err(|e| e.extend())?;
        let after = after
            .map(|a| {
                a.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| AppError::bad_input("after is not a valid cursor").extend())
            })
            .transpose()?;
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
        let filter = events::EventFilter {
            call_id: f.call_id.as_ref().map(parse_id).transpose()?,
            kinds,
            statuses: f
                .status
                .unwrap_or_default()
                .into_iter()
                .collect::<Vec<CallStatus>>(),
        };
        Ok(to_graphql(events::stream(st, who, filter, after)))
    }
}
