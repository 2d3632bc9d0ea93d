//! Plain types and rules of the call-tracking domain: statuses, events, analysis results. No I/O.

pub mod analysis;
pub mod call;
pub mod conversation;
pub mod gcra;
pub mod pii;
pub mod records;
pub mod redaction;
pub mod results;
pub mod webhooks;

pub use analysis::*;
pub use call::*;
pub use records::*;
