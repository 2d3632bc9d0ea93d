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
pub mod store;
pub mod telemetry;
pub mod wiring;
pub mod worker;

/// The allocator of every voicegraph binary (the service, its tests and benches): jemalloc,
/// whose background threads give the memory of closed connections back to the system
/// (`startup` turns them on); glibc's malloc keeps most of it in per-thread arenas, so a process
/// that once held thousands of sockets would never shrink again.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
