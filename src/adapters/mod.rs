//! One module per technology behind the ports. Only `wiring.rs` names them.

pub mod aws;
pub mod gemini;
pub mod local;
pub mod redis;
pub mod redis_limiter;
pub mod s3;
pub mod secrets_manager;
pub mod sns;
pub mod sqs;
pub mod webhook_http;
