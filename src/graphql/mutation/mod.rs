//! Mutations, one file per area, merged into `MutationRoot`.

mod admin;
mod calls;

#[derive(async_graphql::MergedObject, Default)]
pub struct MutationRoot(calls::CallsMutation, admin::AdminMutation);
