//! What the state machine tells people about an edit it has just made to a room's line.
//!
//! The machine knows which edit it made — an occupant appended, one removed at place p, one moved
//! to the front, a batch of removals — so it describes the edit as a [`Change`] instead of
//! diffing the whole old and new line. [`Change::emit`] then visits only the places whose view
//! changed: the first `k` (who see the list and the count), the range of places that moved, the
//! session that is new, the new and the displaced holder. The rules are those of
//! [`room_notices`](crate::room_notices), which stays as the reference model: the property tests
//! check that both give the same notices for every change.
//!
//! Urgent notices (`released`, `displaced`, `occupied`) go into the outbox before the room's
//! presence fan-out, so a driver that delivers in outbox order hands the room over before it
//! tells ten thousand waiters their new places.

use crate::ids::{RoomId, SessionId};
use crate::line::Line;
use crate::notice::{DisplacedReason, Notice, NoticeKind, PresenceBody};
use crate::outbox::{Outbox, Presences};

/// One edit of a room's line, as seen by the people in it. Built by the machine right after it
/// changed the line; every field describes the line *after* the edit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change {
    /// The room's new version.
    pub version: u64,
    /// Another occupant holds now (or the room emptied, or filled).
    pub holder_changed: bool,
    /// The holder changed and somebody held before: the new holder's sessions get `released`.
    pub released: bool,
    /// The first `k` occupants (who they are, their metadata, how many) changed: everyone is
    /// told, since everyone's presence lists them.
    pub top_changed: bool,
    /// The number waiting changed: the first `k` are told (they see the count next to the list).
    pub waiting_changed: bool,
    /// Places `moved.0 .. moved.1` now hold occupants whose place changed.
    pub moved: (usize, usize),
    /// A session new to the line, at this place: `occupied` unless it holds, and a presence.
    pub new_session: Option<(SessionId, usize)>,
    /// The previous holder, displaced to this place (by a take over, idle expiry, a forced
    /// release: `reason`).
    pub displaced: Option<usize>,
    /// Why the holder was displaced, when `displaced` is set.
    pub reason: DisplacedReason,
}

impl Change {
    /// Emits the notices of this change into `out`: urgent ones first, then presences in line
    /// order, then the watchers'. `is_member` says whether a watcher also stands in the line (it
    /// then got its member presence already); `held_since` is the room's after the change. Cost: O(k + moved + new holder's sessions +
    /// watchers), or O(line) when the top changed (everyone's view shows the top).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn emit(
        &self,
        room: &RoomId,
        held_since: Option<u64>,
        line: &Line,
        watchers: &[SessionId],
        is_member: impl Fn(SessionId) -> bool,
        k: usize,
        out: &mut Outbox,
    ) {
        let version = self.version;
        let notice = |session, kind| Notice {
            session,
            room: room.clone(),
            kind,
        };
        // Urgent first.
        if self.released
            && let Some(holder) = line.front()
        {
            for &s in &holder.sessions {
                out.push(notice(s, NoticeKind::Released { version }));
            }
        }
        if let Some(place) = self.displaced
            && let (Some(by), Some(old)) = (line.front(), line.get(place))
        {
            let by = by.person();
            for &s in &old.sessions {
                out.push(notice(
                    s,
                    NoticeKind::Displaced {
                        version,
                        by: by.clone(),
                        position: place as u32,
                        reason: self.reason,
                    },
                ));
            }
        }
        if let Some((s, place)) = self.new_session
            && place > 0
            && let Some(holder) = line.front()
        {
            out.push(notice(
                s,
                NoticeKind::Occupied {
                    version,
                    holder: holder.person(),
                    position: place as u32,
                },
            ));
        }

        // Presence: one body shared by every recipient of this change; a crowded room's
        // presences become one fan-out entry, expanded after the driver released its lock.
        let n = line.len();
        let (from, to) = self.moved;
        let everyone = self.holder_changed || self.top_changed;
        let head = if everyone {
            n
        } else if self.waiting_changed {
            k.min(n)
        } else {
            0
        };
        let expected = if everyone {
            n
        } else {
            head + to.min(n).saturating_sub(from.max(head)) + 1
        } + watchers.len();
        let mut presences = Presences::new(room, expected, out);
        let body = || PresenceBody::of_line(version, held_since, line, k);
        let mut told_new = false;
        let tell = |from: usize, to: usize, told_new: &mut bool, p: &mut Presences<'_>| {
            for (place, o) in line.iter_from(from).take(to.saturating_sub(from)) {
                for &s in &o.sessions {
                    p.tell(s, Some(place as u32), body);
                }
                if self.new_session.is_some_and(|(_, p)| p == place) {
                    *told_new = true;
                }
            }
        };
        tell(0, head, &mut told_new, &mut presences);
        if !everyone {
            tell(from.max(head), to.min(n), &mut told_new, &mut presences);
            if !told_new && let Some((s, place)) = self.new_session {
                presences.tell(s, Some(place as u32), body);
            }
        }
        for &w in watchers {
            if !is_member(w) {
                presences.tell(w, None, body);
            }
        }
        presences.finish();
    }
}
