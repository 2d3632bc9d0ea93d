//! Mutations, one file per area, merged into `MutationRoot`.

mod admin;
mod calls;
mod categories;
mod webhooks;

/// Submitting, re-analysing and managing calls, categories, webhooks, the redaction policy, tenants and API keys. Every field needs an API key
/// (`Authorization: Bearer vg_…`) and names the roles that may call it; others get FORBIDDEN.
/// Errors carry `extensions.code`: UNAUTHENTICATED, FORBIDDEN, BAD_USER_INPUT (an invalid
/// argument; the message says which), NOT_FOUND, CONFLICT (the request clashes with the current
/// state), INTERNAL (with `extensions.errorId` to quote when reporting it).
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    calls::CallsMutation,
    categories::CategoriesMutation,
    webhooks::WebhooksMutation,
    crate::graphql::redaction::RedactionMutation,
    admin::AdminMutation,
);
