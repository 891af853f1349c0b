//! The node's state, without I/O: which sessions this node hosts, which rooms it follows (has
//! local sessions or watchers in, or a call in flight on) and the last state it saw of each, the
//! grace and idle deadlines it keeps, and what it does with a room state that arrives (from a
//! script's reply, a publish or a re-read): drop it unless it is newer than the last seen, else
//! take it and compute the notices of the change for this node's sessions only. A published
//! delta (one edit) is made on the last state seen only when that state is the one it was made on
//! (its previous version); otherwise the room is re-read. It also parses the published messages
//! and decides when a room must be re-read (a delta that does not chain, a "changed" message, a
//! state that arrived for a followed room but could not be decoded).
//!
//! Nothing here talks to Redis or reads a clock: [`crate::backend`] does the I/O around it and
//! hands it what arrived. The unit tests below feed it publishes (whole states, deltas, "changed"
//! messages) that are lost, duplicated and reordered (a lossy link between a reference [`Machine`](occupancy_core::Machine) and the node,
//! after quinn-proto's `Pair`) and check that it never goes back, never tells a change twice,
//! and ends at the truth once the newest state (or a re-read) arrives.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use occupancy_core::{Meta, Notice, ResumeToken, RoomId, RoomState, SessionId, room_notices};

use crate::wire::{Decoded, parse_session};

/// A session of this node.
pub(crate) struct LocalSession {
    pub(crate) principal: Option<Arc<str>>,
    pub(crate) meta: Meta,
    pub(crate) meta_json: String,
    pub(crate) token: ResumeToken,
    pub(crate) joined: Vec<RoomId>,
    pub(crate) watching: Vec<RoomId>,
    pub(crate) grace_until: Option<Instant>,
}

/// A room this node follows (it has local sessions or watchers in it, or a call in flight).
pub(crate) struct Tracked {
    pub(crate) id: RoomId,
    /// The last state seen (version 0 and empty before the first).
    pub(crate) state: RoomState,
    pub(crate) raw: Option<Arc<str>>,
    /// The deltas applied since `raw` (version, JSON), for `restore` ([`Tracked::raw_now`]).
    pub(crate) edits: Vec<(u64, Arc<str>)>,
    /// The newest version published while a call was about to bring the room's first state
    /// ([`NodeState::defer`]).
    pub(crate) missed: u64,
    /// A re-read of the room is under way ([`NodeState::start_reread`]).
    pub(crate) rereading: bool,
    pub(crate) placeholder_until: Option<u64>,
    /// The holder's idle clock in the last state seen (Redis ms, see [`Decoded::active_at`]).
    pub(crate) active_at: Option<u64>,
    /// This room's entry in [`NodeState::idle`], if it has one.
    pub(crate) idle_at: Option<Instant>,
    pub(crate) members: Vec<SessionId>,
    pub(crate) watchers: Vec<SessionId>,
    pub(crate) pending: usize,
}

/// How many deltas a followed room keeps beside its last whole state before folding them in
/// (O(line) once per this many deltas).
const MAX_EDITS: usize = 64;

impl Tracked {
    /// The last state seen as stored JSON (the last whole state with the deltas since made on
    /// it), for `restore`.
    pub(crate) fn raw_now(&self) -> Option<Arc<str>> {
        let raw = self.raw.as_ref()?;
        if self.edits.is_empty() {
            return Some(raw.clone());
        }
        crate::wire::patch_raw(raw, &self.edits).ok().map(Arc::from)
    }

    pub(crate) fn idle(&self) -> bool {
        self.members.is_empty() && self.watchers.is_empty() && self.pending == 0
    }
}

#[derive(Default)]
pub(crate) struct NodeState {
    pub(crate) sessions: HashMap<SessionId, LocalSession>,
    pub(crate) rooms: HashMap<RoomId, Tracked>,
    pub(crate) timers: BTreeSet<(Instant, SessionId)>,
    /// Idle deadlines of followed rooms whose holder has a session here while someone waits
    /// (at most one per room, see [`Tracked::idle_at`]), earliest first. A deadline is never
    /// later than the holder's true one (it is computed from the last state seen; activity only
    /// moves the true one later): the idle script re-checks and says how long is left.
    pub(crate) idle: BTreeSet<(Instant, RoomId)>,
}

impl NodeState {
    pub(crate) fn track(&mut self, room: &RoomId) -> &mut Tracked {
        self.rooms.entry(room.clone()).or_insert_with(|| Tracked {
            id: room.clone(),
            state: RoomState::default(),
            raw: None,
            edits: Vec::new(),
            missed: 0,
            rereading: false,
            placeholder_until: None,
            active_at: None,
            idle_at: None,
            members: Vec::new(),
            watchers: Vec::new(),
            pending: 0,
        })
    }

    pub(crate) fn untrack_if_idle(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(Tracked::idle) {
            self.set_idle(room, None);
            self.rooms.remove(room);
        }
    }

    /// Sets (or clears) a followed room's idle deadline. O(log rooms). Returns true when the
    /// deadline is the earliest (the idle task must look again).
    pub(crate) fn set_idle(&mut self, room: &str, at: Option<Instant>) -> bool {
        let Some(t) = self.rooms.get_mut(room) else {
            return false;
        };
        if t.idle_at == at {
            return false;
        }
        if let Some(old) = t.idle_at.take() {
            self.idle.remove(&(old, t.id.clone()));
        }
        let Some(at) = at else {
            return false;
        };
        t.idle_at = Some(at);
        self.idle.insert((at, t.id.clone()));
        self.idle.first().is_some_and(|(first, _)| *first == at)
    }

    /// Whether this node should keep an idle deadline for a followed room: someone waits and
    /// the holder has a session here. O(holder's sessions).
    pub(crate) fn hosts_waited_on_holder(&self, t: &Tracked) -> bool {
        t.state.occupants.len() >= 2
            && t.state.occupants[0]
                .sessions
                .iter()
                .any(|s| self.sessions.contains_key(s))
    }

    /// Forgets a local session and its interest in rooms.
    pub(crate) fn forget(&mut self, id: SessionId) -> Option<LocalSession> {
        let s = self.sessions.remove(&id)?;
        if let Some(d) = s.grace_until {
            self.timers.remove(&(d, id));
        }
        for r in s.joined.iter().chain(&s.watching) {
            if let Some(t) = self.rooms.get_mut(r.as_str()) {
                t.members.retain(|&m| m != id);
                t.watchers.retain(|&m| m != id);
            }
            self.untrack_if_idle(r.as_str());
        }
        Some(s)
    }
}

/// What [`NodeState::apply`] did with a room state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// This node does not follow the room: nothing kept, nothing told.
    NotFollowed,
    /// Not newer than the last state seen (a duplicate, or one overtaken by a newer state):
    /// dropped.
    Stale,
    /// Taken as the room's last state; the notices of the change were appended.
    Changed,
}

/// What to do with a published state, from its room and version alone (before decoding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Not followed here, or not newer than the last state seen: drop it undecoded.
    Skip,
    /// Decode it and [`NodeState::apply`] it.
    Decode,
}

/// What to do with a published delta, from its room and versions alone (before decoding it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaOffer {
    /// Not followed here, or not newer than the last state seen: drop it.
    Skip,
    /// The last state seen is the one the edit was made on: decode it and
    /// [`NodeState::apply_delta`] it.
    Apply,
    /// Newer, but made on a state this node did not see (one was lost or is late, or the room
    /// was never read here): re-read the room.
    Reread,
}

/// A message on the changes channel (formats in `lua.rs`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// `r<room>\n<version>\n<state>`: a room's new state.
    Room {
        /// The room id.
        room: &'a str,
        /// The state's version (ahead of it, so that a state can be dropped undecoded).
        version: u64,
        /// The state's JSON.
        state: &'a str,
    },
    /// `d<room>\n<prev>\n<version>\n<edit>`: one edit of a room's line, from the state at
    /// version `prev` to the state at `version`.
    Delta {
        /// The room id.
        room: &'a str,
        /// The version the edit was made on.
        prev: u64,
        /// The version it made.
        version: u64,
        /// The edit's JSON (see [`crate::wire::decode_delta`]).
        edit: &'a str,
    },
    /// `v<room>\n<version>`: the room changed too much to publish (re-read it).
    Changed {
        /// The room id.
        room: &'a str,
        /// The new version.
        version: u64,
    },
    /// `s<session>\n<node>`: the session was resumed on that node.
    Resumed {
        /// The session.
        session: SessionId,
        /// The node that serves it now.
        node: &'a str,
    },
    /// `x<node>\n<session>,...`: sessions of that node closed by a sweep.
    Swept(Vec<SessionId>),
}

/// Parses a published message; `None` for anything malformed (a room message with an
/// unreadable version included: without it, nothing can be decided).
pub(crate) fn parse_message(payload: &[u8]) -> Option<Message<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let (head, body) = text.split_once('\n')?;
    let mut chars = head.chars();
    match chars.next()? {
        'r' => {
            let (version, state) = body.split_once('\n')?;
            Some(Message::Room {
                room: chars.as_str(),
                version: version.parse().ok()?,
                state,
            })
        }
        'd' => {
            let (prev, rest) = body.split_once('\n')?;
            let (version, edit) = rest.split_once('\n')?;
            Some(Message::Delta {
                room: chars.as_str(),
                prev: prev.parse().ok()?,
                version: version.parse().ok()?,
                edit,
            })
        }
        'v' => Some(Message::Changed {
            room: chars.as_str(),
            version: body.parse().ok()?,
        }),
        's' => Some(Message::Resumed {
            session: parse_session(chars.as_str()).ok()?,
            node: body,
        }),
        'x' => Some(Message::Swept(
            body.split(',')
                .filter_map(|s| parse_session(s).ok())
                .collect(),
        )),
        _ => None,
    }
}

impl NodeState {
    /// Whether a state of `room` at `version` is worth decoding: the room is followed here and
    /// the version is newer than the last seen. O(1).
    pub(crate) fn offer(&self, room: &str, version: u64) -> Offer {
        match self.rooms.get(room) {
            Some(t) if t.state.version < version => Offer::Decode,
            _ => Offer::Skip,
        }
    }

    /// A state of `room` at `version` arrived but could not be decoded, or a "changed" message
    /// came: whether the room must be re-read (it is followed and the state was newer than the
    /// last seen; the next publish would heal it too, but a quiet room may not change again for a
    /// long time). Not while a call of this node is about to bring the room's first state (see
    /// [`NodeState::offer_delta`]).
    pub(crate) fn must_reread(&self, room: &str, version: u64) -> bool {
        self.offer(room, version) == Offer::Decode
    }

    /// Whether a publish about `room` at `version` waits for this node's call: the node is
    /// joining or watching the room and has not seen it yet, and the call's reply carries every
    /// state the call made, in order. Taking a publish first could jump past them: a delta
    /// cannot be made on a room not seen (a re-read would land after a displacement the same
    /// join made, and the waiter would hear `released` without the `occupied` before it). The
    /// newest version is noted; [`NodeState::call_done`] says whether to re-read afterwards
    /// (another node's change after the call). O(1).
    pub(crate) fn defer(&mut self, room: &str, version: u64) -> bool {
        match self.rooms.get_mut(room) {
            Some(t) if t.rereading || (t.raw.is_none() && t.pending > 0) => {
                t.missed = t.missed.max(version);
                true
            }
            _ => false,
        }
    }

    /// A re-read of `room` is about to start: false when one is already under way (or the room
    /// is not followed), so that a burst of publishes after a gap asks for one re-read. While it
    /// runs, publishes wait ([`NodeState::defer`]).
    pub(crate) fn start_reread(&mut self, room: &str) -> bool {
        match self.rooms.get_mut(room) {
            Some(t) if !t.rereading => {
                t.rereading = true;
                true
            }
            _ => false,
        }
    }

    /// A re-read of `room` ended (its state applied, or it failed): whether a publish newer than
    /// what it found came meanwhile (the room is read again).
    pub(crate) fn reread_done(&mut self, room: &str) -> bool {
        let Some(t) = self.rooms.get_mut(room) else {
            return false;
        };
        t.rereading = false;
        let again = t.missed > t.state.version;
        if t.pending == 0 || t.raw.is_some() {
            t.missed = 0;
        }
        again
    }

    /// A call about `room` ended (after its reply was applied): whether the room must be re-read
    /// because a publish newer than what the reply brought was held back meanwhile (see
    /// [`NodeState::defer`]). Stops following the room if nothing else keeps it.
    pub(crate) fn call_done(&mut self, room: &RoomId) -> bool {
        let t = self.track(room);
        t.pending = t.pending.saturating_sub(1);
        let reread = t.pending == 0 && t.missed > t.state.version && !t.idle();
        if t.pending == 0 {
            t.missed = 0;
        }
        self.untrack_if_idle(room.as_str());
        reread
    }

    /// Takes a room's new state if the room is followed and the state is newer than the last
    /// seen, and appends the notices of the change (from the last seen to this one) for this
    /// node's sessions (see [`local_notices`]). States are whole, not deltas: a state that
    /// skipped versions (some were lost) is applied like any other, and its notices take this
    /// node's sessions from what they last saw straight to where they are now.
    pub(crate) fn apply(
        &mut self,
        room: &str,
        d: Decoded,
        presence_occupants: usize,
        out: &mut Vec<Notice>,
    ) -> Applied {
        let NodeState {
            sessions, rooms, ..
        } = self;
        let Some(t) = rooms.get_mut(room) else {
            return Applied::NotFollowed;
        };
        if d.state.version <= t.state.version {
            return Applied::Stale;
        }
        let old = std::mem::replace(&mut t.state, d.state);
        t.raw = Some(d.raw);
        t.edits.clear();
        t.placeholder_until = d.placeholder_until;
        t.active_at = d.active_at;
        local_notices(
            &t.id,
            &old,
            &t.state,
            &t.watchers,
            |s| sessions.contains_key(&s),
            presence_occupants,
            out,
        );
        Applied::Changed
    }

    /// What to do with a delta of `room` from `prev` to `version`. O(1).
    pub(crate) fn offer_delta(&self, room: &str, prev: u64, version: u64) -> DeltaOffer {
        match self.rooms.get(room) {
            Some(t) if t.state.version >= version => DeltaOffer::Skip,
            Some(t) if t.state.version == prev && t.raw.is_some() => DeltaOffer::Apply,
            Some(_) => DeltaOffer::Reread,
            None => DeltaOffer::Skip,
        }
    }

    /// Makes a published edit on the last state seen of a followed room, when that state is the
    /// one the edit was made on (version `prev`), and appends the notices of the change for
    /// this node's sessions, exactly as [`NodeState::apply`] would from the whole new state: the
    /// same comparison runs on the same two states. `None` when the room must be re-read
    /// instead (the versions do not chain, or the line is not the one the edit expects).
    ///
    /// Cost: the edit is O(1), but the notices compare the states before and after, which keeps
    /// a copy of the line and walks it: O(line) CPU on this node (no bytes on the network).
    pub(crate) fn apply_delta(
        &mut self,
        room: &str,
        prev: u64,
        version: u64,
        change: &crate::wire::Change,
        presence_occupants: usize,
        out: &mut Vec<Notice>,
    ) -> Option<Applied> {
        match self.offer_delta(room, prev, version) {
            DeltaOffer::Skip => {
                return Some(if self.rooms.contains_key(room) {
                    Applied::Stale
                } else {
                    Applied::NotFollowed
                });
            }
            DeltaOffer::Reread => return None,
            DeltaOffer::Apply => {}
        }
        let NodeState {
            sessions, rooms, ..
        } = self;
        let t = rooms.get_mut(room)?;
        let mut new = t.state.clone();
        change.apply_to(&mut new, version).ok()?;
        let old = std::mem::replace(&mut t.state, new);
        t.active_at = change.active_at.filter(|_| !t.state.occupants.is_empty());
        t.edits.push((version, change.raw.clone()));
        if t.edits.len() >= MAX_EDITS
            && let Some(raw) = t.raw_now()
        {
            t.raw = Some(raw);
            t.edits.clear();
        }
        local_notices(
            &t.id,
            &old,
            &t.state,
            &t.watchers,
            |s| sessions.contains_key(&s),
            presence_occupants,
            out,
        );
        Some(Applied::Changed)
    }

    /// Adopts a room's state seen for the first time (no notices: nobody here was in it). The
    /// room is followed from now on.
    pub(crate) fn adopt(&mut self, room: &RoomId, d: &Decoded) {
        let t = self.track(room);
        t.state = d.state.clone();
        t.raw = Some(d.raw.clone());
        t.edits.clear();
        t.placeholder_until = d.placeholder_until;
        t.active_at = d.active_at;
    }
}

/// The notices of a room going from `old` to `new` for this node's sessions (`here`) only: the
/// core's [`room_notices`] over views of both states that keep every occupant (so every place,
/// the holder and the first few shown are the same) but only the sessions that are here, in
/// both alike. A session that is here gets exactly the notices it would get from the whole
/// states (`room_notices` looks at a session's own place and at the line, never at another
/// session), and no notice is computed for the other nodes' sessions. `watchers` are this node's.
/// When every session is here (one node), the states are used as they are.
pub(crate) fn local_notices(
    room: &RoomId,
    old: &RoomState,
    new: &RoomState,
    watchers: &[SessionId],
    here: impl Fn(SessionId) -> bool,
    presence_occupants: usize,
    out: &mut Vec<Notice>,
) {
    let old_view = local_view(old, &here);
    let new_view = local_view(new, &here);
    room_notices(
        room,
        old_view.as_ref().unwrap_or(old),
        new_view.as_ref().unwrap_or(new),
        watchers,
        presence_occupants,
        out,
    );
}

/// `state` with only the sessions for which `here` is true (occupants without any are kept, with
/// no session: they still hold their places); `None` when every session is here. O(line).
fn local_view(state: &RoomState, here: &impl Fn(SessionId) -> bool) -> Option<RoomState> {
    let first = state
        .occupants
        .iter()
        .position(|o| o.sessions.iter().any(|&s| !here(s)))?;
    let mut occupants = Vec::with_capacity(state.occupants.len());
    occupants.extend_from_slice(&state.occupants[..first]);
    occupants.extend(state.occupants[first..].iter().map(|o| {
        let mut o = o.clone();
        o.sessions.retain(|&s| here(s));
        o
    }));
    Some(RoomState {
        version: state.version,
        occupants,
        held_since: state.held_since,
        reason: state.reason,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use occupancy_core::{DisplacedReason, OccupantKey, OccupantState};
    use proptest::prelude::*;

    /// A line from (occupant, which of its three sessions) pairs; occupant `i` is a user for even
    /// `i` (with metadata naming it) and anonymous otherwise, its sessions `10 i + 0..3`.
    fn line(version: u64, picks: &[(u8, u8)]) -> RoomState {
        let mut seen = Vec::new();
        let mut occupants = Vec::new();
        for &(i, mask) in picks {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            let base = 10 * u64::from(i);
            let key = if i.is_multiple_of(2) {
                OccupantKey::User(Arc::from(format!("user-{i}")))
            } else {
                OccupantKey::Anonymous(SessionId(base))
            };
            let meta = if i.is_multiple_of(2) {
                Meta::from_value(serde_json::json!({ "name": i })).unwrap()
            } else {
                Meta::empty()
            };
            let mask = mask % 7 + 1;
            occupants.push(OccupantState {
                key,
                meta,
                sessions: (0..3)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| SessionId(base + b))
                    .collect(),
                since: u64::from(i),
            });
        }
        RoomState {
            version,
            occupants,
            held_since: Some(version),
            reason: if version.is_multiple_of(2) {
                DisplacedReason::Idle
            } else {
                DisplacedReason::Takeover
            },
        }
    }

    proptest! {
        /// For the sessions of this node, `local_notices` gives exactly what `room_notices` gives
        /// on the whole states; for the others, nothing.
        #[test]
        fn local_notices_are_the_whole_notices_of_local_sessions(
            old in proptest::collection::vec((0u8..8, 0u8..8), 0..8),
            new in proptest::collection::vec((0u8..8, 0u8..8), 0..8),
            here_mask in any::<u32>(),
            k in 1usize..4,
        ) {
            let room = RoomId::parse("r", 8).unwrap();
            let (old, new) = (line(1, &old), line(2, &new));
            let here = |s: SessionId| here_mask & (1 << (s.0 % 32)) != 0;
            let watchers: Vec<SessionId> = (0..80).map(SessionId).filter(|&s| here(s)).take(3).collect();
            let mut whole = Vec::new();
            room_notices(&room, &old, &new, &watchers, k, &mut whole);
            whole.retain(|n| here(n.session));
            let mut local = Vec::new();
            local_notices(&room, &old, &new, &watchers, here, k, &mut local);
            prop_assert_eq!(local, whole);
        }
    }

    // ----- a node fed through a lossy link (after quinn-proto's `tests/util.rs` `Pair`) -----

    use occupancy_core::{Config, Machine, NoticeKind};

    const ROOM: &str = "doc";
    /// Sessions 0..6: 0 and 1 are two tabs of user `u0`, the rest anonymous.
    const SESSIONS: u64 = 6;

    /// Whether session `s` is hosted by the node under test (the others are another node's).
    fn hosted(s: u64, mask: u8) -> bool {
        mask & (1 << s) != 0
    }

    /// One end of the pair: the truth, a reference [`Machine`] whose room states are what the
    /// scripts would publish (same versions, same line), with the notices it gives this node's
    /// sessions.
    struct Truth {
        m: Machine,
        now: Instant,
        /// The version of the room's last change.
        last: u64,
    }

    impl Truth {
        fn new() -> Truth {
            let mut m = Machine::new(Config::default()).unwrap();
            let now = Instant::now();
            m.advance(now);
            for s in 0..SESSIONS {
                let p = (s < 2).then_some("u0");
                m.connect(
                    SessionId(s),
                    p,
                    Meta::empty(),
                    ResumeToken(u128::from(s) + 1),
                )
                .unwrap();
            }
            m.record_changes(true);
            Truth { m, now, last: 0 }
        }

        /// Runs one operation; returns the new state when the room changed (an emptied room:
        /// no line, the version of the change that emptied it, as the scripts publish it).
        fn step(&mut self, op: (u8, u64)) -> Option<RoomState> {
            self.now += std::time::Duration::from_millis(1);
            self.m.advance(self.now);
            let s = SessionId(op.1 % SESSIONS);
            let _ = match op.0 % 4 {
                0 => self.m.join(s, ROOM, None).map(drop),
                1 => self.m.leave(s, ROOM).map(drop),
                2 => self.m.takeover(s, ROOM).map(drop),
                _ => {
                    let meta = Meta::from_value(serde_json::json!({ "n": self.last % 3 })).unwrap();
                    self.m.update(s, ROOM, meta).map(drop)
                }
            };
            let mut changed = Vec::new();
            self.m.take_changes(&mut changed);
            let (_, version) = changed.pop()?;
            self.last = version;
            Some(self.state())
        }

        fn state(&self) -> RoomState {
            self.m.room(ROOM).unwrap_or_else(|| RoomState {
                version: self.last,
                ..RoomState::default()
            })
        }
    }

    /// The other end: the node state under test, hosting some sessions and following the room.
    fn node(mask: u8) -> NodeState {
        let mut n = NodeState::default();
        let room = RoomId::parse(ROOM, 64).unwrap();
        for s in (0..SESSIONS).filter(|&s| hosted(s, mask)) {
            n.sessions.insert(
                SessionId(s),
                LocalSession {
                    principal: (s < 2).then(|| Arc::from("u0")),
                    meta: Meta::empty(),
                    meta_json: "{}".into(),
                    token: ResumeToken(u128::from(s) + 1),
                    joined: vec![room.clone()],
                    watching: Vec::new(),
                    grace_until: None,
                },
            );
            n.track(&room).members.push(SessionId(s));
        }
        n.track(&room);
        n
    }

    fn decoded(state: &RoomState) -> Decoded {
        Decoded {
            state: state.clone(),
            raw: Arc::from(""),
            placeholder_until: None,
            active_at: None,
        }
    }

    /// A publish as the scripts make it (see `lua.rs`): a delta when one edit takes `old` to
    /// `new`, else the whole state, or (`big`) a "changed" message.
    #[derive(Debug, Clone)]
    enum Pub {
        Full(RoomState),
        Delta {
            prev: u64,
            version: u64,
            json: String,
        },
        Changed(u64),
    }

    fn key_str(k: &OccupantKey) -> String {
        match k {
            OccupantKey::User(u) => format!("u:{u}"),
            OccupantKey::Anonymous(s) => format!("a:{}", crate::wire::session_hex(*s)),
        }
    }

    fn meta_str(m: &Meta) -> String {
        m.as_map()
            .map_or_else(|| "{}".into(), |m| serde_json::to_string(m).unwrap())
    }

    /// The edit JSON the scripts would publish for `old` -> `new`, if one edit does it.
    fn edit_of(old: &RoomState, new: &RoomState) -> Option<serde_json::Value> {
        use serde_json::json;
        // The scripts clear the displacement reason on every bump; a state that carries one
        // came from a displacement, never from an edit.
        // A room that did not exist (nobody in line, no watcher here) is published whole.
        if new.reason != DisplacedReason::Takeover || old.occupants.is_empty() {
            return None;
        }
        let (o, n) = (&old.occupants, &new.occupants);
        let hex = |s: &SessionId| crate::wire::session_hex(*s);
        let mut e = if n.len() == o.len() + 1 && n[..o.len()] == o[..] {
            let x = &n[o.len()];
            json!({"e": "j", "o": {"k": key_str(&x.key), "m": meta_str(&x.meta), "q": "1",
                "s": x.sessions.iter().map(hex).collect::<Vec<_>>(), "t": x.since.to_string()}})
        } else if n.len() + 1 == o.len() {
            let i = (0..o.len()).find(|&i| i == n.len() || o[i] != n[i])?;
            if o[i].sessions.len() != 1 || o[..i] != n[..i] || o[i + 1..] != n[i..] {
                return None;
            }
            json!({"e": "x", "i": i, "k": key_str(&o[i].key), "s": hex(&o[i].sessions[0])})
        } else if n.len() == o.len() {
            let i = (0..o.len()).find(|&i| o[i] != n[i])?;
            if o[i + 1..] != n[i + 1..] || o[i].key != n[i].key {
                return None;
            }
            let (a, b) = (&o[i], &n[i]);
            if a.meta != b.meta && a.sessions == b.sessions {
                json!({"e": "m", "i": i, "k": key_str(&a.key), "m": meta_str(&b.meta)})
            } else if a.meta == b.meta
                && b.sessions.len() == a.sessions.len() + 1
                && b.sessions[..a.sessions.len()] == a.sessions[..]
            {
                json!({"e": "s", "i": i, "k": key_str(&a.key), "s": hex(&b.sessions[a.sessions.len()])})
            } else if a.meta == b.meta && b.sessions.len() + 1 == a.sessions.len() {
                let j = (0..a.sessions.len())
                    .find(|&j| j == b.sessions.len() || a.sessions[j] != b.sessions[j])?;
                let mut rest = a.sessions.to_vec();
                rest.remove(j);
                if rest[..] != b.sessions[..] {
                    return None;
                }
                json!({"e": "x", "i": i, "k": key_str(&a.key), "s": hex(&a.sessions[j])})
            } else {
                return None;
            }
        } else {
            return None;
        };
        if let Some(h) = new.held_since {
            e["h"] = json!(h.to_string());
        }
        Some(e)
    }

    fn publish_of(old: &RoomState, new: &RoomState, big: bool) -> Pub {
        match edit_of(old, new) {
            Some(e) => Pub::Delta {
                prev: old.version,
                version: new.version,
                json: e.to_string(),
            },
            None if big => Pub::Changed(new.version),
            None => Pub::Full(new.clone()),
        }
    }

    /// What the link does with one published state.
    #[derive(Debug, Clone, Copy)]
    enum Fate {
        Deliver,
        Lose,
        /// Delivered twice (a publish and the reply of the node's own call both carry it).
        Duplicate,
        /// Held back until `n` more states were published (then delivered, out of order).
        Delay(u8),
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            4 => Just(Fate::Deliver),
            1 => Just(Fate::Lose),
            1 => Just(Fate::Duplicate),
            1 => (1u8..4).prop_map(Fate::Delay),
        ]
    }

    /// What a client makes of the notices its session gets: whether it holds and its place.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct View {
        version: u64,
        holding: bool,
        position: Option<u32>,
        released: u32,
    }

    /// The pair: the truth publishes, the link loses, duplicates and delays, the node applies.
    /// Checks every delivery: the node's version never goes back; a state not newer than the
    /// last seen is dropped and tells nobody anything; every notice goes to a hosted session,
    /// with a version above the last that session got; `released` never comes twice in a row to
    /// a session without it losing the room in between; notices carry the applied state's
    /// version.
    struct Pair {
        truth: Truth,
        node: NodeState,
        mask: u8,
        /// Changes that are not one edit go as "changed" messages (a long line), else whole.
        big: bool,
        in_flight: Vec<(u8, Pub)>,
        views: HashMap<SessionId, View>,
        applied: Vec<u64>,
    }

    impl Pair {
        fn new(mask: u8, big: bool) -> Pair {
            Pair {
                truth: Truth::new(),
                node: node(mask),
                mask,
                big,
                in_flight: Vec::new(),
                views: HashMap::new(),
                applied: Vec::new(),
            }
        }

        fn deliver(&mut self, st: &RoomState) -> Result<(), TestCaseError> {
            let before = self.node.rooms[ROOM].state.version;
            let mut out = Vec::new();
            let r = self.node.apply(ROOM, decoded(st), 3, &mut out);
            let after = self.node.rooms[ROOM].state.version;
            prop_assert!(
                after >= before,
                "the node went back from {before} to {after}"
            );
            if st.version <= before {
                prop_assert_eq!(r, Applied::Stale);
                prop_assert!(out.is_empty(), "a stale state told {:?}", out);
                return Ok(());
            }
            prop_assert_eq!(r, Applied::Changed);
            prop_assert_eq!(after, st.version);
            self.check_told(out, st.version)
        }

        /// A publish arrives: a state is applied; a delta is applied if it chains on the last
        /// state seen, else (like a "changed" message newer than the last seen) the node re-reads
        /// the room and gets the truth as it is now.
        fn deliver_pub(&mut self, p: &Pub) -> Result<(), TestCaseError> {
            match p {
                Pub::Full(st) => self.deliver(st),
                Pub::Changed(v) => {
                    if self.node.must_reread(ROOM, *v) {
                        let truth = self.truth.state();
                        self.deliver(&truth)?;
                    }
                    Ok(())
                }
                Pub::Delta {
                    prev,
                    version,
                    json,
                } => {
                    let before = self.node.rooms[ROOM].state.version;
                    let change = crate::wire::decode_delta(json).expect("a delta decodes");
                    let mut out = Vec::new();
                    let r = self
                        .node
                        .apply_delta(ROOM, *prev, *version, &change, 3, &mut out);
                    let after = self.node.rooms[ROOM].state.version;
                    prop_assert!(
                        after >= before,
                        "the node went back from {before} to {after}"
                    );
                    match r {
                        None => {
                            prop_assert!(out.is_empty());
                            prop_assert!(before != *prev && *version > before);
                            let truth = self.truth.state();
                            self.deliver(&truth)
                        }
                        Some(Applied::Changed) => {
                            prop_assert_eq!(before, *prev, "a delta applied on another state");
                            prop_assert_eq!(after, *version);
                            self.check_told(out, *version)
                        }
                        Some(r) => {
                            prop_assert_eq!(r, Applied::Stale);
                            prop_assert!(*version <= before);
                            prop_assert!(out.is_empty(), "a stale delta told {:?}", out);
                            Ok(())
                        }
                    }
                }
            }
        }

        /// Checks the notices of a change the node took (to `version`), updating the views.
        fn check_told(&mut self, out: Vec<Notice>, version: u64) -> Result<(), TestCaseError> {
            self.applied.push(version);
            for n in out {
                prop_assert!(
                    hosted(n.session.0, self.mask),
                    "notice for another node's session: {n:?}"
                );
                let v = self.views.entry(n.session).or_default();
                // Notices carry the version of the state that made them: above anything this
                // node told before (states only move forward, checked above).
                prop_assert_eq!(n.version(), version);
                prop_assert!(n.version() >= v.version);
                v.version = n.version();
                match n.kind {
                    NoticeKind::Released { .. } => {
                        prop_assert!(!v.holding, "released twice without losing the room: {n:?}");
                        v.holding = true;
                        v.position = Some(0);
                        v.released += 1;
                    }
                    NoticeKind::Occupied { position, .. }
                    | NoticeKind::Displaced { position, .. } => {
                        v.holding = false;
                        v.position = Some(position);
                    }
                    NoticeKind::Presence(p) => {
                        v.position = p.position;
                        v.holding = p.position == Some(0);
                    }
                    other => prop_assert!(false, "unexpected notice {other:?}"),
                }
            }
            Ok(())
        }

        /// One operation on the truth. When its caller is hosted here, the node made the call:
        /// the script's reply carries the room's state (reliably) and tells the caller its place;
        /// the publish of the state (if any) goes through the link either way.
        fn step(&mut self, op: (u8, u64), fate: Fate) -> Result<(), TestCaseError> {
            let old = self.truth.state();
            let st = self
                .truth
                .step(op)
                .map(|st| publish_of(&old, &st, self.big));
            let caller = op.1 % SESSIONS;
            if hosted(caller, self.mask) {
                // The reply carries the room's state also when the call changed nothing (an
                // idempotent join): it may be newer than what the node saw.
                let truth = self.truth.state();
                self.deliver(&truth)?;
                let id = SessionId(caller);
                let place = truth
                    .occupants
                    .iter()
                    .position(|o| o.sessions.contains(&id));
                let v = self.views.entry(id).or_default();
                v.position = place.map(|p| p as u32);
                v.holding = place == Some(0);
            }
            if let Some(st) = st {
                match fate {
                    Fate::Deliver => self.deliver_pub(&st)?,
                    Fate::Lose => {}
                    Fate::Duplicate => {
                        self.deliver_pub(&st)?;
                        self.deliver_pub(&st)?;
                    }
                    Fate::Delay(n) => self.in_flight.push((n, st)),
                }
            }
            // Delayed states whose time came arrive now, after newer ones.
            let mut due = Vec::new();
            self.in_flight.retain_mut(|(n, st)| {
                if *n == 0 {
                    due.push(st.clone());
                    false
                } else {
                    *n -= 1;
                    true
                }
            });
            for st in due {
                self.deliver_pub(&st)?;
            }
            Ok(())
        }

        /// The link drains, then the node re-reads the room (as after a resubscription): it must
        /// end at the truth, and every hosted session's view with it.
        fn settle(&mut self) -> Result<(), TestCaseError> {
            for (_, st) in std::mem::take(&mut self.in_flight) {
                self.deliver_pub(&st)?;
            }
            let truth = self.truth.state();
            self.deliver(&truth)?;
            prop_assert_eq!(&self.node.rooms[ROOM].state, &truth);
            for s in (0..SESSIONS).filter(|&s| hosted(s, self.mask)) {
                let id = SessionId(s);
                let place = truth
                    .occupants
                    .iter()
                    .position(|o| o.sessions.contains(&id));
                let Some(v) = self.views.get(&id) else {
                    // Never told anything: it never stood in the room the node saw.
                    prop_assert!(
                        place.is_none() || truth.version == 0,
                        "{id:?} at {place:?} never told"
                    );
                    continue;
                };
                if let Some(place) = place {
                    prop_assert_eq!(v.position, Some(place as u32), "{:?}'s place", id);
                    prop_assert_eq!(v.holding, place == 0, "{:?} holding", id);
                } else {
                    prop_assert!(!v.holding, "{:?} left, still believes it holds", id);
                }
            }
            Ok(())
        }
    }

    proptest! {
        /// Lost, duplicated and reordered publishes: the node never goes back, never tells a
        /// stale state, and ends where the truth is (see [`Pair`]).
        #[test]
        fn a_lossy_link_never_misleads_the_node(
            mask in 1u8..64,
            big in any::<bool>(),
            steps in proptest::collection::vec(((0u8..4, 0u64..SESSIONS), fate()), 1..60),
        ) {
            let mut pair = Pair::new(mask, big);
            for (op, fate) in steps {
                pair.step(op, fate)?;
            }
            pair.settle()?;
        }

        /// With a perfect link the node tells its sessions exactly what the machine tells them:
        /// the same notices, change by change.
        #[test]
        fn a_perfect_link_gives_the_machines_notices(
            mask in 1u8..64,
            ops in proptest::collection::vec((0u8..4, 0u64..SESSIONS), 1..60),
        ) {
            let mut truth = Truth::new();
            let mut node = node(mask);
            let _ = truth.m.drain_notices().count();
            for op in ops {
                let old = truth.state();
                let st = truth.step(op);
                let mut want: Vec<String> = truth
                    .m
                    .drain_notices()
                    .filter(|n| hosted(n.session.0, mask))
                    .map(|n| format!("{n:?}"))
                    .collect();
                let mut got = Vec::new();
                // Through deltas where the scripts would publish one (the notices must be the
                // same as from the whole state), else the whole state.
                if let Some(st) = st {
                    match publish_of(&old, &st, false) {
                        Pub::Delta { prev, version, json } => {
                            let c = crate::wire::decode_delta(&json).unwrap();
                            prop_assert_eq!(
                                node.apply_delta(ROOM, prev, version, &c, 8, &mut got),
                                Some(Applied::Changed)
                            );
                            prop_assert_eq!(&node.rooms[ROOM].state, &st);
                        }
                        _ => prop_assert_eq!(node.apply(ROOM, decoded(&st), 8, &mut got), Applied::Changed),
                    }
                }
                let mut got: Vec<String> = got.iter().map(|n| format!("{n:?}")).collect();
                want.sort();
                got.sort();
                prop_assert_eq!(got, want, "after {:?}", op);
            }
        }
    }

    /// Runs `ops` on a truth and a node hosting sessions 0 and 2 (through whole states), then
    /// `last`: checks that the scripts would publish it as a delta of `kind`, and that the node
    /// makes it on the state it was made on, ending at the truth with the notices the whole
    /// state gives (a twin node takes the whole state); on any other state the node re-reads.
    fn delta_kind(ops: &[(u8, u64)], last: (u8, u64), kind: &str) {
        let mut truth = Truth::new();
        let (mut n, mut twin) = (node(0b101), node(0b101));
        let mut out = Vec::new();
        for &op in ops {
            if let Some(st) = truth.step(op) {
                n.apply(ROOM, decoded(&st), 8, &mut out);
                twin.apply(ROOM, decoded(&st), 8, &mut out);
            }
        }
        let old = truth.state();
        let st = truth.step(last).expect("the last op changes the room");
        let Pub::Delta {
            prev,
            version,
            json,
        } = publish_of(&old, &st, true)
        else {
            panic!("{last:?} is not one edit")
        };
        assert!(json.contains(&format!(r#""e":"{kind}""#)), "{json}");
        let c = crate::wire::decode_delta(&json).unwrap();
        // A gap: the delta was made on a state this node has not seen.
        assert_eq!(
            n.apply_delta(ROOM, prev + 1, version, &c, 8, &mut out),
            None
        );
        assert_eq!(n.offer_delta(ROOM, prev + 1, version), DeltaOffer::Reread);
        assert_eq!(n.offer_delta(ROOM, prev, version), DeltaOffer::Apply);
        assert_eq!(n.offer_delta("other", prev, version), DeltaOffer::Skip);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        assert_eq!(
            n.apply_delta(ROOM, prev, version, &c, 8, &mut got),
            Some(Applied::Changed)
        );
        assert_eq!(
            twin.apply(ROOM, decoded(&st), 8, &mut want),
            Applied::Changed
        );
        assert_eq!(n.rooms[ROOM].state, st);
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        // Again (a duplicate): stale, nothing told.
        got.clear();
        assert_eq!(
            n.apply_delta(ROOM, prev, version, &c, 8, &mut got),
            Some(Applied::Stale)
        );
        assert!(got.is_empty());
    }

    #[test]
    fn a_delta_appends_an_occupant() {
        delta_kind(&[(0, 2), (0, 3)], (0, 4), "j");
    }

    #[test]
    fn a_delta_adds_a_session_to_an_occupant() {
        delta_kind(&[(0, 0), (0, 2)], (0, 1), "s");
    }

    #[test]
    fn a_delta_removes_a_session_or_an_occupant() {
        delta_kind(&[(0, 0), (0, 1), (0, 2)], (1, 1), "x");
        delta_kind(&[(0, 0), (0, 2), (0, 3)], (1, 2), "x");
        // The holder leaving: a hand-over, still one edit.
        delta_kind(&[(0, 3), (0, 2), (0, 4)], (1, 3), "x");
    }

    #[test]
    fn a_delta_changes_an_occupants_meta() {
        delta_kind(&[(0, 2), (0, 3)], (3, 3), "m");
    }

    /// While this node's call is about to bring a room's first state, publishes about it wait
    /// for the reply (which tells the call's changes one by one); one newer than the reply's
    /// state makes the node re-read the room once the call is done.
    #[test]
    fn a_room_being_joined_waits_for_the_reply() {
        let room = RoomId::parse(ROOM, 64).unwrap();
        let mut n = node(0b1);
        n.rooms.get_mut(ROOM).unwrap().pending = 1;
        assert!(n.defer(ROOM, 5));
        assert!(n.defer(ROOM, 7));
        assert!(!n.defer("other", 7));
        // The reply brings version 5; 7 came meanwhile: re-read.
        let mut out = Vec::new();
        let st = RoomState {
            version: 5,
            ..RoomState::default()
        };
        n.apply(ROOM, decoded(&st), 8, &mut out);
        assert!(n.call_done(&room));
        // Seen now: publishes are taken (a gap is re-read, see `offer_delta`).
        assert!(!n.defer(ROOM, 9));
        assert_eq!(n.offer_delta(ROOM, 6, 9), DeltaOffer::Reread);
        // The reply brought the newest: nothing to re-read.
        let mut m = node(0b1);
        m.rooms.get_mut(ROOM).unwrap().pending = 1;
        assert!(m.defer(ROOM, 5));
        m.apply(ROOM, decoded(&st), 8, &mut out);
        assert!(!m.call_done(&room));
    }

    /// One re-read at a time: publishes that come meanwhile wait, and one newer than what the
    /// re-read found makes the node read again.
    #[test]
    fn one_re_read_at_a_time() {
        let mut n = node(0b1);
        let mut out = Vec::new();
        let st = |version| RoomState {
            version,
            ..RoomState::default()
        };
        n.apply(ROOM, decoded(&st(3)), 8, &mut out);
        assert_eq!(n.offer_delta(ROOM, 4, 5), DeltaOffer::Reread);
        assert!(n.start_reread(ROOM));
        assert!(!n.start_reread(ROOM), "a second one while the first runs");
        assert!(!n.start_reread("other"));
        assert!(n.defer(ROOM, 6));
        assert!(n.defer(ROOM, 7));
        // The re-read found 6: 7 came after it.
        n.apply(ROOM, decoded(&st(6)), 8, &mut out);
        assert!(n.reread_done(ROOM));
        assert!(!n.defer(ROOM, 8));
        assert!(n.start_reread(ROOM));
        n.apply(ROOM, decoded(&st(7)), 8, &mut out);
        assert!(!n.reread_done(ROOM), "nothing newer came");
    }

    #[test]
    fn delta_and_changed_messages_parse() {
        assert_eq!(
            parse_message(b"ddoc\n11\n12\n{\"e\":\"j\"}"),
            Some(Message::Delta {
                room: "doc",
                prev: 11,
                version: 12,
                edit: "{\"e\":\"j\"}"
            })
        );
        assert_eq!(
            parse_message(b"vdoc\n12"),
            Some(Message::Changed {
                room: "doc",
                version: 12
            })
        );
        assert_eq!(parse_message(b"ddoc\n11\n{}"), None);
        assert_eq!(parse_message(b"vdoc\nx"), None);
    }

    /// The JSON kept for `restore` follows the deltas: the last whole state with the edits made
    /// on it is the state the scripts stored.
    #[test]
    fn the_raw_state_follows_deltas() {
        let raw = r#"{"v":"5","h":"100","r":"idle","p":"1","o":[{"k":"u:a","m":"{}","q":"5","s":["0000000000000001"],"t":"1"}],"w":{}}"#;
        let d1 = Arc::from(
            r#"{"e":"j","o":{"k":"a:0000000000000002","m":"{}","q":"6","s":["0000000000000002"],"t":"2"},"h":"100"}"#,
        );
        let d2 = Arc::from(r#"{"e":"x","i":0,"k":"u:a","s":"0000000000000001","h":"200"}"#);
        let out = crate::wire::patch_raw(raw, &[(6, d1), (7, d2)]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":"7","h":"200","o":[{"k":"a:0000000000000002","m":"{}","q":"6","s":["0000000000000002"],"t":"2"}],"w":{}})
        );
    }

    /// A followed room's newer state that could not be decoded is re-read; an older one, or one
    /// of a room not followed, is not.
    #[test]
    fn an_undecodable_newer_state_of_a_followed_room_is_re_read() {
        let mut n = node(0b1);
        let mut out = Vec::new();
        let st = RoomState {
            version: 5,
            ..RoomState::default()
        };
        assert_eq!(n.apply(ROOM, decoded(&st), 8, &mut out), Applied::Changed);
        assert!(n.must_reread(ROOM, 6));
        assert!(!n.must_reread(ROOM, 5));
        assert!(!n.must_reread(ROOM, 4));
        assert!(!n.must_reread("other", 9));
        assert_eq!(n.offer("other", 9), Offer::Skip);
        assert_eq!(
            n.apply("other", decoded(&st), 8, &mut out),
            Applied::NotFollowed
        );
    }

    #[test]
    fn published_messages_parse_or_are_refused() {
        assert_eq!(
            parse_message(b"rdoc\n12\n{\"v\":\"12\"}"),
            Some(Message::Room {
                room: "doc",
                version: 12,
                state: "{\"v\":\"12\"}"
            })
        );
        assert_eq!(parse_message(b"rdoc\nx\n{}"), None);
        assert_eq!(parse_message(b"rdoc"), None);
        assert_eq!(parse_message(b"q\n"), None);
        assert_eq!(parse_message(&[b'r', 0xff, b'\n']), None);
        let s = crate::wire::session_hex(SessionId(7));
        assert_eq!(
            parse_message(format!("s{s}\nnode-b").as_bytes()),
            Some(Message::Resumed {
                session: SessionId(7),
                node: "node-b"
            })
        );
        assert_eq!(
            parse_message(format!("xnode-b\n{s},junk,{s}").as_bytes()),
            Some(Message::Swept(vec![SessionId(7), SessionId(7)]))
        );
    }
}
