//! Reading calls: one by id, pages with filters and ordering, and the Relay `node` field.

use async_graphql::{Context, Interface, Object, Result, ID};

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
/// statements a page costs do not depend on its size or on timing.
async fn prefetch(ctx: &Context<'_>, page: &[(String, crate::domain::CallRecord)]) -> Result<()> {
    let look = ctx.look_ahead();
    let nodes = [look.field("edges").field("node"), look.field("nodes")];
    let keys: Vec<_> = page.iter().map(|(_, c)| (c.tenant_id, c.id)).collect();
    let l = loaders(ctx);
    let internal =
        |e: std::sync::Arc<anyhow::Error>| AppError::Internal(anyhow::anyhow!("{e}")).extend();
    if nodes.iter().any(|n| {
        n.field("transcript").field("segments").exists()
            || n.field("quotes").field("segments").exists()
            || n.field("categories").field("segments").exists()
    }) {
        l.segments.load_many(keys.clone()).await.map_err(internal)?;
    }
    if nodes.iter().any(|n| n.field("analyses").exists()) {
        l.analyses.load_many(keys.clone()).await.map_err(internal)?;
    }
    if nodes
        .iter()
        .any(|n| n.field("categories").field("category").exists())
    {
        let matched: Vec<_> = page
            .iter()
            .flat_map(|(_, c)| {
                c.categories()
                    .into_iter()
                    .map(|m| (c.tenant_id, m.category_id))
            })
            .collect();
        l.categories.load_many(matched).await.map_err(internal)?;
    }
    if nodes.iter().any(|n| n.field("events").exists()) {
        l.events.load_many(keys).await.map_err(internal)?;
    }
    l.calls
        .feed_many(page.iter().map(|(_, c)| ((c.tenant_id, c.id), c.clone())))
        .await;
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
        Ok(calls::get_call(&state(ctx).store, caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?
            .map(Call))
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
        )
        .await
        .map_err(|e| e.extend())?;
        prefetch(ctx, &page.calls).await?;
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
            .map(|c| Node::Call(Call(c))))
    }
}
