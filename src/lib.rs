//! # occupancy
//!
//! Who is on a page and who came first, in real time. The first occupant of a room holds it; the
//! rest wait in line and are told it is occupied; the next in line is told the moment it is
//! released.
//!
//! This facade re-exports [`occupancy_core`] (the state machine) and, behind features, the
//! adapters.
#![warn(missing_docs)]

pub use occupancy_core::*;
