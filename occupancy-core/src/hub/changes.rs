//! The stream of room changes for operators ([`Hub::changes`](crate::Hub::changes)): an audit
//! log, a webhook, a dashboard. Each subscriber keeps a latest-value map per room: a burst of
//! changes to one room while the subscriber is busy becomes one entry with the newest version,
//! so a lagging consumer skips to each room's latest state and its backlog never holds more
//! entries than there are rooms that changed. Nothing is recorded while nobody subscribes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::ids::RoomId;
use crate::state::RoomSummary;

/// Every live subscription of one Hub.
#[derive(Default)]
pub(super) struct Feeds {
    subscribers: Mutex<Vec<Weak<Feed>>>,
    /// True while at least one subscription lives: read by the backends before every operation.
    wanted: AtomicBool,
}

impl Feeds {
    pub(super) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    pub(super) fn subscribe(&self) -> Arc<Feed> {
        let feed = Arc::new(Feed::default());
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(&feed));
        self.wanted.store(true, Ordering::Relaxed);
        feed
    }

    /// Hands a batch of changes (room, new version) to every subscriber.
    pub(super) fn publish(&self, changes: &[(RoomId, u64)]) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|w| match w.upgrade() {
            Some(feed) => {
                feed.push(changes);
                true
            }
            None => false,
        });
        if subs.is_empty() {
            self.wanted.store(false, Ordering::Relaxed);
        }
    }
}

/// One subscription's backlog: rooms in the order they first changed since the last read, each
/// with its newest version.
#[derive(Default)]
pub(super) struct Feed {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    order: VecDeque<RoomId>,
    latest: HashMap<RoomId, u64, foldhash::fast::RandomState>,
}

impl Feed {
    fn push(&self, changes: &[(RoomId, u64)]) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (room, version) in changes {
            match p.latest.get_mut(room) {
                Some(v) => *v = (*v).max(*version),
                None => {
                    p.latest.insert(room.clone(), *version);
                    p.order.push_back(room.clone());
                }
            }
        }
        drop(p);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<(RoomId, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let room = p.order.pop_front()?;
        let version = p.latest.remove(&room).unwrap_or_default();
        Some((room, version))
    }

    fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .len()
    }
}

/// One room change as [`RoomChanges::recv`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomChange {
    /// The room.
    pub room: RoomId,
    /// The newest version this subscription was told of (older ones were skipped).
    pub version: u64,
    /// The room as it is when the change is read (`None`: nobody stands in or watches it any
    /// more). Its version may be newer than `version`: a change after it is on its way.
    pub now: Option<RoomSummary>,
}

/// A subscription to the Hub's room changes ([`Hub::changes`](crate::Hub::changes)). Dropping it
/// unsubscribes.
pub struct RoomChanges {
    pub(super) feed: Arc<Feed>,
    pub(super) hub: crate::Hub,
}

impl std::fmt::Debug for RoomChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomChanges")
            .field("pending", &self.feed.len())
            .finish()
    }
}

impl RoomChanges {
    /// The next changed room, with its state now. Waits while nothing changed. Cancelling it
    /// while it reads the room's state loses that one change: in a `select!` loop, wait with
    /// [`RoomChanges::changed`] and read with [`RoomChanges::try_recv`] and
    /// [`Hub::summary`](crate::Hub::summary) instead.
    pub async fn recv(&mut self) -> RoomChange {
        loop {
            if let Some((room, version)) = self.feed.pop() {
                let now = self.hub.summary(room.as_str()).await.ok().flatten();
                return RoomChange { room, version, now };
            }
            self.feed.notify.notified().await;
        }
    }

    /// Waits until a change is pending (cancel safe: takes nothing).
    pub async fn changed(&self) {
        while self.feed.len() == 0 {
            self.feed.notify.notified().await;
        }
    }

    /// The next changed room without waiting, and without reading its state: `(room, version)`.
    pub fn try_recv(&mut self) -> Option<(RoomId, u64)> {
        self.feed.pop()
    }

    /// How many rooms changed since they were last read (at most one entry per room).
    pub fn len(&self) -> usize {
        self.feed.len()
    }

    /// True when no change waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s, 64).unwrap()
    }

    /// A burst on one room is one entry with the newest version, in first-change order, and a
    /// dropped subscription stops the recording.
    #[test]
    fn a_lagging_subscriber_skips_to_the_latest_version_per_room() {
        let feeds = Feeds::default();
        assert!(!feeds.wanted());
        let feed = feeds.subscribe();
        assert!(feeds.wanted());
        feeds.publish(&[(room("a"), 1), (room("b"), 2), (room("a"), 3)]);
        feeds.publish(&[(room("b"), 4), (room("a"), 5)]);
        assert_eq!(feed.len(), 2);
        assert_eq!(feed.pop(), Some((room("a"), 5)));
        assert_eq!(feed.pop(), Some((room("b"), 4)));
        assert_eq!(feed.pop(), None);
        drop(feed);
        feeds.publish(&[(room("c"), 6)]);
        assert!(
            !feeds.wanted(),
            "nobody listens: the backends stop recording"
        );
    }
}
