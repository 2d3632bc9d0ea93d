//! voicegraph: a GraphQL API for tracking voice calls. See `DESIGN.md` for the architecture.

pub mod adapters;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod ports;
pub mod realtime;
pub mod relay;
pub mod services;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod wiring;
pub mod worker;
