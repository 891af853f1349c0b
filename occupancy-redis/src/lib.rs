//! # occupancy-redis
//!
//! A [`Backend`](occupancy_core::Backend) on Redis, for several server instances ("nodes")
//! sharing one ordered queue per room. Placeholder docs; see below.
#![warn(missing_docs)]

mod backend;
mod lua;
mod wire;

pub use backend::{RedisBackend, RedisConfig};
