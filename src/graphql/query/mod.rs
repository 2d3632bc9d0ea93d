//! Queries, one file per area, merged into `QueryRoot`.

mod admin;
mod calls;
mod stats;

#[derive(async_graphql::MergedObject, Default)]
pub struct QueryRoot(calls::CallsQuery, stats::StatsQuery, admin::AdminQuery);
