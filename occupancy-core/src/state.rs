//! The state of one room as plain data: the ordered line of occupants, each with its sessions and
//! metadata, and the room's version. This is what every backend stores (the memory backend in a
//! map, the Redis backend in Redis) and what [`room_notices`](crate::room_notices) compares.

use serde::Serialize;

use crate::ids::{Meta, OccupantKey, Person, SessionId};

/// One occupant standing in a room's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OccupantState {
    /// Who: a user or an anonymous session.
    pub key: OccupantKey,
    /// Public metadata shown to others (from the occupant's first join).
    pub meta: Meta,
    /// The occupant's sessions in this room, in order of joining. Never empty.
    pub sessions: Vec<SessionId>,
}

impl OccupantState {
    /// This occupant as others see it.
    pub fn person(&self) -> Person {
        Person {
            id: self.key.clone(),
            meta: self.meta.clone(),
        }
    }
}

/// A room: its version and its line. `occupants[0]` holds the room.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoomState {
    /// Bumped on every change; strictly increasing for the room's whole life, also across the
    /// room being emptied and created again.
    pub version: u64,
    /// The line, holder first.
    pub occupants: Vec<OccupantState>,
}

impl RoomState {
    /// The holder, if anyone is in the room.
    pub fn holder(&self) -> Option<&OccupantState> {
        self.occupants.first()
    }

    /// How many stand behind the holder.
    pub fn waiting(&self) -> usize {
        self.occupants.len().saturating_sub(1)
    }

    /// Position of an occupant (0 = holding).
    pub fn position_of(&self, key: &OccupantKey) -> Option<usize> {
        self.occupants.iter().position(|o| &o.key == key)
    }

    /// Position of a session's occupant (0 = holding).
    pub fn position_of_session(&self, session: SessionId) -> Option<usize> {
        self.occupants
            .iter()
            .position(|o| o.sessions.contains(&session))
    }

    /// True when nobody is in the line.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }
}

/// A borrowed view of a room state: its version and its line. [`room_notices`](crate::room_notices)
/// takes these, so a caller can describe the state before or after a change without copying the
/// line (a prefix or a suffix of a line, say). `&RoomState` converts into it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomRef<'a> {
    /// The room version.
    pub version: u64,
    /// The line, holder first.
    pub occupants: &'a [OccupantState],
}

impl<'a> RoomRef<'a> {
    /// The holder, if anyone is in the room.
    pub fn holder(&self) -> Option<&'a OccupantState> {
        self.occupants.first()
    }

    /// How many stand behind the holder.
    pub fn waiting(&self) -> usize {
        self.occupants.len().saturating_sub(1)
    }
}

impl<'a> From<&'a RoomState> for RoomRef<'a> {
    fn from(s: &'a RoomState) -> Self {
        RoomRef {
            version: s.version,
            occupants: &s.occupants,
        }
    }
}
