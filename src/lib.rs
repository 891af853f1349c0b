//! # occupancy
//!
//! Who is on a page and who came first, in real time. The first occupant of a room holds it; the
//! rest wait in line and are told it is occupied; the next in line is told the moment it is
//! released.
//!
//! This facade re-exports [`occupancy_core`] (the state machine) and, behind features, the
//! adapters.
#![warn(missing_docs)]
// On docs.rs (nightly, `--cfg docsrs`): badges saying which feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use occupancy_core::*;

/// The axum WebSocket adapter (feature `axum`).
#[cfg(feature = "axum")]
pub use occupancy_axum as axum;

/// The Socket.IO adapter (feature `socketio`).
#[cfg(feature = "socketio")]
pub use occupancy_socketio as socketio;

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use occupancy_redis as redis;
