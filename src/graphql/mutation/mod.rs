//! Mutations, one file per area, merged into `MutationRoot`.

mod admin;
mod calls;

#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(calls::CallsMutation, admin::AdminMutation);
