//! The Hub's table of connections, and the [`NoticeSink`] the backend delivers through.
//!
//! Backends deliver while holding their own lock, so delivery must never block and never call
//! back into the backend: each notice is `try_send` into its session's bounded queue, and what
//! cannot be done on the spot (closing a slow consumer, starting the grace of a dropped handle)
//! is queued as a [`Cmd`] for the lifecycle code to run outside any lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tracing::debug;

use crate::backend::NoticeSink;
use crate::error::Error;
use crate::ids::{ResumeToken, SessionId};
use crate::machine::IdHash;
use crate::notice::{Notice, NoticeKind};
use crate::queue;

/// One connection of a session (a resume makes a new one). Shared by the session handle, its
/// notice receiver and the registry.
#[derive(Default)]
pub(super) struct Conn {
    closed: AtomicBool,
    reason: Mutex<Option<Error>>,
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection; true if it was open (only then is the reason recorded).
    pub(super) fn close(&self, reason: Option<Error>) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        *r = reason;
        self.closed.store(true, Ordering::Release);
        true
    }

    pub(super) fn reason(&self) -> Option<Error> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Work for the timer task (or the next Hub call) that cannot be done where it is noticed.
pub(super) enum Cmd {
    /// The last handle of a live connection was dropped: start its grace.
    Disconnect { id: SessionId, conn: Arc<Conn> },
    /// The connection overflowed its notice buffer: close the session.
    Kick { id: SessionId, conn: Arc<Conn> },
}

pub(super) struct Slot {
    pub(super) token: ResumeToken,
    /// `None` while in grace (notices are dropped) or after the connection overflowed.
    pub(super) tx: Option<queue::Sender>,
    pub(super) conn: Arc<Conn>,
    pub(super) grace_until: Option<Instant>,
}

#[derive(Default)]
pub(super) struct RegState {
    // Ids are the Hub's own random numbers: the fast hasher is safe for them, and a hand-over in
    // a busy room looks up every waiting session here. No token index: a resume asks the
    // backend whose token it is (`Backend::session_for_token`) and compares the slot's token,
    // so an idle connection costs one map entry less.
    pub(super) slots: HashMap<SessionId, Slot, IdHash>,
    /// Grace deadlines of this Hub's sessions, so their slots are forgotten when grace ends.
    pub(super) grace: BTreeSet<(Instant, SessionId)>,
}

impl RegState {
    pub(super) fn remove(&mut self, id: SessionId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(d) = slot.grace_until {
            self.grace.remove(&(d, id));
        }
        Some(slot)
    }
}

/// The Hub's table of connections; also the [`NoticeSink`] handed to the backend.
pub(super) struct Registry {
    state: Mutex<RegState>,
    cmds: Mutex<Vec<Cmd>>,
    /// Set while a kick is queued (checked after every call, without a lock).
    pending_kicks: AtomicBool,
    /// Wakes the timer task: queued work, an earlier grace deadline, or the Hub is gone.
    pub(super) wake: Arc<Notify>,
    /// The size of each session's notice queue.
    pub(super) capacity: usize,
    /// Subscriptions to room changes ([`Hub::changes`](crate::Hub::changes)).
    pub(super) changes: super::changes::Feeds,
}

impl Registry {
    pub(super) fn new(capacity: usize, wake: Arc<Notify>) -> Registry {
        Registry {
            state: Mutex::new(RegState::default()),
            cmds: Mutex::new(Vec::new()),
            pending_kicks: AtomicBool::new(false),
            wake,
            capacity,
            changes: Default::default(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RegState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push_cmds(&self, cmds: impl IntoIterator<Item = Cmd>) {
        let mut q = self.cmds.lock().unwrap_or_else(|p| p.into_inner());
        for cmd in cmds {
            if matches!(cmd, Cmd::Kick { .. }) {
                self.pending_kicks.store(true, Ordering::Release);
            }
            q.push(cmd);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// True while a kick is queued: cheap enough to ask after every call.
    pub(super) fn kicks_pending(&self) -> bool {
        self.pending_kicks.load(Ordering::Acquire)
    }

    /// Takes the queued work: everything, or only the kicks (leaving disconnects of dropped
    /// handles to the timer task, so that no caller waits for another session's disconnect).
    pub(super) fn take_cmds(&self, kicks_only: bool) -> Vec<Cmd> {
        let mut q = self.cmds.lock().unwrap_or_else(|p| p.into_inner());
        self.pending_kicks.store(false, Ordering::Release);
        if kicks_only {
            let (kicks, rest) = std::mem::take(&mut *q)
                .into_iter()
                .partition(|c| matches!(c, Cmd::Kick { .. }));
            *q = rest;
            kicks
        } else {
            std::mem::take(&mut *q)
        }
    }

    /// Removes the slot of `id` if it still belongs to `conn`.
    pub(super) fn remove_if_conn(&self, id: SessionId, conn: &Arc<Conn>) -> bool {
        let mut st = self.lock();
        if st
            .slots
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
        {
            st.remove(id);
            true
        } else {
            false
        }
    }
}

impl NoticeSink for Registry {
    fn wake_timers(&self) {
        self.wake.notify_one();
    }

    fn wants_changes(&self) -> bool {
        self.changes.wanted()
    }

    fn rooms_changed(&self, changes: &[(crate::ids::RoomId, u64)]) {
        self.changes.publish(changes);
    }

    fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
        let mut kicked = Vec::new();
        // Where the hand-overs of this delivery begin (`occupancy_handover_seconds` runs until
        // the connection takes its `released`): read once, at the first `released`, so that a
        // delivery without one (most of them) does not read the clock at all.
        let mut released_at = None;
        {
            let mut st = self.lock();
            for n in notices {
                let Some(slot) = st.slots.get_mut(&n.session) else {
                    continue;
                };
                let Some(tx) = &slot.tx else { continue };
                match n.kind {
                    NoticeKind::Released { version } => {
                        debug!(session = %n.session, room = %n.room, version, "released");
                        super::metrics::released();
                    }
                    NoticeKind::Displaced { reason, .. } => super::metrics::displaced(reason),
                    _ => {}
                }
                let began = matches!(n.kind, NoticeKind::Released { .. })
                    .then(|| *released_at.get_or_insert_with(Instant::now));
                let session = n.session;
                match tx.try_send(n, began) {
                    Ok(()) => {}
                    Err(queue::TrySendError::Full) => {
                        slot.tx = None;
                        let reason = Error::SlowConsumer {
                            capacity: self.capacity,
                        };
                        if slot.conn.close(Some(reason)) {
                            super::metrics::slow_consumer();
                            kicked.push(Cmd::Kick {
                                id: session,
                                conn: slot.conn.clone(),
                            });
                        }
                    }
                    // The application dropped the receiver but keeps the session: stop sending.
                    Err(queue::TrySendError::Closed) => slot.tx = None,
                }
            }
        }
        if !kicked.is_empty() {
            self.push_cmds(kicked);
        }
    }

    fn is_local(&self, session: SessionId) -> bool {
        self.lock()
            .slots
            .get(&session)
            .is_some_and(|s| s.tx.is_some())
    }

    fn session_ended(&self, session: SessionId, reason: Option<Error>) {
        let slot = self.lock().remove(session);
        if let Some(slot) = slot {
            debug!(%session, ?reason, "session ended by the backend");
            slot.conn.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::RoomId;

    fn registry(capacity: usize) -> Registry {
        Registry::new(capacity, Arc::new(Notify::new()))
    }

    /// Registers a live connection for `id` (token `id` too) and returns its two ends.
    fn add(reg: &Registry, id: u64) -> (Arc<Conn>, queue::Receiver) {
        let conn = Arc::new(Conn::default());
        let (tx, rx) = queue::channel(reg.capacity);
        let mut st = reg.lock();
        st.slots.insert(
            SessionId(id),
            Slot {
                token: ResumeToken(id.into()),
                tx: Some(tx),
                conn: conn.clone(),
                grace_until: None,
            },
        );
        (conn, rx)
    }

    /// A `released` notice (never merged in the queue, so each one takes a place).
    fn released(session: u64, version: u64) -> Notice {
        Notice {
            session: SessionId(session),
            room: RoomId::parse("doc", 64).unwrap(),
            kind: NoticeKind::Released { version },
        }
    }

    fn deliver(reg: &Registry, notices: Vec<Notice>) {
        reg.deliver(&mut notices.into_iter());
    }

    fn drain(rx: &mut queue::Receiver) -> Vec<(SessionId, u64)> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|q| (q.notice.session, q.notice.version()))
            .collect()
    }

    #[test]
    fn delivery_drops_notices_for_unknown_and_in_grace_sessions() {
        let reg = registry(8);
        let (_a, mut a_rx) = add(&reg, 1);
        let (_b, mut b_rx) = add(&reg, 2);
        reg.lock().slots.get_mut(&SessionId(2)).unwrap().tx = None; // 2 is in grace
        deliver(
            &reg,
            vec![
                released(1, 1),
                released(2, 2),
                released(3, 3),
                released(1, 4),
            ],
        );
        assert_eq!(drain(&mut a_rx), [(SessionId(1), 1), (SessionId(1), 4)]);
        assert!(drain(&mut b_rx).is_empty());
        assert!(reg.is_local(SessionId(1)));
        assert!(!reg.is_local(SessionId(2)), "in grace is not local");
        assert!(!reg.is_local(SessionId(3)));
        assert!(reg.take_cmds(false).is_empty(), "dropping is not a kick");
    }

    #[test]
    fn a_full_queue_closes_the_connection_and_queues_exactly_one_kick() {
        let reg = registry(2);
        let (conn, mut rx) = add(&reg, 1);
        let (_other, mut other_rx) = add(&reg, 2);
        deliver(&reg, (1..=5).map(|v| released(1, v)).collect());
        // A second overflowing delivery finds the channel gone: no second kick.
        deliver(&reg, vec![released(1, 6), released(2, 7)]);

        assert!(conn.is_closed());
        assert_eq!(conn.reason(), Some(Error::SlowConsumer { capacity: 2 }));
        assert!(!reg.is_local(SessionId(1)), "its channel is dropped");
        assert!(
            reg.lock().slots.contains_key(&SessionId(1)),
            "the kick forgets it, not delivery"
        );
        assert!(reg.kicks_pending());
        let cmds = reg.take_cmds(false);
        assert!(!reg.kicks_pending());
        assert!(
            matches!(&cmds[..], [Cmd::Kick { id, conn: c }] if *id == SessionId(1) && Arc::ptr_eq(c, &conn)),
            "one kick for that connection"
        );
        // What was queued before the overflow stays queued; the other session is unaffected.
        assert_eq!(drain(&mut rx), [(SessionId(1), 1), (SessionId(1), 2)]);
        assert_eq!(drain(&mut other_rx), [(SessionId(2), 7)]);
    }

    #[test]
    fn an_overflow_of_a_closed_connection_queues_no_kick() {
        // The connection was closed (a disconnect is under way) when its queue overflowed: the
        // disconnect owns it, a kick would close the session its grace keeps.
        let reg = registry(1);
        let (conn, _rx) = add(&reg, 1);
        assert!(conn.close(None));
        deliver(&reg, vec![released(1, 1), released(1, 2)]);
        assert!(!reg.is_local(SessionId(1)));
        assert_eq!(conn.reason(), None, "the first reason stays");
        assert!(!reg.kicks_pending());
        assert!(reg.take_cmds(false).is_empty());
    }

    #[test]
    fn remove_if_conn_only_removes_the_slot_of_that_connection() {
        let reg = registry(4);
        let (conn, _rx) = add(&reg, 1);
        let deadline = Instant::now();
        {
            let mut st = reg.lock();
            st.slots.get_mut(&SessionId(1)).unwrap().grace_until = Some(deadline);
            st.grace.insert((deadline, SessionId(1)));
        }
        let replaced = Arc::new(Conn::default());
        assert!(!reg.remove_if_conn(SessionId(1), &replaced));
        assert!(reg.lock().slots.contains_key(&SessionId(1)));
        assert!(
            !reg.remove_if_conn(SessionId(2), &conn),
            "another session's id"
        );

        assert!(reg.remove_if_conn(SessionId(1), &conn));
        let st = reg.lock();
        assert!(st.slots.is_empty() && st.grace.is_empty());
        drop(st);
        assert!(!reg.remove_if_conn(SessionId(1), &conn), "only once");
    }

    #[test]
    fn session_ended_closes_with_the_reason_and_forgets_the_session() {
        let reg = registry(4);
        let (conn, _rx) = add(&reg, 1);
        let (kept, _kept_rx) = add(&reg, 2);
        reg.session_ended(SessionId(1), Some(Error::SessionReplaced));
        reg.session_ended(SessionId(3), Some(Error::SessionReplaced)); // unknown: nothing
        assert!(conn.is_closed());
        assert_eq!(conn.reason(), Some(Error::SessionReplaced));
        let st = reg.lock();
        assert!(!st.slots.contains_key(&SessionId(1)));
        assert!(st.slots.contains_key(&SessionId(2)));
        drop(st);
        assert!(!kept.is_closed());
        assert!(
            reg.take_cmds(false).is_empty(),
            "nothing left for the Hub to do"
        );
    }

    #[test]
    fn conn_keeps_the_reason_it_was_first_closed_with() {
        let conn = Conn::default();
        assert!(!conn.is_closed());
        assert!(conn.close(Some(Error::SlowConsumer { capacity: 3 })));
        assert!(!conn.close(None));
        assert!(!conn.close(Some(Error::SessionReplaced)));
        assert!(conn.is_closed());
        assert_eq!(conn.reason(), Some(Error::SlowConsumer { capacity: 3 }));
    }

    #[tokio::test(start_paused = true)]
    async fn kicks_can_be_taken_alone_and_queued_work_wakes_the_timer_task() {
        let reg = registry(4);
        let (a, b, c) = (
            Arc::new(Conn::default()),
            Arc::new(Conn::default()),
            Arc::new(Conn::default()),
        );
        reg.push_cmds([
            Cmd::Disconnect {
                id: SessionId(1),
                conn: a,
            },
            Cmd::Kick {
                id: SessionId(2),
                conn: b,
            },
            Cmd::Disconnect {
                id: SessionId(3),
                conn: c,
            },
        ]);
        // The permit push_cmds stored wakes the next wait at once (paused time would otherwise
        // run the timeout out).
        tokio::time::timeout(Duration::from_secs(1), reg.wake.notified())
            .await
            .expect("woken");
        assert!(reg.kicks_pending());
        let ids = |cmds: Vec<Cmd>| -> Vec<(bool, SessionId)> {
            cmds.into_iter()
                .map(|c| match c {
                    Cmd::Kick { id, .. } => (true, id),
                    Cmd::Disconnect { id, .. } => (false, id),
                })
                .collect()
        };
        assert_eq!(ids(reg.take_cmds(true)), [(true, SessionId(2))]);
        assert!(!reg.kicks_pending());
        assert_eq!(
            ids(reg.take_cmds(false)),
            [(false, SessionId(1)), (false, SessionId(3))],
            "disconnects stay queued, in order"
        );
        assert!(reg.take_cmds(false).is_empty());
    }
}
