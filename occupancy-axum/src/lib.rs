//! # occupancy-axum
//!
//! (crate docs are written below)
#![warn(missing_docs)]

mod connection;
mod endpoint;
mod identity;
mod listener;
mod origin;
mod rate;
mod settings;

pub use connection::close_code;
pub use endpoint::{Endpoint, EndpointBuilder, handler};
pub use identity::{Identity, Rejection, query_param};
pub use listener::{NodelayListener, nodelay};
pub use origin::OriginPolicy;
pub use settings::Settings;

pub use occupancy_core::protocol;
pub use occupancy_core::{Hub, HubBuilder, Meta};
