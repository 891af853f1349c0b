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
    pub(super) principal: Option<Arc<str>>,
    /// `None` while in grace (notices are dropped) or after the connection overflowed.
    pub(super) tx: Option<queue::Sender>,
    pub(super) conn: Arc<Conn>,
    pub(super) grace_until: Option<Instant>,
}

#[derive(Default)]
pub(super) struct RegState {
    // Ids and tokens are the Hub's own random numbers: the fast hasher is safe for them, and a
    // hand-over in a busy room looks up every waiting session here.
    pub(super) slots: HashMap<SessionId, Slot, IdHash>,
    pub(super) tokens: HashMap<ResumeToken, SessionId, IdHash>,
    /// Grace deadlines of this Hub's sessions, so their slots are forgotten when grace ends.
    pub(super) grace: BTreeSet<(Instant, SessionId)>,
}

impl RegState {
    pub(super) fn remove(&mut self, id: SessionId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.tokens.remove(&slot.token);
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
}

impl Registry {
    pub(super) fn new(capacity: usize, wake: Arc<Notify>) -> Registry {
        Registry {
            state: Mutex::new(RegState::default()),
            cmds: Mutex::new(Vec::new()),
            pending_kicks: AtomicBool::new(false),
            wake,
            capacity,
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
    fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
        let mut kicked = Vec::new();
        {
            let mut st = self.lock();
            for n in notices {
                let Some(slot) = st.slots.get_mut(&n.session) else {
                    continue;
                };
                let Some(tx) = &slot.tx else { continue };
                if let NoticeKind::Released { version } = n.kind {
                    debug!(session = %n.session, room = %n.room, version, "released");
                }
                let session = n.session;
                match tx.try_send(n) {
                    Ok(()) => {}
                    Err(queue::TrySendError::Full) => {
                        slot.tx = None;
                        let reason = Error::SlowConsumer {
                            capacity: self.capacity,
                        };
                        if slot.conn.close(Some(reason)) {
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
