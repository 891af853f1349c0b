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

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ids::{RoomId, SessionId};
use crate::line::Line;
use crate::notice::{Notice, NoticeKind, Presence, PresenceBody};

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
    /// The previous holder, displaced to this place by a take over.
    pub displaced: Option<usize>,
}

impl Change {
    /// Emits the notices of this change into `out`: urgent ones first, then presences in line
    /// order, then the watchers'. `is_member` says whether a watcher also stands in the line (it
    /// then got its member presence already). Cost: O(k + moved + new holder's sessions +
    /// watchers), or O(line) when the top changed (everyone's view shows the top).
    pub(crate) fn emit(
        &self,
        room: &RoomId,
        line: &Line,
        watchers: &[SessionId],
        is_member: impl Fn(SessionId) -> bool,
        k: usize,
        out: &mut VecDeque<Notice>,
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
                out.push_back(notice(s, NoticeKind::Released { version }));
            }
        }
        if let Some(place) = self.displaced
            && let (Some(by), Some(old)) = (line.front(), line.get(place))
        {
            let by = by.person();
            for &s in &old.sessions {
                out.push_back(notice(
                    s,
                    NoticeKind::Displaced {
                        version,
                        by: by.clone(),
                        position: place as u32,
                    },
                ));
            }
        }
        if let Some((s, place)) = self.new_session
            && place > 0
            && let Some(holder) = line.front()
        {
            out.push_back(notice(
                s,
                NoticeKind::Occupied {
                    version,
                    holder: holder.person(),
                    position: place as u32,
                },
            ));
        }

        // Presence: one body shared by every recipient of this change.
        let mut body: Option<Arc<PresenceBody>> = None;
        let mut presence = |s: SessionId, position: Option<u32>, out: &mut VecDeque<Notice>| {
            let body = body
                .get_or_insert_with(|| Arc::new(PresenceBody::of_line(version, line, k)))
                .clone();
            out.push_back(notice(s, NoticeKind::Presence(Presence { body, position })));
        };
        let n = line.len();
        let mut told_new = false;
        let mut tell = |from: usize, to: usize, told_new: &mut bool, out: &mut VecDeque<Notice>| {
            for (place, o) in line.iter_from(from).take(to.saturating_sub(from)) {
                for &s in &o.sessions {
                    presence(s, Some(place as u32), out);
                }
                if self.new_session.is_some_and(|(_, p)| p == place) {
                    *told_new = true;
                }
            }
        };
        if self.holder_changed || self.top_changed {
            tell(0, n, &mut told_new, out);
        } else {
            let head = if self.waiting_changed { k.min(n) } else { 0 };
            tell(0, head, &mut told_new, out);
            let (from, to) = self.moved;
            tell(from.max(head), to.min(n), &mut told_new, out);
            if !told_new && let Some((s, place)) = self.new_session {
                presence(s, Some(place as u32), out);
            }
        }
        for &w in watchers {
            if !is_member(w) {
                presence(w, None, out);
            }
        }
    }
}
