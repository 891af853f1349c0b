//! Connection lifecycle: disconnect (grace starts), close (no grace), slow-consumer kicks, the
//! grace timers, and the timer task that runs them.
//!
//! Every change here takes the Hub's lifecycle lock, so a resume never races the disconnect of
//! the connection it replaces. Work noticed where it cannot run (a dropped [`Session`] handle, an
//! overflow during delivery) arrives as queued [`Cmd`]s: kicks are run before the call that caused
//! them returns, disconnects by the timer task, so no caller waits for another session's.
//!
//! [`Session`]: super::Session

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::error::Error;
use crate::ids::SessionId;

use super::registry::{Cmd, Conn, Registry};
use super::{HubInner, log_error, now};

impl HubInner {
    /// Closes the slow consumers this call overflowed (if any) before it returns, so that when a
    /// call returns, the sessions it overflowed have left their rooms.
    pub(super) async fn after_op(&self) {
        if self.registry.kicks_pending() {
            self.process_cmds(true).await;
        }
    }

    async fn process_cmds(&self, kicks_only: bool) {
        loop {
            let cmds = self.registry.take_cmds(kicks_only);
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                match cmd {
                    Cmd::Disconnect { id, conn } => self.disconnect(id, &conn).await,
                    Cmd::Kick { id, conn } => self.kick(id, &conn).await,
                }
            }
        }
    }

    pub(super) async fn disconnect(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        if !conn.close(None) {
            return;
        }
        let now = now();
        let deadline = (!self.config.grace.is_zero()).then(|| now + self.config.grace);
        {
            let mut st = self.registry.lock();
            if !st
                .slots
                .get(&id)
                .is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
            {
                return;
            }
            match deadline {
                Some(d) => {
                    let slot = st.slots.get_mut(&id).expect("checked");
                    slot.tx = None;
                    slot.grace_until = Some(d);
                    st.grace.insert((d, id));
                }
                None => {
                    st.remove(id);
                }
            }
        }
        match self.backend.disconnect(id, now).await {
            Ok(()) => debug!(session = %id, grace = ?self.config.grace, "disconnected"),
            Err(e) => {
                self.registry.lock().remove(id);
                log_error("disconnect", id, "", &e);
            }
        }
        // The grace deadline may be earlier than what the timer task sleeps for.
        self.registry.wake.notify_one();
    }

    pub(super) async fn close(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        if !conn.close(None) {
            return;
        }
        if !self.registry.remove_if_conn(id, conn) {
            return;
        }
        match self.backend.close(id).await {
            Ok(()) | Err(Error::UnknownSession) => debug!(session = %id, "closed"),
            Err(e) => log_error("close", id, "", &e),
        }
    }

    async fn kick(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        // A resume may have replaced the connection meanwhile: then the session stays.
        if !self.registry.remove_if_conn(id, conn) {
            return;
        }
        warn!(session = %id, capacity = self.registry.capacity, "closing a slow consumer: its notice buffer overflowed");
        match self.backend.close(id).await {
            Ok(()) | Err(Error::UnknownSession) => {}
            Err(e) => log_error("close", id, "", &e),
        }
    }

    /// Expires due graces; returns when the timer task should look again.
    async fn run_timers(&self) -> Option<Instant> {
        let next = |backend: Option<Instant>, reg: &Registry| {
            let local = reg.lock().grace.first().map(|&(d, _)| d);
            match (backend, local) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let now = now();
        let due = next(self.backend.poll_timeout().await, &self.registry);
        if due.is_none_or(|t| t > now) {
            return due;
        }
        {
            let _lifecycle = self.lifecycle.lock().await;
            match self.backend.handle_timeout(now).await {
                Ok(0) => {}
                Ok(n) => debug!(expired = n, "grace ended"),
                Err(e) => {
                    warn!(error = %e, "backend timers failed; retrying");
                    return Some(now + Duration::from_millis(100));
                }
            }
            let mut st = self.registry.lock();
            while let Some(&(d, id)) = st.grace.first() {
                if d > now {
                    break;
                }
                st.remove(id);
            }
        }
        let due = next(self.backend.poll_timeout().await, &self.registry);
        // Never spin on a backend that keeps reporting a past deadline.
        due.map(|t| t.max(now + Duration::from_millis(1)))
    }
}

/// Runs queued work and the timers until the Hub is gone. It holds only a weak reference, so the
/// Hub's last handle ends it.
pub(super) async fn timer_task(hub: Weak<HubInner>, wake: Arc<Notify>) {
    loop {
        let due = {
            let Some(hub) = hub.upgrade() else { return };
            hub.process_cmds(false).await;
            hub.run_timers().await
        };
        match due {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(t)) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
