//! Queries, one file per area, merged into `QueryRoot`.

mod admin;
mod calls;
mod stats;

#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(calls::CallsQuery, stats::StatsQuery, admin::AdminQuery);
