//! The [`Backend`] trait: the seam between the [`Hub`](crate::Hub) runtime and wherever the room
//! state lives, and the [`NoticeSink`] through which a backend hands notices back to the Hub.
//!
//! [`MemoryBackend`](crate::MemoryBackend) keeps the state in this process (a
//! [`Machine`](crate::Machine) behind a mutex); a Redis backend keeps it in Redis so several server
//! instances share one world. The Hub does not care which: it calls the backend, and the backend
//! pushes notices into the sink.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::{Config, Ending};
use crate::error::Error;
use crate::ids::{Meta, ResumeToken, RoomId, SessionId};
use crate::machine::{ForcedRelease, Joined, Left, Resumed, Stats};
use crate::notice::{Notice, PresenceBody, room_notices};
use crate::state::{RoomState, RoomSummary};

/// Where room state lives. The [`Hub`](crate::Hub) owns one backend and calls it for every
/// operation; the backend decides nothing the [`Machine`](crate::Machine) would not decide (every
/// rule of DESIGN.md is the machine's or is checked by the shared conformance suite,
/// `occupancy_core::testing`).
///
/// # Contract
///
/// - **Operations** mirror the machine's: each returns what [`Machine`](crate::Machine) returns for
///   the same call, with the same typed errors, and a call that fails changes nothing. `now` is the
///   Hub's clock (`tokio::time::Instant::now().into_std()`, so paused-time tests work).
/// - **Notices** go to the [`NoticeSink`] given in [`Backend::attach`], never through return
///   values. For each room, notices must be delivered in version order, and never concurrently
///   with another delivery for the same room (the memory backend queues notices per room under its
///   lock and delivers them after releasing it, one delivery at a time per room, which gives
///   both). A call should return after its own notices were delivered (the adapters write notices
///   already queued before a request's reply). The sink never blocks and never calls back into
///   the backend, so calling it under a lock is fine — but a long fan-out under a lock holds up
///   every other room that lock guards.
/// - **Timers**: [`Backend::poll_timeout`] / [`Backend::handle_timeout`] are driven by the Hub's
///   timer task, which also re-polls after every disconnect.
/// - **Errors** that are not the caller's fault (a lost connection) are
///   [`Error::Unavailable`].
///
/// # Implementing a remote backend (Redis)
///
/// A remote backend keeps the truth elsewhere and runs each transition atomically there (one Lua
/// script per operation). It publishes every changed room's *new state* (not a delta). Each node
/// subscribes, keeps the last state it saw per room (only for rooms that have local sessions or
/// watchers, see [`NoticeSink::is_local`]), drops states whose version is not newer than that, and
/// calls [`NoticeSink::room_changed`] with (last seen, new): the pure
/// [`room_notices`](crate::room_notices) computes the notices, the sink keeps those for sessions
/// of this node. The node's own transitions go the same way, so a local call and a remote change
/// produce exactly the same notices, and a lost or late message is healed by the next state.
///
/// Sessions of this node that end for a reason the Hub did not cause (resumed on another node,
/// swept after this node's lease expired) are reported with [`NoticeSink::session_ended`], so the
/// Hub closes their connections. The Hub looks every resume token up with
/// [`Backend::session_for_token`] (a token of this node or of another), which lets it install the
/// new connection's notice channel before the resume runs (so the presence notices the resume
/// produces are not lost).
///
/// `now` is this process's monotonic clock: a backend that keeps grace deadlines elsewhere
/// converts `deadline - now` into its own clock (Redis `TIME`, key expiry) and reports local
/// sessions it expires with [`NoticeSink::session_ended`] (or lets the Hub forget them at the
/// deadline it computed itself). [`Backend::poll_timeout`] may return `None` if the backend runs
/// its own timers.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Called once by [`HubBuilder::build`](crate::HubBuilder::build), before any other call:
    /// the configuration to enforce and the sink for notices. A backend that is already attached
    /// to another Hub, or cannot use this configuration, returns [`Error::Config`].
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error>;

    /// Registers a new live session (see [`Machine::connect`](crate::Machine::connect)).
    async fn connect(
        &self,
        session: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error>;

    /// The session's connection ended as `ending` says; its grace
    /// ([`Config::grace_for`]) starts at `now` (see
    /// [`Machine::disconnect_as`](crate::Machine::disconnect_as)).
    async fn disconnect(
        &self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error>;

    /// Many connections ended at once, the same way (see
    /// [`Machine::disconnect_many_as`](crate::Machine::disconnect_many_as)): a backend may merge
    /// the changes per room, so that with zero grace n sessions leaving one room cost O(n) and
    /// each remaining member is told its final place once. Unknown sessions are skipped. The
    /// default calls [`Backend::disconnect`] for each.
    async fn disconnect_many(
        &self,
        sessions: &[SessionId],
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        for &session in sessions {
            match self.disconnect(session, now, ending).await {
                Ok(()) | Err(Error::UnknownSession) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes the session at once, leaving all its rooms
    /// (see [`Machine::close`](crate::Machine::close)).
    async fn close(&self, session: SessionId) -> Result<(), Error>;

    /// Takes a session back with its token (see [`Machine::resume`](crate::Machine::resume)).
    async fn resume(
        &self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error>;

    /// Stands the session in a room's line (see [`Machine::join`](crate::Machine::join)).
    async fn join(
        &self,
        session: SessionId,
        room: &str,
        meta: Option<Meta>,
    ) -> Result<Joined, Error>;

    /// Changes the metadata the session's occupant shows in a room it stands in
    /// (see [`Machine::update`](crate::Machine::update)).
    async fn update(&self, session: SessionId, room: &str, meta: Meta) -> Result<Joined, Error>;

    /// Refreshes the idle clock of the session's occupant in a room it holds
    /// (see [`Machine::active`](crate::Machine::active)).
    async fn active(&self, session: SessionId, room: &str) -> Result<Joined, Error>;

    /// Forces a release of a room: the holder is displaced with reason `"server"`
    /// (see [`Machine::release`](crate::Machine::release)).
    async fn release(&self, room: &str) -> Result<ForcedRelease, Error>;

    /// Takes the session out of a room's line (see [`Machine::leave`](crate::Machine::leave)).
    async fn leave(&self, session: SessionId, room: &str) -> Result<Left, Error>;

    /// Moves the session's occupant to the front
    /// (see [`Machine::takeover`](crate::Machine::takeover)).
    async fn takeover(&self, session: SessionId, room: &str) -> Result<Joined, Error>;

    /// Watches a room (see [`Machine::watch`](crate::Machine::watch)).
    async fn watch(&self, session: SessionId, room: &str) -> Result<PresenceBody, Error>;

    /// Stops watching a room (see [`Machine::unwatch`](crate::Machine::unwatch)).
    async fn unwatch(&self, session: SessionId, room: &str) -> Result<bool, Error>;

    /// A room's current state (`None` when nobody stands in or watches it).
    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error>;

    /// A room at a glance (see [`Machine::summary`](crate::Machine::summary)). The default reads
    /// the whole room ([`Backend::room`]) and cannot count watchers (0).
    async fn summary(&self, room: &str) -> Result<Option<RoomSummary>, Error> {
        let Some(state) = self.room(room).await? else {
            return Ok(None);
        };
        Ok(Some(RoomSummary {
            room: RoomId::parse(room, usize::MAX)?,
            version: state.version,
            holder: state.holder().map(|o| o.person()),
            held_since: state.holder().and(state.held_since),
            waiting: state.waiting() as u32,
            watchers: 0,
        }))
    }

    /// One page of the rooms in order of their ids, after `after` (see
    /// [`Machine::rooms_page`](crate::Machine::rooms_page)). The default refuses: a backend that
    /// cannot list its rooms says so with [`Error::Unavailable`].
    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomSummary>, Error> {
        let _ = (after, limit);
        Err(Error::Unavailable {
            reason: "this backend cannot list its rooms".into(),
        })
    }

    /// Counts for metrics.
    async fn stats(&self) -> Result<Stats, Error>;

    /// The earliest instant at which [`Backend::handle_timeout`] has work, if any.
    async fn poll_timeout(&self) -> Option<Instant>;

    /// Expires every grace that ended at or before `now`; returns how many sessions expired.
    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error>;

    /// The session a resume token belongs to and its principal (`None`: no session holds it).
    /// [`Hub::resume`](crate::Hub::resume) asks this first, for every token: the Hub keeps no
    /// token index of its own (it would cost every idle connection another map entry). Cheap
    /// for the memory backends; a round trip for Redis.
    async fn session_for_token(
        &self,
        token: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error>;

    /// Checks the backend's internal invariants (for tests; O(everything)). The default checks
    /// nothing.
    async fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Where a [`Backend`] delivers notices: implemented by the Hub, handed to the backend in
/// [`Backend::attach`].
///
/// Calls never block and never call back into the backend: a backend may call them while holding
/// its own lock. (The memory backend does not: it queues a change's notices under its lock and
/// delivers them after releasing it, one delivery at a time per room — see its module docs.)
pub trait NoticeSink: Send + Sync + 'static {
    /// Delivers notices, in order. Notices for sessions that are not connected to this Hub (in
    /// grace, gone, or on another node) are dropped.
    fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>);

    /// A room went from `old` to `new` (for example a state published by another node): computes
    /// the notices with [`room_notices`] and delivers them. `watchers` are the room's watchers.
    fn room_changed(
        &self,
        room: &RoomId,
        old: &RoomState,
        new: &RoomState,
        watchers: &[SessionId],
        presence_occupants: usize,
    ) {
        let mut out = Vec::new();
        room_notices(room, old, new, watchers, presence_occupants, &mut out);
        if !out.is_empty() {
            self.deliver(&mut out.into_iter());
        }
    }

    /// True while somebody subscribed to room changes ([`Hub::changes`](crate::Hub::changes)):
    /// the backend then reports each change with [`NoticeSink::rooms_changed`]. Cheap (an atomic
    /// load): a backend may ask before every operation.
    fn wants_changes(&self) -> bool {
        false
    }

    /// Rooms changed, in order, each with its new version (see [`NoticeSink::wants_changes`]).
    fn rooms_changed(&self, changes: &[(RoomId, u64)]) {
        let _ = changes;
    }

    /// The backend set a deadline earlier than the one [`Backend::poll_timeout`] gave before (an
    /// idle holder's, see [`Config::idle_timeout`](crate::Config::idle_timeout)): the Hub's timer
    /// task polls again. The default does nothing (a backend that runs its own timers).
    fn wake_timers(&self) {}

    /// True when `session` has a live connection on this Hub (its notices would be delivered).
    fn is_local(&self, session: SessionId) -> bool;

    /// The backend ended a session of this Hub for its own reasons (resumed on another node,
    /// expired by another node's sweep): the Hub closes the connection with `reason` (see
    /// [`Notices::close_reason`](crate::Notices::close_reason)) and forgets the session.
    fn session_ended(&self, session: SessionId, reason: Option<Error>);
}
