//! Integration tests: the app runs on port 0 with its own data directory, and the tests speak
//! real HTTP and WebSocket to it.

mod helpers;

mod auth;
mod calls;
mod events;
mod limits;
mod playground;
mod queue_contract;
mod worker;
