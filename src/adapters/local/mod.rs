//! The embedded backends: a job queue in the database, an in-process event bus, a directory blob
//! store with signed URLs, rate limits counted in process, the local acoustic analysis and the lexicon's insights. Real
//! implementations, not mocks.

pub mod acoustic;
pub mod blobs;
pub mod bus;
pub mod lexicon;
pub mod limiter;
