//! Notices — what a session is told when a room changes — and [`room_notices`], the pure function
//! that states the rules by comparing a room's old and new state. It is the reference: the state
//! machine describes each edit it makes instead of diffing rooms (O(change), see `change.rs`) and
//! the property tests hold it to this function; the Redis backend uses it when a room's new state
//! arrives over pub/sub (it only looks at states, so a lost or late state is healed by the next).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::ids::{OccupantKey, Person, RoomId, SessionId};
use crate::state::{OccupantState, RoomRef, RoomState};

/// A notice for one session about one room.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Who it is for.
    pub session: SessionId,
    /// Which room it is about.
    pub room: RoomId,
    /// What happened.
    pub kind: NoticeKind,
}

impl Notice {
    /// The room version this notice reflects (clients drop notices older than what they have).
    pub fn version(&self) -> u64 {
        match &self.kind {
            NoticeKind::Occupied { version, .. }
            | NoticeKind::Released { version }
            | NoticeKind::Displaced { version, .. } => *version,
            NoticeKind::Presence(p) => p.body.version,
        }
    }
}

/// What a notice says. More kinds may come (`#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NoticeKind {
    /// You joined and someone else holds the room (the article's `is_occupied`).
    Occupied {
        /// Room version.
        version: u64,
        /// Who holds it.
        holder: Person,
        /// Your place: 1 = next in line.
        position: u32,
    },
    /// You now hold the room (the article's `is_released`). Sent exactly once per hand-over to
    /// every session of the new holder.
    Released {
        /// Room version.
        version: u64,
    },
    /// The room changed: who holds it, your place, who waits.
    Presence(Presence),
    /// Someone took the room over from you; you are now `position` in line.
    Displaced {
        /// Room version.
        version: u64,
        /// Who took it.
        by: Person,
        /// Your new place (1 = next in line).
        position: u32,
        /// Why.
        reason: DisplacedReason,
    },
}

/// Why a holder was displaced (`displaced.reason` on the wire): `"takeover"`, `"idle"` or
/// `"server"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisplacedReason {
    /// Someone in the line took the room over.
    #[default]
    Takeover,
    /// The holder did nothing for [`Config::idle_timeout`](crate::Config::idle_timeout) while
    /// someone waited (or joined): the next in line got the room.
    Idle,
    /// The application forced a release ([`Hub::release`](crate::Hub::release)).
    Server,
}

impl DisplacedReason {
    /// The reason's wire name: `"takeover"`, `"idle"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DisplacedReason::Takeover => "takeover",
            DisplacedReason::Idle => "idle",
            DisplacedReason::Server => "server",
        }
    }
}

/// A presence notice: the shared room summary plus this session's own place.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    /// The summary, shared by every recipient of one change.
    pub body: Arc<PresenceBody>,
    /// Your place (0 = holding); `None` for a watcher, who does not stand in line.
    pub position: Option<u32>,
}

/// The part of a presence notice that is the same for everyone in the room.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceBody {
    /// Room version.
    pub version: u64,
    /// Who holds the room (`None` when the room is empty).
    pub holder: Option<Person>,
    /// When the holder was granted the room: Unix time in milliseconds (`None` when empty).
    pub held_since: Option<u64>,
    /// How many stand behind the holder.
    pub waiting: u32,
    /// The first few occupants, holder first (`Config::presence_occupants`).
    pub occupants: Vec<Person>,
}

impl PresenceBody {
    /// The summary of a room state.
    pub fn of(state: &RoomState, presence_occupants: usize) -> Self {
        Self::of_ref(state.into(), presence_occupants)
    }

    /// The summary of a line the state machine keeps. O(k).
    pub(crate) fn of_line(
        version: u64,
        held_since: Option<u64>,
        line: &crate::line::Line,
        presence_occupants: usize,
    ) -> Self {
        PresenceBody {
            version,
            holder: line.front().map(OccupantState::person),
            held_since: line.front().and(held_since),
            waiting: line.len().saturating_sub(1) as u32,
            occupants: line.top(presence_occupants),
        }
    }

    /// The summary of a borrowed room state.
    pub fn of_ref(state: RoomRef<'_>, presence_occupants: usize) -> Self {
        PresenceBody {
            version: state.version,
            holder: state.holder().map(OccupantState::person),
            held_since: state.holder().and(state.held_since),
            waiting: state.waiting() as u32,
            occupants: state
                .occupants
                .iter()
                .take(presence_occupants)
                .map(OccupantState::person)
                .collect(),
        }
    }
}

fn same_occupant(a: &OccupantState, b: &OccupantState) -> bool {
    a.key == b.key && a.sessions == b.sessions
}

fn same_person(a: &OccupantState, b: &OccupantState) -> bool {
    a.key == b.key && (a.meta.ptr_eq(&b.meta) || a.meta == b.meta)
}

/// Computes the notices for a room going from `old` to `new` (use `RoomState::default()` with the
/// right version for a room that did not exist). `watchers` are sessions watching the room without
/// standing in line.
///
/// The rules, for each session standing in `new`:
/// - it was not in `old` and is not holding → [`NoticeKind::Occupied`];
/// - it was in `old`, holds in `new`, and a *different* occupant held in `old` → `Released`
///   (a first join into an empty room is not a hand-over: the join reply says so);
/// - it held in `old` and stands further back in `new` → `Displaced`;
/// - `Presence` when anything it shows changed: it is new, its place changed, the holder changed,
///   the first few occupants changed, or — for those within that first few, who see the list —
///   the number waiting changed. Someone deep in a long line is not told about every join at the
///   tail (that would be quadratic work in a busy room); they are told when their place moves.
///
/// Sessions that left get nothing (their leave reply says so). Every watcher gets `Presence` on
/// every change (once: a watcher that also stands in the line gets only its member presence). Nothing is produced when the version did not change.
pub fn room_notices<'o, 'n>(
    room: &RoomId,
    old: impl Into<RoomRef<'o>>,
    new: impl Into<RoomRef<'n>>,
    watchers: &[SessionId],
    presence_occupants: usize,
    out: &mut Vec<Notice>,
) {
    let (old, new) = (old.into(), new.into());
    if old.version == new.version {
        return;
    }
    let k = presence_occupants;
    let old_holder = old.holder();
    let new_holder = new.holder();
    let holder_changed = old_holder.map(|o| &o.key) != new_holder.map(|o| &o.key);
    let top_changed = old.occupants.len().min(k) != new.occupants.len().min(k)
        || old
            .occupants
            .iter()
            .zip(new.occupants)
            .take(k)
            .any(|(a, b)| !same_person(a, b));
    let waiting_changed = old.waiting() != new.waiting();

    let mut body: Option<Arc<PresenceBody>> = None;
    let mut presence = |session: SessionId, position: Option<u32>, out: &mut Vec<Notice>| {
        let body = body
            .get_or_insert_with(|| Arc::new(PresenceBody::of_ref(new, presence_occupants)))
            .clone();
        out.push(Notice {
            session,
            room: room.clone(),
            kind: NoticeKind::Presence(Presence { body, position }),
        });
    };

    // Fast path for the common case of a change at the tail (a join, a leave from the back): the
    // unchanged prefix keeps every place, so only its first few can need a presence.
    let prefix = old
        .occupants
        .iter()
        .zip(new.occupants)
        .take_while(|(a, b)| same_occupant(a, b))
        .count();
    for (i, occ) in new.occupants.iter().enumerate().take(prefix) {
        if holder_changed || top_changed || (i < k && waiting_changed) {
            for &s in &occ.sessions {
                presence(s, Some(i as u32), out);
            }
        } else if i >= k {
            break;
        }
    }

    // The rest: look each occupant up in the old line.
    // The rest: find each occupant in the old line. Every transition is one edit (an append, a
    // removal, a move to the front), so an occupant is almost always at the same index or one off;
    // look there first, and build a hash index of the old line only if that fails.
    let rest_old = &old.occupants[prefix..];
    let mut index: Option<HashMap<&OccupantKey, usize>> = None;
    let mut find = |i: usize, occ: &OccupantState| -> Option<(usize, &OccupantState)> {
        for j in [i, i + 1, i.wrapping_sub(1)] {
            if let Some(o) = old.occupants.get(j)
                && j >= prefix
                && o.key == occ.key
            {
                return Some((j, o));
            }
        }
        if rest_old.is_empty() {
            return None;
        }
        let map = index.get_or_insert_with(|| {
            rest_old
                .iter()
                .enumerate()
                .map(|(k, o)| (&o.key, prefix + k))
                .collect()
        });
        map.get(&occ.key).map(|&j| (j, &old.occupants[j]))
    };
    for (i, occ) in new.occupants.iter().enumerate().skip(prefix) {
        let found = find(i, occ);
        for &s in &occ.sessions {
            let old_pos = found.and_then(|(p, o)| o.sessions.contains(&s).then_some(p));
            match old_pos {
                None if i > 0 => out.push(Notice {
                    session: s,
                    room: room.clone(),
                    kind: NoticeKind::Occupied {
                        version: new.version,
                        holder: new.occupants[0].person(),
                        position: i as u32,
                    },
                }),
                None => {}
                Some(p) => {
                    if i == 0 && holder_changed && old_holder.is_some() {
                        out.push(Notice {
                            session: s,
                            room: room.clone(),
                            kind: NoticeKind::Released {
                                version: new.version,
                            },
                        });
                    }
                    if p == 0 && i > 0 {
                        out.push(Notice {
                            session: s,
                            room: room.clone(),
                            kind: NoticeKind::Displaced {
                                version: new.version,
                                by: new.occupants[0].person(),
                                position: i as u32,
                                reason: new.reason,
                            },
                        });
                    }
                }
            }
            if old_pos != Some(i) || holder_changed || top_changed || (i < k && waiting_changed) {
                presence(s, Some(i as u32), out);
            }
        }
    }

    if !watchers.is_empty() {
        // A session that watches a room it also stands in already got its own presence above.
        let mut members: Vec<SessionId> = new
            .occupants
            .iter()
            .flat_map(|o| o.sessions.iter().copied())
            .collect();
        members.sort_unstable();
        for &w in watchers {
            if members.binary_search(&w).is_err() {
                presence(w, None, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Meta, OccupantKey};

    fn line(version: u64, ids: &[u64]) -> RoomState {
        RoomState {
            version,
            occupants: ids
                .iter()
                .map(|&i| OccupantState {
                    key: OccupantKey::Anonymous(SessionId(i)),
                    meta: Meta::empty(),
                    sessions: crate::Sessions::one(SessionId(i)),
                    since: i,
                })
                .collect(),
            ..RoomState::default()
        }
    }

    /// States from another node can be several changes apart (a lost message): any reordering
    /// must still give the right notices, not just the one-edit cases the machine produces.
    #[test]
    fn arbitrary_reordering_between_states() {
        let room = RoomId::parse("r", 8).unwrap();
        let old = line(1, &[1, 2, 3, 4, 5, 6]);
        let new = line(9, &[6, 5, 4, 3, 2, 1, 7]);
        let mut out = Vec::new();
        room_notices(&room, &old, &new, &[], 3, &mut out);
        let kinds = |s: u64| -> Vec<&NoticeKind> {
            out.iter()
                .filter(|n| n.session == SessionId(s))
                .map(|n| &n.kind)
                .collect()
        };
        assert!(matches!(
            kinds(6)[..],
            [NoticeKind::Released { version: 9 }, NoticeKind::Presence(_)]
        ));
        assert!(matches!(
            kinds(1)[..],
            [
                NoticeKind::Displaced { position: 5, .. },
                NoticeKind::Presence(_)
            ]
        ));
        assert!(matches!(
            kinds(7)[..],
            [
                NoticeKind::Occupied { position: 6, .. },
                NoticeKind::Presence(_)
            ]
        ));
        for s in 1..=7u64 {
            let pos = new.position_of_session(SessionId(s)).unwrap() as u32;
            let p = kinds(s).into_iter().find_map(|k| match k {
                NoticeKind::Presence(p) => p.position,
                _ => None,
            });
            assert_eq!(p, Some(pos), "session {s}");
        }
    }
}
