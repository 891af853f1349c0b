//! Connection lifecycle: disconnect (grace starts), close (no grace), slow-consumer kicks, the
//! grace timers, and the timer task that runs them.
//!
//! Every change here takes the lifecycle lock of the sessions it changes ([`Stripes`]), so a
//! resume never races the disconnect of the connection it replaces, while other sessions'
//! lifecycles go on in parallel (nothing global serializes them: DESIGN.md "Cost rules"). Work
//! noticed where it cannot run (a dropped [`Session`] handle, an overflow during delivery)
//! arrives as queued [`Cmd`]s: kicks are run before the call that caused them returns,
//! disconnects by the timer task, so no caller waits for another session's.
//!
//! [`Session`]: super::Session

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard, Notify};
use tracing::{debug, warn};

use crate::config::Ending;
use crate::error::Error;
use crate::ids::SessionId;

use super::registry::{Cmd, Conn, Registry};
use super::{HubInner, log_error, metrics, now};

/// How many lifecycle locks sessions are spread over.
const STRIPES: usize = 64;

/// The lifecycle locks: one per stripe of session ids. A change of one session takes its
/// stripe's lock; a batch (disconnects ending together, graces expiring) takes the stripes it
/// touches in ascending order, so two batches never deadlock. Fair (tokio's mutex), so a resume
/// waiting behind a batch runs right after it.
pub(super) struct Stripes(Box<[Mutex<()>]>);

impl Default for Stripes {
    fn default() -> Self {
        Stripes((0..STRIPES).map(|_| Mutex::new(())).collect())
    }
}

impl Stripes {
    fn index(id: SessionId) -> usize {
        // Hub session ids are random; a multiplicative mix keeps test ids (1, 2, 3 ...) spread.
        (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES
    }

    /// The lock of one session.
    pub(super) fn of(&self, id: SessionId) -> &Mutex<()> {
        &self.0[Self::index(id)]
    }

    /// The locks of many sessions, taken in ascending order.
    async fn of_all(&self, ids: impl Iterator<Item = SessionId>) -> Vec<MutexGuard<'_, ()>> {
        let mut wanted = [false; STRIPES];
        for id in ids {
            wanted[Self::index(id)] = true;
        }
        let mut guards = Vec::new();
        for (i, lock) in self.0.iter().enumerate() {
            if wanted[i] {
                guards.push(lock.lock().await);
            }
        }
        guards
    }

    /// Every lock, in ascending order (for changes whose sessions are not known beforehand).
    async fn all(&self) -> Vec<MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(STRIPES);
        for lock in self.0.iter() {
            guards.push(lock.lock().await);
        }
        guards
    }
}

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
                // Disconnects queued by callers that were cancelled before their own flush.
                if !kicks_only && self.has_queued_disconnects() {
                    self.flush_disconnects().await;
                }
                return;
            }
            // Disconnects of dropped handles join the batch of connections ending now.
            for cmd in cmds {
                match cmd {
                    Cmd::Disconnect { id, conn } => self.queue_disconnect(id, conn, Ending::Lost),
                    Cmd::Kick { id, conn } => {
                        self.flush_disconnects().await;
                        self.kick(id, &conn, "a slow consumer: its notice buffer overflowed")
                            .await;
                    }
                }
            }
            self.flush_disconnects().await;
        }
    }

    /// The connection `conn` of session `id` ended: its grace starts (with zero grace it leaves
    /// its rooms now). Returns once that is done.
    ///
    /// Connections that end together (a network blip, a deploy: thousands at once) reach the
    /// backend as one batch ([`Backend::disconnect_many`](crate::Backend::disconnect_many)), so
    /// a room many of them stood in changes once and each remaining member is told its final
    /// place once, instead of one change and one fan-out per departure. Each caller queues
    /// itself, yields once so that the connections ending at the same moment queue too, and then
    /// whoever takes the flush lock first disconnects everyone queued (under their lifecycle
    /// locks); a caller whose entry was taken by an earlier holder returns once that holder is
    /// done (the lock is fair).
    pub(super) async fn disconnect(&self, id: SessionId, conn: &Arc<Conn>, ending: Ending) {
        self.queue_disconnect(id, conn.clone(), ending);
        tokio::task::yield_now().await;
        self.flush_disconnects().await;
    }

    /// Queues a disconnect for the next flush. The timer task is woken too, so a queued
    /// disconnect whose caller was cancelled before its flush is still done.
    fn queue_disconnect(&self, id: SessionId, conn: Arc<Conn>, ending: Ending) {
        self.disconnecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, conn, ending));
        self.registry.wake.notify_one();
    }

    fn has_queued_disconnects(&self) -> bool {
        !self
            .disconnecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Disconnects everything queued, under the flush lock and the sessions' lifecycle locks: one
    /// backend batch per kind of ending (each has its own grace).
    async fn flush_disconnects(&self) {
        let _flushing = self.flushing.lock().await;
        let batch =
            std::mem::take(&mut *self.disconnecting.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        // Waiting for the sessions' locks may be cancelled (the caller's future dropped): the
        // batch then goes back to the queue for the timer task, never lost.
        let mut held = Requeue {
            hub: self,
            batch: Some(batch),
        };
        let ids = held.batch.iter().flatten().map(|(id, ..)| *id);
        let _lifecycle = self.lifecycle.of_all(ids).await;
        let batch = held.batch.take().expect("taken only here");
        let now = now();
        for ending in [Ending::Lost, Ending::Closed] {
            let part: Vec<_> = batch
                .iter()
                .filter(|(.., e)| *e == ending)
                .map(|(id, conn, _)| (*id, conn))
                .collect();
            if !part.is_empty() {
                self.disconnect_batch(&part, now, ending).await;
            }
        }
        // The grace deadline may be earlier than what the timer task sleeps for.
        self.registry.wake.notify_one();
    }

    /// Starts the grace of connections that ended the same way (or, with no grace for that
    /// ending, removes their sessions).
    async fn disconnect_batch(
        &self,
        batch: &[(SessionId, &Arc<Conn>)],
        now: Instant,
        ending: Ending,
    ) {
        let grace = self.config.grace_for(ending);
        let deadline = (!grace.is_zero()).then(|| now + grace);
        let mut ids = Vec::with_capacity(batch.len());
        {
            let mut st = self.registry.lock();
            for &(id, conn) in batch {
                // Already closed (a second disconnect, a kick) or replaced by a resume: skip.
                if !conn.close(None)
                    || !st
                        .slots
                        .get(&id)
                        .is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
                {
                    continue;
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
                ids.push(id);
            }
        }
        let result = match ids[..] {
            [] => return,
            [id] => self.backend.disconnect(id, now, ending).await,
            _ => self.backend.disconnect_many(&ids, now, ending).await,
        };
        match result {
            Ok(()) => {
                debug!(sessions = ids.len(), first = %ids[0], ?ending, ?grace, "disconnected");
                metrics::disconnected(ending, ids.len());
            }
            Err(e) => {
                let mut st = self.registry.lock();
                for id in &ids {
                    st.remove(*id);
                }
                drop(st);
                log_error("disconnect", ids[0], "", &e);
            }
        }
    }

    pub(super) async fn close(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.of(id).lock().await;
        if !conn.close(None) {
            return;
        }
        if !self.registry.remove_if_conn(id, conn) {
            return;
        }
        match self.backend.close(id).await {
            Ok(()) | Err(Error::UnknownSession) => {
                debug!(session = %id, "closed");
                metrics::closed();
            }
            Err(e) => log_error("close", id, "", &e),
        }
    }

    /// Closes session `id` at once if `conn` is still its connection (the caller closed `conn`
    /// with its reason); `why` is logged. Returns false when a resume replaced the connection
    /// meanwhile (the session stays) or the backend no longer knew the session.
    pub(super) async fn kick(&self, id: SessionId, conn: &Arc<Conn>, why: &str) -> bool {
        let _lifecycle = self.lifecycle.of(id).lock().await;
        // A resume may have replaced the connection meanwhile: then the session stays.
        if !self.registry.remove_if_conn(id, conn) {
            return false;
        }
        warn!(session = %id, capacity = self.registry.capacity, "closing a session: {why}");
        match self.backend.close(id).await {
            Ok(()) => true,
            Err(Error::UnknownSession) => false,
            Err(e) => {
                log_error("close", id, "", &e);
                false
            }
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
        // Graces that end close together end in one batch: the timer waits `slack` past the
        // first deadline and then expires everything due. A storm of dropped connections (whose
        // resets reach the server over ~150 ms, so whose graces end over ~150 ms too) is then a
        // few changes per room instead of one per millisecond tick, each telling everyone still
        // in the line their new place (DESIGN.md "Storms are batched").
        let slack = expiry_slack(self.config.grace);
        let due = next(self.backend.poll_timeout().await, &self.registry);
        if due.is_none_or(|t| t + slack > now) {
            return due.map(|t| t + slack);
        }
        {
            // Which sessions expire is the backend's to say: take every lifecycle lock. This
            // runs once per batch of graces ending together (`expiry_slack`), not per session.
            let _lifecycle = self.lifecycle.all().await;
            match self.backend.handle_timeout(now).await {
                Ok(0) => {}
                Ok(n) => {
                    debug!(expired = n, "grace ended");
                    metrics::graces_expired(n);
                }
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

/// Disconnects taken from the queue and not yet done: put back (and the timer task woken) if
/// dropped before `batch` is taken out.
struct Requeue<'a> {
    hub: &'a HubInner,
    batch: Option<Vec<(SessionId, Arc<Conn>, Ending)>>,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.hub
                .disconnecting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
            self.hub.registry.wake.notify_one();
        }
    }
}

/// How late a grace may end so that graces ending close together end in one batch: 1/64 of the
/// grace (78 ms of the default 5 s), at most 100 ms. A resume is still refused from the deadline
/// on; only the removal (and the next holder's `released`) waits for the batch.
pub(super) fn expiry_slack(grace: Duration) -> Duration {
    (grace / 64).min(Duration::from_millis(100))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::ids::Meta;
    use crate::memory::MemoryBackend;

    const GRACE: Duration = Duration::from_secs(5);

    fn hub_on(backend: &MemoryBackend) -> Hub {
        Hub::builder()
            .backend(backend.clone())
            .grace(GRACE)
            .build()
            .unwrap()
    }

    /// The connection the registry holds for `id`.
    fn conn_of(hub: &Hub, id: SessionId) -> Arc<Conn> {
        hub.inner.registry.lock().slots[&id].conn.clone()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Lifecycle changes are ordered per session, not globally: while one session's lock is
    /// held (a slow resume, say, on a backend across the network), another session closes at
    /// once, and the first session's own close waits its turn.
    #[tokio::test(start_paused = true)]
    async fn a_held_lifecycle_lock_holds_up_only_its_own_sessions() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _a_notices) = hub.connect(None, Meta::empty()).await.unwrap();
        let mut b = hub.connect(None, Meta::empty()).await.unwrap();
        // Ids are random: take a second session whose lock is another stripe's.
        while Stripes::index(b.0.id()) == Stripes::index(a.id()) {
            b = hub.connect(None, Meta::empty()).await.unwrap();
        }
        let (b, _b_notices) = b;
        a.join("doc", None).await.unwrap();
        b.join("doc", None).await.unwrap();

        let held = hub.inner.lifecycle.of(a.id()).lock().await;
        // Paused time: a close that waited on the held lock would run into this timeout.
        tokio::time::timeout(Duration::from_secs(1), b.close())
            .await
            .expect("another session's close is not held up");
        assert_eq!(backend.with_machine(|m| m.position(b.id(), "doc")), None);

        let a_close = tokio::spawn({
            let a = a.clone();
            async move { a.close().await }
        });
        settle().await;
        assert!(!a_close.is_finished(), "a's own close waits for its lock");
        assert_eq!(backend.with_machine(|m| m.position(a.id(), "doc")), Some(0));
        drop(held);
        a_close.await.unwrap();
        assert_eq!(backend.with_machine(|m| m.position(a.id(), "doc")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn disconnect_starts_the_grace_only_once() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let conn = conn_of(&hub, a.id());
        let deadline = now() + GRACE;

        hub.inner.disconnect(a.id(), &conn, Ending::Lost).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // Again, directly and through the handle: neither moves the deadline nor adds one.
        hub.inner.disconnect(a.id(), &conn, Ending::Lost).await;
        a.disconnect().await;

        {
            let st = hub.inner.registry.lock();
            assert_eq!(
                st.grace.iter().copied().collect::<Vec<_>>(),
                [(deadline, a.id())]
            );
            let slot = &st.slots[&a.id()];
            assert_eq!(slot.grace_until, Some(deadline));
            assert!(slot.tx.is_none(), "no notices while in grace");
        }
        assert_eq!(backend.with_machine(|m| m.poll_timeout()), Some(deadline));
        assert!(hub.inner.registry.take_cmds(false).is_empty());
    }

    /// A disconnect whose caller is cancelled while it waits for a session's lifecycle lock (held
    /// by a slow resume, say) is not lost: the batch goes back to the queue and the timer task
    /// does it once the lock is free.
    #[tokio::test(start_paused = true)]
    async fn a_flush_cancelled_while_waiting_for_a_lock_puts_its_batch_back() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join("doc", None).await.unwrap();
        let conn = conn_of(&hub, a.id());
        let held = hub.inner.lifecycle.of(a.id()).lock().await;
        let flushing = tokio::spawn({
            let hub = hub.clone();
            let id = a.id();
            async move { hub.inner.disconnect(id, &conn, Ending::Lost).await }
        });
        settle().await;
        assert!(!flushing.is_finished(), "waits for the held lock");
        flushing.abort();
        let _ = flushing.await;
        assert!(
            backend.with_machine(|m| m.is_live(a.id())),
            "nothing done yet"
        );
        drop(held);
        settle().await;
        assert!(
            !backend.with_machine(|m| m.is_live(a.id())),
            "the timer task disconnected it"
        );
        assert!(
            hub.inner.registry.lock().slots[&a.id()]
                .grace_until
                .is_some()
        );
    }

    /// A page closed on purpose keeps its place for `close_grace` (2 s by default), a lost
    /// connection for the whole `grace`; both batches of one moment are flushed together.
    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_keeps_its_places_for_close_grace_only() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        assert_eq!(hub.config().close_grace, Duration::from_secs(2));
        let (closed, _) = hub.connect(None, Meta::empty()).await.unwrap();
        let (lost, _) = hub.connect(None, Meta::empty()).await.unwrap();
        let (waiter, mut waiter_notices) = hub.connect(None, Meta::empty()).await.unwrap();
        closed.join("a", None).await.unwrap();
        lost.join("b", None).await.unwrap();
        waiter.join("a", None).await.unwrap();
        waiter.join("b", None).await.unwrap();
        while waiter_notices.try_recv().is_some() {}

        let t0 = now();
        tokio::join!(closed.disconnect_as(Ending::Closed), lost.disconnect());
        {
            let st = hub.inner.registry.lock();
            assert_eq!(
                st.slots[&closed.id()].grace_until,
                Some(t0 + Duration::from_secs(2))
            );
            assert_eq!(st.slots[&lost.id()].grace_until, Some(t0 + GRACE));
        }
        // Past the close grace (and its slack): room "a" is handed over, "b" still waits.
        tokio::time::sleep(Duration::from_secs(2) + expiry_slack(GRACE) + Duration::from_millis(1))
            .await;
        settle().await;
        let mut released = Vec::new();
        while let Some(n) = waiter_notices.try_recv() {
            if matches!(n.kind, crate::NoticeKind::Released { .. }) {
                released.push(n.room.to_string());
            }
        }
        assert_eq!(released, ["a"]);
        assert_eq!(
            backend.with_machine(|m| m.position(lost.id(), "b")),
            Some(0)
        );
        assert!(
            hub.resume(closed.resume_token()).await.is_err(),
            "its grace is over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_connection_cannot_close_kick_or_disconnect_the_session() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, an) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join("doc", None).await.unwrap();
        let old = conn_of(&hub, a.id());
        let (a2, _a2n, _) = hub.resume(a.resume_token()).await.unwrap();
        // A kick queued for the old connection before the resume, and the old handle's calls.
        hub.inner.kick(a.id(), &old, "test").await;
        hub.inner.close(a.id(), &old).await;
        hub.inner.disconnect(a.id(), &old, Ending::Lost).await;
        // A connection the registry never held (still open, so only the slot check stops it).
        let stray = Arc::new(Conn::default());
        hub.inner.kick(a.id(), &stray, "test").await;
        hub.inner.close(a.id(), &stray).await;

        assert_eq!(
            an.close_reason(),
            Some(Error::SessionReplaced),
            "not overwritten"
        );
        assert!(a2.is_live());
        let now_held = conn_of(&hub, a.id());
        assert!(!Arc::ptr_eq(&now_held, &old) && !now_held.is_closed());
        assert_eq!(hub.live_connections(), 1);
        backend.with_machine(|m| {
            assert!(m.is_live(a.id()));
            assert_eq!(m.position(a.id(), "doc"), Some(0));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_forgets_slots_whose_grace_ended() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        let token = a.resume_token();
        a.disconnect().await;

        // The grace ends at GRACE; the timer removes the session once the batch's slack is over.
        tokio::time::sleep(GRACE + expiry_slack(GRACE) - Duration::from_millis(1)).await;
        settle().await;
        assert!(hub.inner.registry.lock().slots.contains_key(&a.id()));

        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        {
            let st = hub.inner.registry.lock();
            assert!(!st.slots.contains_key(&a.id()));
            assert!(st.grace.is_empty());
            assert!(st.slots.contains_key(&b.id()), "a live session stays");
        }
        assert!(
            matches!(hub.resume(token).await, Err(Error::ResumeInvalid)),
            "its token is spent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_runs_the_kicks_it_caused_and_leaves_disconnects_to_the_timer_task() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        let (a_id, b_id) = (a.id(), b.id());
        a.join("doc", None).await.unwrap();
        b.join("doc", None).await.unwrap();
        let (a_conn, b_conn) = (conn_of(&hub, a_id), conn_of(&hub, b_id));

        drop(b); // the last handle: queues b's disconnect
        // a overflowed during some delivery, as Registry::deliver does it:
        a_conn.close(Some(Error::SlowConsumer { capacity: 1 }));
        hub.inner.registry.push_cmds([Cmd::Kick {
            id: a_id,
            conn: a_conn,
        }]);
        hub.inner.after_op().await;

        assert!(
            !backend.with_machine(|m| m.contains_session(a_id)),
            "kicked"
        );
        assert!(!b_conn.is_closed(), "b's disconnect is still queued");
        assert!(backend.with_machine(|m| m.is_live(b_id)));

        settle().await; // the timer task
        assert!(b_conn.is_closed());
        assert!(hub.inner.registry.lock().slots[&b_id].grace_until.is_some());
        backend.with_machine(|m| {
            assert!(m.contains_session(b_id) && !m.is_live(b_id), "in grace");
            assert_eq!(m.position(b_id, "doc"), Some(0), "released by the kick");
        });
    }

    /// Three waiters dropped 10 ms apart: their graces end 10 ms apart, and end in one batch, so
    /// the one behind them is told its final place once, not once per expiry.
    #[tokio::test(start_paused = true)]
    async fn graces_ending_close_together_end_in_one_batch() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (holder, _hn) = hub.connect(None, Meta::empty()).await.unwrap();
        holder.join("doc", None).await.unwrap();
        let mut dropped = Vec::new();
        for _ in 0..3 {
            let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
            s.join("doc", None).await.unwrap();
            dropped.push((s, n));
        }
        let (last, mut last_n) = hub.connect(None, Meta::empty()).await.unwrap();
        last.join("doc", None).await.unwrap();
        settle().await;
        while last_n.try_recv().is_some() {}

        for (s, _) in &dropped {
            s.disconnect().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Now 30 ms after the first drop. Past the first deadline, inside the slack:
        // nothing removed yet, but the first session's grace is over.
        tokio::time::sleep(GRACE - Duration::from_millis(30) + Duration::from_millis(25)).await;
        settle().await;
        assert_eq!(
            backend.with_machine(|m| m.position(last.id(), "doc")),
            Some(4)
        );
        assert!(last_n.try_recv().is_none(), "nothing told yet");

        tokio::time::sleep(expiry_slack(GRACE)).await;
        settle().await;
        assert_eq!(
            backend.with_machine(|m| m.position(last.id(), "doc")),
            Some(1)
        );
        let told: Vec<_> = std::iter::from_fn(|| last_n.try_recv()).collect();
        assert_eq!(told.len(), 1, "told its final place once: {told:?}");
        match &told[0].kind {
            crate::notice::NoticeKind::Presence(p) => assert_eq!(p.position, Some(1)),
            k => panic!("expected a presence, got {k:?}"),
        }
    }

    /// The batch's slack delays the removal, not the end of the grace: a resume after the
    /// deadline is refused while the batch waits.
    #[tokio::test(start_paused = true)]
    async fn a_resume_after_the_deadline_is_refused_during_the_slack() {
        let backend = MemoryBackend::new();
        let hub = hub_on(&backend);
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join("doc", None).await.unwrap();
        let token = a.resume_token();
        a.disconnect().await;
        tokio::time::sleep(GRACE + Duration::from_millis(1)).await;
        settle().await;
        assert!(
            backend.with_machine(|m| m.contains_session(a.id())),
            "not removed yet"
        );
        assert!(matches!(hub.resume(token).await, Err(Error::ResumeInvalid)));
        assert!(!backend.with_machine(|m| m.contains_session(a.id())));
    }
}
