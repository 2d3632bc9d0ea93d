//! SeaORM entities for voicegraph's tables. Plain data: no GraphQL derives, no business rules.

pub mod analyses;
pub mod api_keys;
pub mod audit_log;
pub mod call_events;
pub mod call_segments;
pub mod calls;
pub mod categories;
pub mod jobs;
pub mod outbox;
pub mod persisted_queries;
pub mod redaction_policies;
pub mod sequencer;
pub mod tenants;
pub mod webhook_attempts;
pub mod webhook_deliveries;
pub mod webhooks;
