//! One module per technology behind the ports. Only `wiring.rs` names them.

pub mod local;
