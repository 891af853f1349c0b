//! The state of one room as plain data: the ordered line of occupants, each with its sessions and
//! metadata, and the room's version. This is what every backend stores (the memory backend in a
//! map, the Redis backend in Redis) and what [`room_notices`](crate::room_notices) compares.

use serde::Serialize;

use crate::ids::{Meta, OccupantKey, Person, SessionId};
use crate::notice::DisplacedReason;

/// One occupant standing in a room's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OccupantState {
    /// Who: a user or an anonymous session.
    pub key: OccupantKey,
    /// Public metadata shown to others (from the occupant's first join).
    pub meta: Meta,
    /// The occupant's sessions in this room, in order of joining. Never empty.
    pub sessions: Sessions,
    /// When the occupant entered the line: Unix time in milliseconds (server clock).
    pub since: u64,
}

impl OccupantState {
    /// This occupant as others see it.
    pub fn person(&self) -> Person {
        Person {
            id: self.key.clone(),
            meta: self.meta.clone(),
            since: self.since,
        }
    }
}

/// The sessions of one occupant in one room, in order of joining: a list that keeps a single
/// session (one tab, the common case) inline.
///
/// Why not a `Vec`: when the holder of a room with 10,000 waiting leaves, the machine walks the
/// line to note who is told which place. With a `Vec` per occupant, each step read memory
/// somewhere else on the heap, and those cache misses were 95% of the change's time in a
/// server (0.4–0.9 ms, all of it under the state lock). Inline, the walk reads the line alone.
///
/// It dereferences to a slice (`len`, `iter`, `contains`, indexing) and is built from a `Vec`
/// or an iterator: `vec![s].into()`, `[s].into_iter().collect()`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sessions(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    One(SessionId),
    /// None, or two and more.
    Many(Vec<SessionId>),
}

impl Sessions {
    /// One session.
    pub fn one(session: SessionId) -> Self {
        Sessions(Repr::One(session))
    }

    /// Appends a session (a further tab joining).
    pub fn push(&mut self, session: SessionId) {
        match &mut self.0 {
            Repr::One(first) => self.0 = Repr::Many(vec![*first, session]),
            Repr::Many(v) if v.is_empty() => self.0 = Repr::One(session),
            Repr::Many(v) => v.push(session),
        }
    }

    /// Keeps only the sessions for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&SessionId) -> bool) {
        match &mut self.0 {
            Repr::One(s) => {
                if !keep(s) {
                    self.0 = Repr::Many(Vec::new());
                }
            }
            Repr::Many(v) => {
                v.retain(|s| keep(s));
                if let [one] = v[..] {
                    self.0 = Repr::One(one);
                }
            }
        }
    }

    /// Removes every session.
    pub fn clear(&mut self) {
        self.0 = Repr::Many(Vec::new());
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions(Repr::Many(Vec::new()))
    }
}

impl std::ops::Deref for Sessions {
    type Target = [SessionId];

    fn deref(&self) -> &[SessionId] {
        match &self.0 {
            Repr::One(s) => std::slice::from_ref(s),
            Repr::Many(v) => v,
        }
    }
}

impl From<Vec<SessionId>> for Sessions {
    fn from(v: Vec<SessionId>) -> Self {
        match v[..] {
            [one] => Sessions::one(one),
            _ => Sessions(Repr::Many(v)),
        }
    }
}

impl FromIterator<SessionId> for Sessions {
    fn from_iter<I: IntoIterator<Item = SessionId>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a Sessions {
    type Item = &'a SessionId;
    type IntoIter = std::slice::Iter<'a, SessionId>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq<[SessionId]> for Sessions {
    fn eq(&self, other: &[SessionId]) -> bool {
        **self == *other
    }
}

impl PartialEq<Vec<SessionId>> for Sessions {
    fn eq(&self, other: &Vec<SessionId>) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Sessions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A room at a glance, for operators: what [`Hub::rooms`](crate::Hub::rooms) lists and
/// [`Hub::changes`](crate::Hub::changes) reports. Serializes as
/// `{"room","version","holder","held_since","waiting","watchers"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomSummary {
    /// The room.
    pub room: crate::ids::RoomId,
    /// Its version.
    pub version: u64,
    /// Who holds it (`None` when only watched).
    pub holder: Option<Person>,
    /// When the holder was granted it (Unix ms).
    pub held_since: Option<u64>,
    /// How many stand behind the holder.
    pub waiting: u32,
    /// How many sessions watch it.
    pub watchers: u32,
}

/// A room: its version and its line. `occupants[0]` holds the room.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoomState {
    /// Bumped on every change; strictly increasing for the room's whole life, also across the
    /// room being emptied and created again.
    pub version: u64,
    /// The line, holder first.
    pub occupants: Vec<OccupantState>,
    /// When the current holder was granted the room: Unix time in milliseconds (server clock);
    /// `None` when the room is empty.
    pub held_since: Option<u64>,
    /// Why the holder was displaced, when the change that made this version displaced one (a
    /// take over, idle expiry, a forced release); meaningless otherwise. Lets
    /// [`room_notices`](crate::room_notices) name the reason from two states alone.
    pub reason: DisplacedReason,
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
    /// When the current holder was granted the room (see [`RoomState::held_since`]).
    pub held_since: Option<u64>,
    /// Why the holder was displaced, if this version displaced one (see [`RoomState::reason`]).
    pub reason: DisplacedReason,
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
            held_since: s.held_since,
            reason: s.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Sessions) -> Vec<u64> {
        s.iter().map(|s| s.0).collect()
    }

    #[test]
    fn sessions_keep_order_through_push_and_retain() {
        let mut s = Sessions::one(SessionId(1));
        assert_eq!(ids(&s), [1]);
        s.push(SessionId(2));
        s.push(SessionId(3));
        assert_eq!(ids(&s), [1, 2, 3]);
        s.retain(|x| x.0 != 1);
        assert_eq!(ids(&s), [2, 3]);
        s.retain(|x| x.0 != 3);
        assert_eq!(ids(&s), [2]);
        assert!(matches!(s.0, Repr::One(_)), "one left is kept inline");
        s.retain(|_| false);
        assert!(s.is_empty());
        s.push(SessionId(9));
        assert_eq!(ids(&s), [9]);
        assert_eq!(s, Sessions::from(vec![SessionId(9)]));
        s.clear();
        assert_eq!(s, Sessions::default());
    }

    #[test]
    fn sessions_compare_and_serialize_as_a_list() {
        let s: Sessions = [SessionId(4), SessionId(5)].into_iter().collect();
        assert_eq!(s, vec![SessionId(4), SessionId(5)]);
        assert_eq!(
            format!("{s:?}"),
            format!("{:?}", [SessionId(4), SessionId(5)])
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            serde_json::to_string(&[SessionId(4), SessionId(5)]).unwrap()
        );
    }
}
