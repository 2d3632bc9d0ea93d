//! Integration tests: the app runs on port 0 with its own data directory, and the tests speak
//! real HTTP and WebSocket to it.

mod backends;
mod gemini_server;
mod helpers;

mod analyses;
mod audit;
mod auth;
mod blob_contract;
mod calls;
mod client;
mod connections;
mod deploy;
mod document_limits;
mod events;
mod faults;
mod feed_contract;
mod gemini_analysis;
mod gemini_client;
mod gemini_insights;
mod hostile;
mod http;
mod jwt;
mod key_cache;
mod limiter_contract;
mod limits;
mod notifications;
mod operators;
mod playground;
mod production;
mod queue_contract;
mod rate_limits;
mod realtime;
mod redaction;
mod response_cache;
mod revocation;
mod scale_out;
mod schema;
mod secrets;
mod store_contract;
mod tenancy;
mod traces;
mod uploads;
mod webhooks;
mod worker;
