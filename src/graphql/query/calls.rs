//! Reading calls: one by id, pages with filters and ordering, and the Relay `node` field.

use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use async_graphql::{Context, Interface, Object, Result, ID};

use crate::domain::{CallColumns, CallRecord};
use crate::error::{AppError, AppResult};
use crate::graphql::types::{
    Call, CallConnection, CallEdge, CallFilter, CallOrder, CallOrderField, OrderDirection, PageInfo,
};
use crate::graphql::{caller, loaders, parse_id, state};
use crate::services::calls::{self, Order, OrderField, PageArgs};
use async_graphql::ErrorExtensions;

/// Anything with a global id (Relay); fetch one with `node(id:)`. Today every node is a `Call`.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "The object's global id."))]
pub enum Node {
    Call(Call),
}

#[derive(Default)]
pub struct CallsQuery;

/// Loads the nested lists the query asks for, for the whole page in one batch each, so that the
/// statements a page costs do not depend on its size or on timing. The page knows its ids, so
/// the batches are loaded at once, side by side, without the loaders' batching delay, and the
/// results are put in the request's loaders where the fields find them.
async fn prefetch(
    ctx: &Context<'_>,
    page: &[(String, Arc<CallRecord>)],
    cols: &CallColumns,
) -> Result<()> {
    let look = ctx.look_ahead();
    let nodes = [look.field("edges").field("node"), look.field("nodes")];
    let asks = |f: &dyn Fn(&async_graphql::Lookahead<'_>) -> bool| nodes.iter().any(f);
    let keys: Vec<_> = page.iter().map(|(_, c)| (c.tenant_id, c.id)).collect();
    let l = loaders(ctx);
    let segments = asks(&|n| {
        n.field("transcript").field("segments").exists()
            || n.field("quotes").field("segments").exists()
            || n.field("categories").field("segments").exists()
    });
    let matched: Vec<_> = if asks(&|n| n.field("categories").field("category").exists()) {
        page.iter()
            .flat_map(|(_, c)| {
                c.categories()
                    .into_iter()
                    .map(|m| (c.tenant_id, m.category_id))
            })
            .collect()
    } else {
        Vec::new()
    };
    futures::try_join!(
        prime(&l.segments, &keys, segments, Some(Vec::new())),
        prime(
            &l.analyses,
            &keys,
            asks(&|n| n.field("analyses").exists()),
            Some(Vec::new())
        ),
        prime(&l.categories, &matched, !matched.is_empty(), None),
        prime(
            &l.events,
            &keys,
            asks(&|n| n.field("events").exists()),
            Some(Vec::new())
        ),
    )
    .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")).extend())?;
    // `CallEvent.call` finds the page's calls in the loader when they were read whole (which
    // `calls` does when it is asked for): a call read with some columns left out must not
    // answer a selection that wants them.
    if *cols == CallColumns::ALL && asks(&|n| n.field("events").field("call").exists()) {
        l.calls
            .feed_many(page.iter().map(|(_, c)| ((c.tenant_id, c.id), c.clone())))
            .await;
    }
    Ok(())
}

/// The large columns a selection of `Call` fields reads (see `types::Call`): a column is
/// fetched when a field that reads it is selected, whatever fragments or directives say.
fn call_columns(calls: &[async_graphql::Lookahead<'_>]) -> CallColumns {
    let asks = |field: &str| calls.iter().any(|c| c.field(field).exists());
    CallColumns {
        transcript: calls
            .iter()
            .any(|c| c.field("transcript").field("text").exists()),
        summary: asks("summary"),
        topics: asks("topics"),
        action_items: asks("actionItems") || asks("quotes"),
        issues: asks("issues") || asks("quotes"),
        intent: asks("intent"),
        categories: asks("categories"),
        metrics: asks("metrics"),
        tags: asks("tags"),
        metadata: asks("metadata"),
        error: asks("error"),
        channels: asks("channels"),
    }
}

/// Loads `keys` with `loader`'s batch function now (when `wanted`) and caches the values; keys
/// without a value are cached as `empty` when given (an empty list), so that no field loads
/// them again.
async fn prime<L>(
    loader: &DataLoader<L, HashMapCache>,
    keys: &[loaders::Key],
    wanted: bool,
    empty: Option<L::Value>,
) -> std::result::Result<(), L::Error>
where
    L: Loader<loaders::Key>,
{
    if !wanted || keys.is_empty() {
        return Ok(());
    }
    let mut found = loader.loader().load(keys).await?;
    if let Some(empty) = empty {
        for k in keys {
            found.entry(*k).or_insert_with(|| empty.clone());
        }
    }
    loader.feed_many(found).await;
    Ok(())
}

#[Object]
impl CallsQuery {
    /// The caller's tenant's categories, by name: what every analysis looks for. Any role.
    async fn categories(&self, ctx: &Context<'_>) -> Result<Vec<crate::graphql::types::Category>> {
        Ok(crate::services::categories::list(state(ctx), caller(ctx)?)
            .await
            .map_err(|e| e.extend())?
            .into_iter()
            .map(crate::graphql::types::Category)
            .collect())
    }

    /// One call of the caller's tenant; null when the tenant has no call with this id. Any role.
    async fn call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call's id (`Call.id`); BAD_USER_INPUT when it is not a valid ID.")]
        id: ID,
    ) -> Result<Option<Call>> {
        let id = parse_id(&id)?;
        let cols = call_columns(&[ctx.look_ahead()]);
        Ok(
            calls::get_call_columns(&state(ctx).store, caller(ctx)?, id, &cols)
                .await
                .map_err(|e| e.extend())?
                .map(Call::from),
        )
    }

    /// The tenant's calls, a page at a time (a Relay cursor connection): newest first unless
    /// `orderBy` says otherwise. Page forward with `first` and `after` (the previous page's
    /// `endCursor`), or backward with `last` and `before`; without either, the first 20. Pages
    /// hold at most the page-size limit (100 unless configured). Any role. BAD_USER_INPUT for
    /// `first` with `last`, a size outside 0 to the limit, an invalid cursor or an invalid
    /// filter.
    #[graphql(
        complexity = "(first.or(last).unwrap_or(20).clamp(0, 1000) as usize) * child_complexity + 1"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn calls(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which calls; all of the tenant's when null.")] filter: Option<CallFilter>,
        #[graphql(
            desc = "The order; default newest first (`{field: CREATED_AT, direction: DESC}`)."
        )]
        order_by: Option<CallOrder>,
        #[graphql(
            desc = "Forward paging: at most this many calls (0 to the page-size limit), after `after` or from the start. Not together with `last`; default 20 when neither is given."
        )]
        first: Option<i32>,
        #[graphql(
            desc = "Forward paging: start after this cursor (`pageInfo.endCursor` or an edge's `cursor` from the same `orderBy`)."
        )]
        after: Option<String>,
        #[graphql(
            desc = "Backward paging: at most this many calls (0 to the page-size limit), the ones just before `before` or at the end. Not together with `first`."
        )]
        last: Option<i32>,
        #[graphql(
            desc = "Backward paging: end before this cursor (`pageInfo.startCursor` or an edge's `cursor` from the same `orderBy`)."
        )]
        before: Option<String>,
    ) -> Result<CallConnection> {
        let filter: calls::CallFilter = filter.unwrap_or_default().into();
        let order = order_by.unwrap_or_default();
        let order = Order {
            field: match order.field {
                CallOrderField::CreatedAt => OrderField::CreatedAt,
                CallOrderField::UpdatedAt => OrderField::UpdatedAt,
            },
            descending: order.direction == OrderDirection::Desc,
        };
        let look = ctx.look_ahead();
        let nodes = [look.field("edges").field("node"), look.field("nodes")];
        // `CallEvent.call` is answered from the page's own rows (see `prefetch`), so with it the
        // page is read whole.
        let cols = if nodes
            .iter()
            .any(|n| n.field("events").field("call").exists())
        {
            CallColumns::ALL
        } else {
            call_columns(&nodes)
        };
        let page = calls::list_calls(
            state(ctx),
            caller(ctx)?,
            &filter,
            order,
            PageArgs {
                first,
                after,
                last,
                before,
            },
            &cols,
        )
        .await
        .map_err(|e| e.extend())?;
        prefetch(ctx, &page.calls, &cols).await?;
        let edges: Vec<CallEdge> = page
            .calls
            .into_iter()
            .map(|(cursor, node)| CallEdge { cursor, node })
            .collect();
        Ok(CallConnection {
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                has_previous_page: page.has_previous_page,
                start_cursor: edges.first().map(|e| e.cursor.clone()),
                end_cursor: edges.last().map(|e| e.cursor.clone()),
            },
            edges,
            filter,
        })
    }

    /// Fetches an object by its global id (Relay); null when the caller's tenant has none with
    /// this id. Any role.
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A global id, e.g. `Call.id`; BAD_USER_INPUT when it is not a valid ID.")]
        id: ID,
    ) -> Result<Option<Node>> {
        let parsed: AppResult<uuid::Uuid> = id
            .parse()
            .map_err(|_| AppError::bad_input("id is not a valid ID"));
        let id = parsed.map_err(|e| e.extend())?;
        Ok(calls::get_call(&state(ctx).store, caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?
            .map(|c| Node::Call(Call::from(c))))
    }
}
