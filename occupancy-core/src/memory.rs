//! [`MemoryBackend`]: the [`Backend`] that keeps every room in this process — the
//! [`Machine`] behind a `std::sync::Mutex`, never held across an `.await`, and held only for the
//! state change: the change's notices are queued in the relay (`relay.rs`) under the lock, in
//! state order, and delivered to the Hub after it is released. Each room's notices still reach
//! every session in version order however many tasks call at once, and a crowded room's fan-out
//! no longer holds up every other room.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use async_trait::async_trait;

use crate::backend::{Backend, NoticeSink};
use crate::config::{Config, Ending};
use crate::error::Error;
use crate::ids::{Meta, ResumeToken, SessionId};
use crate::machine::{ForcedRelease, Joined, Left, Machine, Resumed, Stats};
use crate::notice::PresenceBody;
use crate::relay::Relay;
use crate::state::{RoomState, RoomSummary};

/// The in-memory [`Backend`] with one machine for every room: what
/// [`Hub::builder`](crate::Hub::builder) uses unless told [`HubBuilder::shards`](crate::HubBuilder::shards)
/// (then a [`ShardedBackend`](crate::ShardedBackend)).
///
/// Cheap to clone (an `Arc` inside): keep a clone to look at the machine in tests
/// ([`MemoryBackend::with_machine`]). The Hub's configuration replaces the machine's at
/// [`Backend::attach`].
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    machine: Mutex<Machine>,
    sink: OnceLock<Arc<dyn NoticeSink>>,
    relay: Arc<Relay>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("stats", &self.lock().stats())
            .finish()
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read access to the machine (for tests and diagnostics: invariants, positions). Holds the
    /// backend's lock while `f` runs: keep it short.
    pub fn with_machine<R>(&self, f: impl FnOnce(&Machine) -> R) -> R {
        f(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // A panic inside the machine would be a bug; the state is still consistent enough to read.
        self.inner
            .machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the machine at the current time ([`Machine::advance`]); its notices are
    /// delivered after the lock is released ([`Relay::run`]).
    async fn run<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        let inner = &self.inner;
        crate::memory::run_on(&inner.relay, &inner.machine, inner.sink.get(), None, f).await
    }

    /// [`MemoryBackend::run`] for a request about `room`: returns only once every notice queued
    /// for that room before the change was delivered ([`Relay::run`]).
    async fn run_in<R>(&self, room: &str, f: impl FnOnce(&mut Machine) -> R) -> R {
        let inner = &self.inner;
        crate::memory::run_on(
            &inner.relay,
            &inner.machine,
            inner.sink.get(),
            Some(room),
            f,
        )
        .await
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error> {
        let mut m = self.lock();
        if self.inner.sink.get().is_some() {
            return Err(Error::Config(
                "this MemoryBackend is already attached to a Hub".into(),
            ));
        }
        if m.config() != config {
            if m.stats().sessions != 0 {
                return Err(Error::Config(
                    "cannot reconfigure a MemoryBackend that has sessions".into(),
                ));
            }
            *m = Machine::new(config.clone())?;
        }
        set_wall_clock(&mut m);
        self.inner
            .sink
            .set(sink)
            .map_err(|_| Error::Config("this MemoryBackend is already attached to a Hub".into()))
    }

    async fn connect(
        &self,
        session: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error> {
        self.run(|m| m.connect(session, principal, meta, token))
            .await
    }

    async fn disconnect(
        &self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        self.run(|m| m.disconnect_as(session, now, ending)).await
    }

    async fn disconnect_many(
        &self,
        sessions: &[SessionId],
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        self.run(|m| m.disconnect_many_as(sessions, now, ending))
            .await;
        Ok(())
    }

    async fn close(&self, session: SessionId) -> Result<(), Error> {
        self.run(|m| m.close(session)).await
    }

    async fn session_for_token(
        &self,
        token: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error> {
        let m = self.lock();
        Ok(m.session_for_token(token)
            .map(|(id, principal)| (id, principal.map(str::to_string))))
    }

    async fn resume(
        &self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error> {
        self.run(|m| m.resume(token, new_token, now)).await
    }

    async fn join(
        &self,
        session: SessionId,
        room: &str,
        meta: Option<Meta>,
    ) -> Result<Joined, Error> {
        self.run_in(room, |m| m.join(session, room, meta)).await
    }

    async fn update(&self, session: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        self.run_in(room, |m| m.update(session, room, meta)).await
    }

    async fn active(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        self.run_in(room, |m| m.active(session, room)).await
    }

    async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        self.run_in(room, |m| m.release(room)).await
    }

    async fn leave(&self, session: SessionId, room: &str) -> Result<Left, Error> {
        self.run_in(room, |m| m.leave(session, room)).await
    }

    async fn takeover(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        self.run_in(room, |m| m.takeover(session, room)).await
    }

    async fn watch(&self, session: SessionId, room: &str) -> Result<PresenceBody, Error> {
        self.run_in(room, |m| m.watch(session, room)).await
    }

    async fn unwatch(&self, session: SessionId, room: &str) -> Result<bool, Error> {
        self.run_in(room, |m| m.unwatch(session, room)).await
    }

    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        Ok(self.lock().room(room))
    }

    async fn summary(&self, room: &str) -> Result<Option<RoomSummary>, Error> {
        Ok(self.lock().summary(room))
    }

    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomSummary>, Error> {
        Ok(self.lock().rooms_page(after, limit))
    }

    async fn stats(&self) -> Result<Stats, Error> {
        Ok(self.lock().stats())
    }

    async fn poll_timeout(&self) -> Option<Instant> {
        self.lock().poll_timeout()
    }

    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error> {
        Ok(self.run(|m| m.handle_timeout(now)).await)
    }

    async fn check_invariants(&self) -> Result<(), String> {
        self.lock().check_invariants()
    }
}

/// Runs `f` on `machine` for a backend: at the runtime's time ([`Machine::advance`]), recording
/// the rooms it changes while the sink wants them; its notices are delivered after the lock is
/// released ([`Relay::run`]), and then the sink hears of an earlier deadline and of the changes.
pub(crate) async fn run_on<R>(
    relay: &Arc<Relay>,
    machine: &Mutex<Machine>,
    sink: Option<&Arc<dyn NoticeSink>>,
    room: Option<&str>,
    f: impl FnOnce(&mut Machine) -> R,
) -> R {
    let record = sink.is_some_and(|s| s.wants_changes());
    let mut moved = false;
    let mut changes = Vec::new();
    let f = |m: &mut Machine| {
        m.advance(crate::hub::now());
        m.record_changes(record);
        let r = f(m);
        moved = m.take_deadline_moved();
        if record {
            m.take_changes(&mut changes);
        }
        r
    };
    let r = relay.run(machine, sink, room, f).await;
    if let Some(sink) = sink {
        if moved {
            sink.wake_timers();
        }
        if !changes.is_empty() {
            sink.rooms_changed(&changes);
        }
    }
    r
}

/// Anchors the machine's `since` / `held_since` stamps to the system clock, now.
pub(crate) fn set_wall_clock(m: &mut Machine) {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    m.set_wall_clock(crate::hub::now(), unix_ms);
}
