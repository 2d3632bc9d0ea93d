//! GraphQL types, written for clients rather than derived from tables; each wraps an entity or a
//! service result and resolves nested lists through the DataLoaders.

mod analysis;
mod call;
mod misc;
mod webhook;

pub use analysis::*;
pub use call::*;
pub use misc::*;
pub use webhook::*;
