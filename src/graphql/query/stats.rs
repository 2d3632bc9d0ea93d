//! Aggregates for analysts.

use async_graphql::{Context, Object, Result};

use crate::graphql::types::{CallFilter, CallStats};
use crate::graphql::{caller, state};
use crate::services::stats;
use async_graphql::ErrorExtensions;

#[derive(Default)]
pub struct StatsQuery;

#[Object]
impl StatsQuery {
    /// Counts, durations, talk time, sentiment and a per-day series over the calls a filter
    /// selects. ADMIN and ANALYST only (FORBIDDEN otherwise). BAD_USER_INPUT for an invalid
    /// filter.
    async fn call_stats(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which calls to aggregate; all of the tenant's when null.")]
        filter: Option<CallFilter>,
    ) -> Result<CallStats> {
        let filter = filter.unwrap_or_default().into();
        Ok(stats::call_stats(state(ctx), caller(ctx)?, &filter)
            .await
            .map_err(|e| e.extend())?
            .into())
    }
}
