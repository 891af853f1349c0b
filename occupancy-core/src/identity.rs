//! [`Identity`]: who a connection is, as an adapter's identify hook decides it. One type for
//! every adapter, so a hook written for one reads the same in the other.

use serde_json::{Map, Value};

use crate::ids::Meta;

/// Who a connection is, as the Hub will see it: what the adapters' identify hooks return (the axum
/// endpoint's and the Socket.IO adapter's alike).
///
/// ```
/// use occupancy_core::Identity;
/// let alice = Identity::user("alice").with_name("Alice");
/// assert_eq!(alice.principal.as_deref(), Some("alice"));
/// assert_eq!(Identity::anonymous().principal, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The authenticated user id. All connections of one principal are one occupant (two tabs
    /// hold together and never wait behind each other). `None`: an anonymous connection, its own
    /// occupant.
    pub principal: Option<String>,
    /// Public metadata shown to the others in the room (a display name, an avatar URL). A `join`
    /// may override it per room with its own `meta`.
    pub meta: Meta,
}

impl Identity {
    /// An anonymous connection (its own occupant) with no metadata.
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// An authenticated user.
    pub fn user(principal: impl Into<String>) -> Self {
        Identity {
            principal: Some(principal.into()),
            meta: Meta::empty(),
        }
    }

    /// Replaces the metadata.
    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = meta;
        self
    }

    /// Sets the metadata to `{"name": name}`, the display name the example page shows.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let mut map = Map::new();
        map.insert("name".into(), Value::String(name.into()));
        self.meta = Meta::from_map(map);
        self
    }
}
