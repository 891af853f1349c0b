//! The machine's outbox: the notices a change leaves for other sessions, in the order they must be
//! delivered, with a crowded room's presence fan-out kept as one entry.
//!
//! Why: when the holder of a room with 10,000 waiting leaves, everyone's place moves and everyone
//! gets a presence. Building 10,000 [`Notice`]s inside the change (each one an id clone, a shared
//! body clone and a slot in the queue) made the change itself cost ~0.3–2 ms, all of it under the
//! state lock and before the new holder's `released` could be written. A [`Fanout`] records
//! only who is told and at which place (a flat list of ids, no reference counts); the notices are
//! made when the entry is taken ([`Outbox::pop`]) — by the driver, after it released its lock and
//! after it delivered the change's urgent notices.
//!
//! Taking notices one by one from the outbox gives exactly the notices, in exactly the order, the
//! change would have queued one by one: the representation is invisible from outside the crate.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ids::{RoomId, SessionId};
use crate::notice::{Notice, NoticeKind, Presence, PresenceBody};

/// A change tells at least this many sessions presences before they are kept as a [`Fanout`];
/// fewer are queued as notices (no list to allocate for a small room).
pub(crate) const FANOUT_MIN: usize = 64;

/// Marks a watcher (no place) in [`Fanout::to`].
const NO_PLACE: u32 = u32::MAX;

/// One change's presences to many sessions: one shared body, each recipient's place.
#[derive(Debug)]
pub(crate) struct Fanout {
    room: RoomId,
    body: Arc<PresenceBody>,
    /// Recipients in delivery order, with their place ([`NO_PLACE`] for a watcher).
    to: Vec<(SessionId, u32)>,
    /// How many of `to` were taken already.
    next: usize,
}

impl Fanout {
    /// Recipients not taken yet.
    fn left(&self) -> usize {
        self.to.len() - self.next
    }

    fn take(&mut self) -> Option<Notice> {
        let &(session, place) = self.to.get(self.next)?;
        self.next += 1;
        Some(Notice {
            session,
            room: self.room.clone(),
            kind: NoticeKind::Presence(Presence {
                body: self.body.clone(),
                position: (place != NO_PLACE).then_some(place),
            }),
        })
    }
}

/// One outbox entry.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A single notice.
    One(Notice),
    /// Presences to many sessions, made when taken.
    Fanout(Fanout),
}

impl Outgoing {
    pub(crate) fn room(&self) -> &RoomId {
        match self {
            Outgoing::One(n) => &n.room,
            Outgoing::Fanout(f) => &f.room,
        }
    }
}

impl From<Notice> for Outgoing {
    fn from(n: Notice) -> Self {
        Outgoing::One(n)
    }
}

/// Notices waiting for delivery, in order. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    entries: VecDeque<Outgoing>,
}

impl Outbox {
    /// Queues one notice.
    pub(crate) fn push(&mut self, n: Notice) {
        self.entries.push_back(Outgoing::One(n));
    }

    /// Queues an entry as it is (moving entries between outboxes keeps fan-outs whole).
    pub(crate) fn push_entry(&mut self, e: Outgoing) {
        self.entries.push_back(e);
    }

    /// Takes the oldest entry, whole.
    pub(crate) fn pop_entry(&mut self) -> Option<Outgoing> {
        self.entries.pop_front()
    }

    /// Takes the oldest notice. O(1).
    pub(crate) fn pop(&mut self) -> Option<Notice> {
        self.pop_part().map(|(n, _)| n)
    }

    /// Takes the oldest notice, and says whether it came from a fan-out that has more.
    pub(crate) fn pop_part(&mut self) -> Option<(Notice, bool)> {
        loop {
            match self.entries.front_mut()? {
                Outgoing::One(_) => match self.entries.pop_front() {
                    Some(Outgoing::One(n)) => return Some((n, false)),
                    _ => unreachable!("the front entry is a notice"),
                },
                Outgoing::Fanout(f) => {
                    let n = f.take();
                    let more = f.left() > 0;
                    if !more {
                        self.entries.pop_front();
                    }
                    // An empty fan-out is never queued, but do not stop early if one were.
                    if let Some(n) = n {
                        return Some((n, more));
                    }
                }
            }
        }
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The room of the oldest entry.
    pub(crate) fn front_room(&self) -> Option<&RoomId> {
        self.entries.front().map(Outgoing::room)
    }

    /// True when every entry is about the room whose id's text starts at `room` (compared by
    /// address: the notices of one change share the room's id). O(entries), reads only.
    pub(crate) fn all_about(&self, room: *const u8) -> bool {
        self.entries
            .iter()
            .all(|e| e.room().as_str().as_ptr() == room)
    }

    /// True when the oldest entry is a fan-out (a driver delivers what came before it, then
    /// yields, so the urgent notices of a change are written before its fan-out).
    pub(crate) fn fanout_next(&self) -> bool {
        matches!(self.entries.front(), Some(Outgoing::Fanout(_)))
    }

    /// Drops everything, keeping the allocation.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The number of entries' worth of room kept allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Gives memory back after a burst, keeping room for `n` entries.
    pub(crate) fn shrink_to(&mut self, n: usize) {
        self.entries.shrink_to(n);
    }
}

/// Collects one change's presences: notices while few, a [`Fanout`] once there are
/// [`FANOUT_MIN`]. Pushes into the outbox at [`Presences::finish`].
pub(crate) struct Presences<'a> {
    room: &'a RoomId,
    body: Option<Arc<PresenceBody>>,
    /// Recipients so far (only used once the fan-out is known to be large).
    to: Vec<(SessionId, u32)>,
    large: bool,
    out: &'a mut Outbox,
}

impl<'a> Presences<'a> {
    /// `expected` is an estimate of how many will be told (the places to visit plus watchers):
    /// at least [`FANOUT_MIN`] makes a fan-out.
    pub(crate) fn new(room: &'a RoomId, expected: usize, out: &'a mut Outbox) -> Self {
        let large = expected >= FANOUT_MIN;
        Presences {
            room,
            body: None,
            to: if large {
                Vec::with_capacity(expected)
            } else {
                Vec::new()
            },
            large,
            out,
        }
    }

    /// Tells `session` its place (`None`: a watcher). `body` makes the shared body the first time.
    pub(crate) fn tell(
        &mut self,
        session: SessionId,
        position: Option<u32>,
        body: impl FnOnce() -> PresenceBody,
    ) {
        let body = self.body.get_or_insert_with(|| Arc::new(body()));
        if self.large {
            self.to.push((session, position.unwrap_or(NO_PLACE)));
        } else {
            self.out.push(Notice {
                session,
                room: self.room.clone(),
                kind: NoticeKind::Presence(Presence {
                    body: body.clone(),
                    position,
                }),
            });
        }
    }

    /// Queues the fan-out, if any.
    pub(crate) fn finish(self) {
        if let (true, Some(body)) = (self.large && !self.to.is_empty(), self.body) {
            self.out.push_entry(Outgoing::Fanout(Fanout {
                room: self.room.clone(),
                body,
                to: self.to,
                next: 0,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(version: u64) -> PresenceBody {
        PresenceBody {
            held_since: None,
            version,
            holder: None,
            waiting: 0,
            occupants: Vec::new(),
        }
    }

    fn room() -> RoomId {
        RoomId::parse("r", 64).unwrap()
    }

    fn presences(out: &mut Outbox) -> Vec<(u64, Option<u32>)> {
        std::iter::from_fn(|| out.pop())
            .map(|n| match n.kind {
                NoticeKind::Presence(p) => (n.session.0, p.position),
                k => panic!("not a presence: {k:?}"),
            })
            .collect()
    }

    #[test]
    fn a_small_change_queues_notices_and_a_large_one_a_single_fanout() {
        let room = room();
        let mut out = Outbox::default();
        let mut p = Presences::new(&room, 3, &mut out);
        for s in 0..3 {
            p.tell(SessionId(s), Some(s as u32), || body(1));
        }
        p.finish();
        assert_eq!(out.entries.len(), 3);
        assert_eq!(
            presences(&mut out),
            [(0, Some(0)), (1, Some(1)), (2, Some(2))]
        );

        let mut p = Presences::new(&room, FANOUT_MIN + 1, &mut out);
        for s in 0..FANOUT_MIN as u64 {
            p.tell(SessionId(s), Some(s as u32), || body(2));
        }
        p.tell(SessionId(999), None, || {
            unreachable!("the body is made once")
        });
        p.finish();
        assert_eq!(out.entries.len(), 1);
        assert!(out.fanout_next());
        let got = presences(&mut out);
        assert_eq!(got.len(), FANOUT_MIN + 1);
        assert_eq!(got[5], (5, Some(5)));
        assert_eq!(got[FANOUT_MIN], (999, None), "a watcher has no place");
        assert!(out.is_empty());
    }

    #[test]
    fn taking_notices_keeps_the_order_across_entries() {
        let room = room();
        let mut out = Outbox::default();
        out.push(Notice {
            session: SessionId(7),
            room: room.clone(),
            kind: NoticeKind::Released { version: 3 },
        });
        let mut p = Presences::new(&room, FANOUT_MIN, &mut out);
        for s in 0..FANOUT_MIN as u64 {
            p.tell(SessionId(s), Some(s as u32), || body(3));
        }
        p.finish();
        let mut p = Presences::new(&room, 1, &mut out);
        p.tell(SessionId(1000), Some(0), || body(4));
        p.finish();

        let first = out.pop().unwrap();
        assert!(matches!(first.kind, NoticeKind::Released { version: 3 }));
        assert!(out.fanout_next());
        let mut versions = Vec::new();
        while let Some(n) = out.pop() {
            versions.push((n.session.0, n.version()));
        }
        assert_eq!(versions.len(), FANOUT_MIN + 1);
        assert!(versions[..FANOUT_MIN].iter().all(|&(_, v)| v == 3));
        assert_eq!(versions[FANOUT_MIN], (1000, 4));
    }

    #[test]
    fn a_fanout_that_told_nobody_queues_nothing() {
        let room = room();
        let mut out = Outbox::default();
        Presences::new(&room, FANOUT_MIN * 2, &mut out).finish();
        assert!(out.is_empty());
        assert_eq!(out.pop(), None);
    }
}
