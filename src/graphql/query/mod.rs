//! Queries, one file per area, merged into `QueryRoot`.

mod admin;
mod calls;
mod stats;
mod webhooks;

/// Reading calls, statistics, webhooks, the redaction policy and keys. Every field needs an API key
/// (`Authorization: Bearer vg_…`) and answers only with the caller's tenant's data. Errors carry
/// `extensions.code`: UNAUTHENTICATED (no or an unknown or revoked key), FORBIDDEN (the role may
/// not), BAD_USER_INPUT (an invalid argument; the message says which), NOT_FOUND, INTERNAL (with
/// `extensions.errorId` to quote when reporting it).
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    calls::CallsQuery,
    stats::StatsQuery,
    webhooks::WebhooksQuery,
    crate::graphql::redaction::RedactionQuery,
    admin::AdminQuery,
);
