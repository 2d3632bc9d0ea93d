//! The embedded backends: a job queue in the database, an in-process event bus, a directory blob
//! store with signed URLs, rate limits counted in process, and the local acoustic analyser. Real
//! implementations, not mocks.

pub mod acoustic;
pub mod analyzer;
pub mod blobs;
pub mod bus;
pub mod limiter;
