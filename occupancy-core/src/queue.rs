//! A session's notice queue: a bounded single-producer, single-consumer queue that keeps only
//! the latest *presence* per room.
//!
//! A presence notice says "this is the room now"; an older one still waiting to be read is only
//! out of date, and clients drop stale versions anyway. So a new presence for a room replaces the
//! one still queued for that room — it moves to the back, which keeps each room's notices in
//! version order. That bounds what a burst can queue: without it, a join burst into a busy room
//! sends every front occupant one presence per join, overflows their buffers and cascades into
//! slow-consumer kicks (each kick moves the line and tells everyone). `occupied`, `released` and
//! `displaced` are never dropped or merged; they count against the capacity.
//!
//! A `released` carries the moment the Hub took it for delivery, so that the connection can
//! tell how long the hand-over took when it takes the notice out (`occupancy_handover_seconds`).
//! It is kept beside the notice in its slot (72 → 88 bytes, only while queued): no allocation of
//! its own, and nothing to look up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::notice::{Notice, NoticeKind};

/// A queued notice, with the moment its hand-over began if it is a `released`.
pub(crate) struct Queued {
    pub(crate) notice: Notice,
    pub(crate) released_at: Option<Instant>,
}

struct State {
    buf: VecDeque<Queued>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a notice could not be queued.
pub(crate) enum TrySendError {
    /// The queue holds `capacity` notices already (after merging presences).
    Full,
    /// The receiver is gone.
    Closed,
}

/// The producing end (held by the Hub's registry).
pub(crate) struct Sender(Arc<Shared>);

/// The consuming end (inside [`Notices`](crate::Notices)).
pub(crate) struct Receiver(Arc<Shared>);

/// A queue of at most `capacity` notices.
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        notify: Notify::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `n`, replacing a queued presence of the same room if `n` is a presence.
    /// `released_at`: when the hand-over a `released` tells of began (`None` for other kinds).
    pub(crate) fn try_send(
        &self,
        n: Notice,
        released_at: Option<Instant>,
    ) -> Result<(), TrySendError> {
        let mut st = self.0.lock();
        if st.receiver_gone {
            return Err(TrySendError::Closed);
        }
        if matches!(n.kind, NoticeKind::Presence(_))
            && let Some(i) = st.buf.iter().rposition(|q| {
                q.notice.room == n.room && matches!(q.notice.kind, NoticeKind::Presence(_))
            })
        {
            st.buf.remove(i);
        }
        if st.buf.len() >= self.0.capacity {
            return Err(TrySendError::Full);
        }
        st.buf.push_back(Queued {
            notice: n,
            released_at,
        });
        drop(st);
        // A single consumer: notify_one stores a permit if it is not waiting right now.
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.notify.notify_one();
    }
}

impl Receiver {
    /// The next notice; `None` once the queue is empty and the sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Queued> {
        loop {
            {
                let mut st = self.0.lock();
                if let Some(n) = st.buf.pop_front() {
                    release_if_empty(&mut st.buf);
                    return Some(n);
                }
                if st.sender_gone {
                    return None;
                }
            }
            self.0.notify.notified().await;
        }
    }

    /// The next notice if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Queued> {
        let mut st = self.0.lock();
        let n = st.buf.pop_front();
        release_if_empty(&mut st.buf);
        n
    }

    /// How many notices are queued.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().buf.len()
    }
}

/// An idle connection's queue is empty almost all the time: give its buffer back rather than keep
/// room for a burst it may never see again (measured: ~0.3 KiB of an idle axum connection's
/// 4.5 KiB). The next burst allocates again, once.
fn release_if_empty(buf: &mut VecDeque<Queued>) {
    if buf.is_empty() && buf.capacity() != 0 {
        *buf = VecDeque::new();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.receiver_gone = true;
        st.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RoomId, SessionId};
    use crate::notice::{Presence, PresenceBody};

    fn presence(room: &str, version: u64) -> Notice {
        Notice {
            session: SessionId(1),
            room: RoomId::parse(room, 64).unwrap(),
            kind: NoticeKind::Presence(Presence {
                body: Arc::new(PresenceBody {
                    held_since: None,
                    version,
                    holder: None,
                    waiting: 0,
                    occupants: vec![],
                }),
                position: Some(1),
            }),
        }
    }

    fn released(room: &str, version: u64) -> Notice {
        Notice {
            session: SessionId(1),
            room: RoomId::parse(room, 64).unwrap(),
            kind: NoticeKind::Released { version },
        }
    }

    fn drain(rx: &mut Receiver) -> Vec<(String, u64, bool)> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|q| q.notice)
            .map(|n| {
                let p = matches!(n.kind, NoticeKind::Presence(_));
                (n.room.to_string(), n.version(), p)
            })
            .collect()
    }

    #[test]
    fn a_newer_presence_replaces_the_queued_one_and_keeps_version_order() {
        let (tx, mut rx) = channel(3);
        for v in 1..=100 {
            assert!(
                tx.try_send(presence("a", v), None).is_ok(),
                "presences never fill it"
            );
        }
        assert!(tx.try_send(released("a", 101), None).is_ok());
        assert!(tx.try_send(presence("b", 5), None).is_ok());
        assert!(tx.try_send(presence("a", 102), None).is_ok());
        assert_eq!(
            drain(&mut rx),
            vec![
                ("a".into(), 101, false),
                ("b".into(), 5, true),
                ("a".into(), 102, true)
            ]
        );
    }

    #[test]
    fn a_released_keeps_the_moment_its_hand_over_began() {
        let (tx, mut rx) = channel(4);
        let began = Instant::now();
        assert!(tx.try_send(presence("a", 1), None).is_ok());
        assert!(tx.try_send(released("a", 2), Some(began)).is_ok());
        // Replacing the presence before it moves the released up, with its moment.
        assert!(tx.try_send(presence("a", 3), None).is_ok());
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv())
            .map(|q| (q.notice.version(), q.released_at))
            .collect();
        assert_eq!(got, [(2, Some(began)), (3, None)]);
    }

    #[test]
    fn other_notices_count_against_the_capacity() {
        let (tx, rx) = channel(2);
        assert!(tx.try_send(released("a", 1), None).is_ok());
        assert!(tx.try_send(released("b", 2), None).is_ok());
        assert!(matches!(
            tx.try_send(released("c", 3), None),
            Err(TrySendError::Full)
        ));
        assert_eq!(rx.len(), 2);
        drop(rx);
        assert!(matches!(
            tx.try_send(released("c", 3), None),
            Err(TrySendError::Closed)
        ));
    }

    #[tokio::test]
    async fn recv_waits_and_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let reader = tokio::spawn(async move {
            let mut got = vec![];
            while let Some(q) = rx.recv().await {
                got.push(q.notice.version());
            }
            got
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(released("a", 1), None).is_ok());
        assert!(tx.try_send(released("a", 2), None).is_ok());
        drop(tx);
        assert_eq!(reader.await.unwrap(), vec![1, 2]);
    }
}
