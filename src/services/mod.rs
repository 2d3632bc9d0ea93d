//! Use cases: submit, process, retry, tag, delete, query, stream events, manage keys,
//! authenticate callers (API keys and JWTs), rate limits. They take
//! the caller and the state, never axum or async-graphql types.

pub mod analysis;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod categories;
pub mod events;
pub mod jwt;
pub mod limits;
pub mod live;
pub mod redaction;
pub mod revocation;
pub mod stats;
pub mod webhooks;
