//! [`ShardedBackend`]: the in-memory [`Backend`] with rooms spread over several state machines,
//! so that independent rooms proceed in parallel (DESIGN.md "Cost rules": rooms spread over
//! cores). Chosen with [`HubBuilder::shards`](crate::HubBuilder::shards) (its docs give the
//! measured trade-off); [`MemoryBackend`](crate::MemoryBackend), the default, keeps one machine.
//!
//! Each room lives in one shard (a [`Machine`] behind its own mutex), chosen by a keyed hash of
//! its id; every rule of a room is that shard's machine's. A session spans shards: a small table
//! keeps what is the session's own — its principal, metadata and token, its grace, which shards
//! it is known to, and how many rooms it stands in or watches (the rooms-per-session limit spans
//! shards, so the table enforces it; the shards' machines are built without that limit). A
//! session is connected to a shard's machine the first time it joins or watches a room there,
//! and its disconnect, resume and close touch only the shards it is known to.
//!
//! The table is striped by session id ([`STRIPES`] mutexes, each on its own cache line), so two
//! sessions working in rooms of different shards share no lock at all: a join or leave touches
//! its room's shard and its own stripe. Resume tokens have an index of their own, touched only
//! by connect, resume and the end of a session.
//!
//! Lock order: a shard, then a stripe, then the token index (never the other way round, and
//! never two shards or two stripes at once). A join reserves its place in the session's room
//! count in its stripe first, then — under the shard's lock — checks the session is still live,
//! connects it there if needed and joins; so a close or disconnect that runs meanwhile either
//! sees the shard in the session's set or makes the join fail.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use async_trait::async_trait;

use crate::backend::{Backend, NoticeSink};
use crate::config::{Config, Ending};
use crate::error::Error;
use crate::ids::{Meta, ResumeToken, RoomId, SessionId};
use crate::machine::{ForcedRelease, IdHash, Joined, Left, Machine, Resumed, Stats};
use crate::notice::PresenceBody;
use crate::relay::Relay;
use crate::state::{RoomState, RoomSummary};

/// At most this many shards (a session's shards are a bit set in a `u64`).
pub const MAX_SHARDS: usize = 64;

/// How many stripes the session table is split into.
const STRIPES: usize = 64;

/// The in-memory [`Backend`] with rooms spread over several shards. See the module docs.
#[derive(Clone)]
pub struct ShardedBackend {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Machine>]>,
    table: Box<[Padded<Mutex<Stripe>>]>,
    tokens: Mutex<HashMap<ResumeToken, SessionId, IdHash>>,
    config: OnceLock<Config>,
    sink: OnceLock<Arc<dyn NoticeSink>>,
    relay: Arc<Relay>,
    hasher: foldhash::fast::RandomState,
}

/// Keeps each stripe on a cache line of its own, so that two cores locking different stripes
/// do not take the line from each other.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// One stripe of the session table: the sessions whose id hashes to it.
#[derive(Default)]
struct Stripe {
    sessions: HashMap<SessionId, Entry, IdHash>,
    grace: BTreeSet<(Instant, SessionId)>,
}

struct Entry {
    principal: Option<Arc<str>>,
    meta: Meta,
    token: ResumeToken,
    grace_until: Option<Instant>,
    /// The shards this session may be known to (a bit per shard).
    shards: u64,
    /// Rooms it stands in or watches, plus joins and watches under way (reserved).
    rooms: usize,
    /// Rooms it stands in and rooms it watches, in the order it entered them (for resume).
    joined: Vec<RoomId>,
    watching: Vec<RoomId>,
}

impl std::fmt::Debug for ShardedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedBackend")
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl ShardedBackend {
    /// A backend with `shards` shards (1 ..= [`MAX_SHARDS`]); a good choice is the runtime's
    /// worker count.
    pub fn new(shards: usize) -> Result<Self, Error> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(Error::Config(format!(
                "shards must be between 1 and {MAX_SHARDS}, not {shards}"
            )));
        }
        Ok(ShardedBackend {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| Mutex::new(Machine::default()))
                    .collect(),
                table: (0..STRIPES).map(|_| Padded::default()).collect(),
                tokens: Mutex::default(),
                config: OnceLock::new(),
                sink: OnceLock::new(),
                relay: Arc::default(),
                hasher: foldhash::fast::RandomState::default(),
            }),
        })
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    fn config(&self) -> &Config {
        self.inner.config.get_or_init(Config::default)
    }

    /// The shard that holds `room` (the hash is keyed at random per backend: it differs from
    /// one run to the next). For diagnostics and benches.
    pub fn shard_of(&self, room: &str) -> usize {
        (self.inner.hasher.hash_one(room) as usize) % self.inner.shards.len()
    }

    /// The stripe of the table that holds `session`.
    fn table(&self, session: SessionId) -> MutexGuard<'_, Stripe> {
        let i = (self.inner.hasher.hash_one(session.0) as usize) % STRIPES;
        self.stripe(i)
    }

    fn stripe(&self, i: usize) -> MutexGuard<'_, Stripe> {
        self.inner.table[i]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<ResumeToken, SessionId, IdHash>> {
        self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Machine> {
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on shard `i`; its notices are delivered after the shard's lock is released,
    /// as in the memory backend ([`Relay::run`]).
    async fn run<R>(&self, i: usize, f: impl FnOnce(&mut Machine) -> R) -> R {
        let inner = &self.inner;
        crate::memory::run_on(&inner.relay, &inner.shards[i], inner.sink.get(), None, f).await
    }

    /// [`ShardedBackend::run`] for a request about `room` (see [`Relay::run`]).
    async fn run_in<R>(&self, i: usize, room: &str, f: impl FnOnce(&mut Machine) -> R) -> R {
        let inner = &self.inner;
        crate::memory::run_on(
            &inner.relay,
            &inner.shards[i],
            inner.sink.get(),
            Some(room),
            f,
        )
        .await
    }

    /// Runs `f` (a call that needs `session` to stand in `room`) on the room's shard, in the
    /// machine's order of checks: the room id, the session, then `missing` when the session has
    /// never been in that shard (the shard's machine would not know it).
    async fn in_room<R>(
        &self,
        session: SessionId,
        room: &str,
        missing: Error,
        f: impl FnOnce(&mut Machine) -> Result<R, Error>,
    ) -> Result<R, Error> {
        RoomId::check(room, self.config().limits.max_room_id_len)?;
        let shard = self.shard_of(room);
        if Self::shards_of(self.live_shards(session)?).all(|s| s != shard) {
            return Err(missing);
        }
        self.run_in(shard, room, |m| {
            if !m.contains_session(session) {
                return Err(missing);
            }
            f(m)
        })
        .await
    }

    fn shards_of(bits: u64) -> impl Iterator<Item = usize> {
        (0..MAX_SHARDS).filter(move |i| bits & (1 << i) != 0)
    }

    /// A live session's shard set, or `UnknownSession`.
    fn live_shards(&self, session: SessionId) -> Result<u64, Error> {
        match self.table(session).sessions.get(&session) {
            Some(e) if e.grace_until.is_none() => Ok(e.shards),
            _ => Err(Error::UnknownSession),
        }
    }

    /// Reserves a place in the session's room count (false when at the limit) and marks the
    /// shard as one the session may be known to.
    fn reserve(&self, session: SessionId, shard: usize) -> Result<bool, Error> {
        let limit = self.config().limits.max_rooms_per_session;
        let mut t = self.table(session);
        let e = match t.sessions.get_mut(&session) {
            Some(e) if e.grace_until.is_none() => e,
            _ => return Err(Error::UnknownSession),
        };
        e.shards |= 1 << shard;
        if e.rooms < limit {
            e.rooms += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Settles a reservation: gives it back unless `entered` (then the room is recorded).
    fn settle(&self, session: SessionId, reserved: bool, entered: Option<(RoomId, bool)>) {
        let mut t = self.table(session);
        let Some(e) = t.sessions.get_mut(&session) else {
            return;
        };
        match entered {
            Some((room, watch)) => {
                // Entering a room needs a reservation (`enter` refuses without one).
                debug_assert!(reserved);
                let list = if watch {
                    &mut e.watching
                } else {
                    &mut e.joined
                };
                if list.capacity() == 0 {
                    // Most sessions stand in one room: room for one, not four (the memory of an
                    // idle connection).
                    list.reserve_exact(1);
                }
                list.push(room);
            }
            None if reserved => e.rooms -= 1,
            None => {}
        }
    }

    /// Under shard `m`'s lock: connects the session to it if needed, if it is still live.
    fn ensure_connected(&self, m: &mut Machine, session: SessionId) -> Result<(), Error> {
        // Known and live here: the table agrees (a disconnect or close marks the table first,
        // then each shard in the session's set, which includes this one since `reserve`).
        if m.is_live(session) {
            return Ok(());
        }
        let t = self.table(session);
        let Some(e) = t.sessions.get(&session).filter(|e| e.grace_until.is_none()) else {
            return Err(Error::UnknownSession);
        };
        if !m.contains_session(session) {
            let (principal, meta, token) = (e.principal.clone(), e.meta.clone(), e.token);
            drop(t);
            m.connect(session, principal.as_deref(), meta, token)?;
        }
        Ok(())
    }

    /// Enters a room (join or watch) under the table's room limit. `room_of` gives the room's
    /// id from the result when it has one (saves parsing it again).
    async fn enter<T>(
        &self,
        session: SessionId,
        room: &str,
        watch: bool,
        op: impl FnOnce(&mut Machine) -> Result<T, Error>,
        room_of: fn(&T) -> Option<RoomId>,
    ) -> Result<T, Error> {
        let config = self.config();
        RoomId::check(room, config.limits.max_room_id_len)?;
        let shard = self.shard_of(room);
        let reserved = self.reserve(session, shard)?;
        let limit = config.limits.max_rooms_per_session;
        let (result, entered) = self
            .run_in(shard, room, |m| {
                if let Err(e) = self.ensure_connected(m, session) {
                    return (Err(e), false);
                }
                let already = if watch {
                    m.session_watching(session)
                        .is_some_and(|w| w.iter().any(|r| r.as_str() == room))
                } else {
                    m.position(session, room).is_some()
                };
                if !already && !reserved {
                    return (Err(Error::TooManyRooms { limit }), false);
                }
                let r = op(m);
                let entered = r.is_ok() && !already;
                (r, entered)
            })
            .await;
        let room_id = match &result {
            Ok(v) if entered => Some(match room_of(v) {
                Some(id) => id,
                None => RoomId::parse(room, usize::MAX)?,
            }),
            _ => None,
        };
        self.settle(session, reserved, room_id.map(|r| (r, watch)));
        result
    }

    /// Leaves a room (leave or unwatch): `Ok(None)` when the session is not known to the shard.
    async fn exit<T>(
        &self,
        session: SessionId,
        room: &str,
        watch: bool,
        op: impl FnOnce(&mut Machine) -> Result<T, Error>,
        was: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, Error> {
        RoomId::check(room, self.config().limits.max_room_id_len)?;
        let shard = self.shard_of(room);
        if Self::shards_of(self.live_shards(session)?).all(|s| s != shard) {
            return Ok(None);
        }
        let r = self
            .run_in(shard, room, |m| {
                if !m.contains_session(session) {
                    return Ok(None);
                }
                op(m).map(Some)
            })
            .await?;
        if let Some(v) = &r
            && was(v)
        {
            let mut t = self.table(session);
            if let Some(e) = t.sessions.get_mut(&session) {
                e.rooms -= 1;
                let list = if watch {
                    &mut e.watching
                } else {
                    &mut e.joined
                };
                list.retain(|r| r.as_str() != room);
            }
        }
        Ok(r)
    }

    /// Removes sessions from the table; returns each one's shard set.
    fn forget(&self, sessions: &[SessionId]) -> Vec<(SessionId, u64)> {
        let mut out = Vec::with_capacity(sessions.len());
        let mut tokens = Vec::with_capacity(sessions.len());
        for &s in sessions {
            let mut t = self.table(s);
            if let Some(e) = t.sessions.remove(&s) {
                if let Some(d) = e.grace_until {
                    t.grace.remove(&(d, s));
                }
                tokens.push(e.token);
                out.push((s, e.shards));
            }
        }
        let mut index = self.tokens();
        for token in tokens {
            index.remove(&token);
        }
        out
    }

    /// How many sessions the table holds (live or in grace).
    fn session_count(&self) -> usize {
        (0..STRIPES).map(|i| self.stripe(i).sessions.len()).sum()
    }

    /// Closes forgotten sessions in their shards, one batch per shard.
    async fn close_in_shards(&self, gone: &[(SessionId, u64)]) {
        self.per_shard(gone, |m, here| {
            m.close_many(here);
        })
        .await
    }

    /// Runs `f` once in each shard that some of `sessions` (each with its shard set) are known
    /// to, with those sessions: a batch becomes one change per shard, not one per session.
    async fn per_shard(
        &self,
        sessions: &[(SessionId, u64)],
        f: impl Fn(&mut Machine, &[SessionId]),
    ) {
        let mut here = Vec::new();
        for shard in 0..self.inner.shards.len() {
            here.clear();
            here.extend(
                sessions
                    .iter()
                    .filter(|(_, bits)| bits & (1 << shard) != 0)
                    .map(|&(s, _)| s),
            );
            if !here.is_empty() {
                self.run(shard, |m| f(m, &here)).await;
            }
        }
    }
}

#[async_trait]
impl Backend for ShardedBackend {
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error> {
        if self.inner.config.get().is_some_and(|c| c != config) || self.session_count() > 0 {
            return Err(Error::Config(
                "this ShardedBackend is already in use with another configuration".into(),
            ));
        }
        // The room limit per session spans shards: the table keeps it, not the machines.
        let mut shard_config = config.clone();
        shard_config.limits.max_rooms_per_session = usize::MAX;
        for i in 0..self.inner.shards.len() {
            let mut m = Machine::new(shard_config.clone())?;
            crate::memory::set_wall_clock(&mut m);
            *self.shard(i) = m;
        }
        let _ = self.inner.config.set(config.clone());
        self.inner
            .sink
            .set(sink)
            .map_err(|_| Error::Config("this ShardedBackend is already attached to a Hub".into()))
    }

    async fn connect(
        &self,
        session: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error> {
        let mut t = self.table(session);
        let mut tokens = self.tokens();
        if t.sessions.contains_key(&session) || tokens.contains_key(&token) {
            return Err(Error::SessionExists);
        }
        meta.check(self.config().limits.max_meta_bytes)?;
        tokens.insert(token, session);
        drop(tokens);
        t.sessions.insert(
            session,
            Entry {
                principal: principal.map(Arc::from),
                meta,
                token,
                grace_until: None,
                shards: 0,
                rooms: 0,
                joined: Vec::new(),
                watching: Vec::new(),
            },
        );
        Ok(())
    }

    async fn disconnect(
        &self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        let grace = self.config().grace_for(ending);
        let bits = {
            let mut t = self.table(session);
            let e = t.sessions.get_mut(&session).ok_or(Error::UnknownSession)?;
            if e.grace_until.is_some() {
                return Ok(());
            }
            if !grace.is_zero() {
                e.grace_until = Some(now + grace);
                let bits = e.shards;
                t.grace.insert((now + grace, session));
                Some(bits)
            } else {
                None
            }
        };
        match bits {
            Some(bits) => {
                for shard in Self::shards_of(bits) {
                    self.run(shard, |m| match m.disconnect_as(session, now, ending) {
                        Ok(()) | Err(Error::UnknownSession) => {}
                        Err(e) => debug_assert!(false, "disconnect in a shard: {e}"),
                    })
                    .await;
                }
                Ok(())
            }
            None => self.close(session).await,
        }
    }

    async fn disconnect_many(
        &self,
        sessions: &[SessionId],
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        let grace = self.config().grace_for(ending);
        if grace.is_zero() {
            let gone = self.forget(sessions);
            self.close_in_shards(&gone).await;
            return Ok(());
        }
        // Marked in the table first (as `disconnect` does), then one batch per shard.
        let deadline = now + grace;
        let mut marked = Vec::with_capacity(sessions.len());
        for &s in sessions {
            let mut t = self.table(s);
            if let Some(e) = t.sessions.get_mut(&s)
                && e.grace_until.is_none()
            {
                e.grace_until = Some(deadline);
                marked.push((s, e.shards));
                t.grace.insert((deadline, s));
            }
        }
        self.per_shard(&marked, |m, here| {
            m.disconnect_many_as(here, now, ending);
        })
        .await;
        Ok(())
    }

    async fn close(&self, session: SessionId) -> Result<(), Error> {
        let gone = self.forget(&[session]);
        if gone.is_empty() {
            return Err(Error::UnknownSession);
        }
        self.close_in_shards(&gone).await;
        Ok(())
    }

    async fn session_for_token(
        &self,
        token: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error> {
        let Some(session) = self.tokens().get(&token).copied() else {
            return Ok(None);
        };
        let t = self.table(session);
        Ok((t.sessions.get(&session))
            .filter(|e| e.token == token)
            .map(|e| (session, e.principal.as_deref().map(str::to_string))))
    }

    async fn resume(
        &self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error> {
        let session = *self.tokens().get(&token).ok_or(Error::ResumeInvalid)?;
        let expired = {
            let t = self.table(session);
            let e = (t.sessions.get(&session))
                .filter(|e| e.token == token)
                .ok_or(Error::ResumeInvalid)?;
            if token != new_token && self.tokens().contains_key(&new_token) {
                return Err(Error::SessionExists);
            }
            e.grace_until.is_some_and(|d| d <= now)
        };
        if expired {
            // Expired, but the timer has not run yet: it is gone all the same.
            self.close(session).await?;
            return Err(Error::ResumeInvalid);
        }
        let (was_live, bits, joined, watching) = {
            let mut t = self.table(session);
            // Checked again: another resume or a close may have run meanwhile.
            let e = (t.sessions.get_mut(&session))
                .filter(|e| e.token == token)
                .ok_or(Error::ResumeInvalid)?;
            {
                let mut tokens = self.tokens();
                if token != new_token && tokens.contains_key(&new_token) {
                    return Err(Error::SessionExists);
                }
                tokens.remove(&token);
                tokens.insert(new_token, session);
            }
            let was_live = e.grace_until.is_none();
            let deadline = e.grace_until.take();
            e.token = new_token;
            let out = (was_live, e.shards, e.joined.clone(), e.watching.clone());
            if let Some(d) = deadline {
                t.grace.remove(&(d, session));
            }
            out
        };
        let mut rooms = Vec::with_capacity(joined.len());
        for shard in Self::shards_of(bits) {
            // A shard a join is only now connecting the session to does not know it yet.
            if let Ok(r) = self.run(shard, |m| m.resume(token, new_token, now)).await {
                rooms.extend(r.rooms);
            }
        }
        // In the order the session entered them, as from one machine.
        rooms.sort_by_key(|j| joined.iter().position(|r| r == &j.room));
        Ok(Resumed {
            session,
            was_live,
            rooms,
            watching,
        })
    }

    async fn join(
        &self,
        session: SessionId,
        room: &str,
        meta: Option<Meta>,
    ) -> Result<Joined, Error> {
        if let Some(meta) = &meta {
            // In the machine's order: the room id, the session, then the metadata.
            RoomId::check(room, self.config().limits.max_room_id_len)?;
            self.live_shards(session)?;
            meta.check(self.config().limits.max_meta_bytes)?;
        }
        self.enter(
            session,
            room,
            false,
            |m| m.join(session, room, meta),
            |j| Some(j.room.clone()),
        )
        .await
    }

    async fn leave(&self, session: SessionId, room: &str) -> Result<Left, Error> {
        let left = self
            .exit(
                session,
                room,
                false,
                |m| m.leave(session, room),
                |l| l.was_member,
            )
            .await?;
        match left {
            Some(l) => Ok(l),
            None => Ok(Left {
                room: RoomId::parse(room, usize::MAX)?,
                was_member: false,
            }),
        }
    }

    async fn update(&self, session: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        // In the machine's order: the room id, the session, the metadata, then membership.
        let limits = &self.config().limits;
        RoomId::check(room, limits.max_room_id_len)?;
        let shard = self.shard_of(room);
        let known_here = Self::shards_of(self.live_shards(session)?).any(|s| s == shard);
        meta.check(limits.max_meta_bytes)?;
        if !known_here {
            return Err(Error::NotMember);
        }
        self.run_in(shard, room, |m| {
            if !m.contains_session(session) {
                return Err(Error::NotMember);
            }
            m.update(session, room, meta)
        })
        .await
    }

    async fn active(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        self.in_room(session, room, Error::NotMember, |m| m.active(session, room))
            .await
    }

    async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        RoomId::check(room, self.config().limits.max_room_id_len)?;
        let shard = self.shard_of(room);
        self.run_in(shard, room, |m| m.release(room)).await
    }

    async fn takeover(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        self.in_room(session, room, Error::NotInRoom, |m| {
            m.takeover(session, room)
        })
        .await
    }

    async fn watch(&self, session: SessionId, room: &str) -> Result<PresenceBody, Error> {
        self.enter(session, room, true, |m| m.watch(session, room), |_| None)
            .await
    }

    async fn unwatch(&self, session: SessionId, room: &str) -> Result<bool, Error> {
        Ok(self
            .exit(session, room, true, |m| m.unwatch(session, room), |w| *w)
            .await?
            .unwrap_or(false))
    }

    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        Ok(self.shard(self.shard_of(room)).room(room))
    }

    async fn summary(&self, room: &str) -> Result<Option<RoomSummary>, Error> {
        Ok(self.shard(self.shard_of(room)).summary(room))
    }

    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomSummary>, Error> {
        // Each shard's first `limit`, merged: the first `limit` of all.
        let mut all = Vec::new();
        for i in 0..self.inner.shards.len() {
            all.extend(self.shard(i).rooms_page(after, limit));
        }
        all.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        all.truncate(limit);
        Ok(all)
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let (mut sessions, mut sessions_in_grace) = (0, 0);
        for i in 0..STRIPES {
            let t = self.stripe(i);
            sessions += t.sessions.len();
            sessions_in_grace += t.grace.len();
        }
        let mut stats = Stats {
            sessions,
            sessions_in_grace,
            ..Stats::default()
        };
        for i in 0..self.inner.shards.len() {
            let s = self.shard(i).stats();
            stats.rooms += s.rooms;
            stats.occupants += s.occupants;
            stats.watchers += s.watchers;
            stats.invariant_checks += s.invariant_checks;
            stats.invariant_violations += s.invariant_violations;
        }
        Ok(stats)
    }

    async fn poll_timeout(&self) -> Option<Instant> {
        let mut due = (0..STRIPES)
            .filter_map(|i| self.stripe(i).grace.first().map(|&(d, _)| d))
            .min();
        for i in 0..self.inner.shards.len() {
            if let Some(d) = self.shard(i).poll_timeout() {
                due = Some(due.map_or(d, |x| x.min(d)));
            }
        }
        due
    }

    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error> {
        let mut tokens = Vec::new();
        for i in 0..STRIPES {
            let mut t = self.stripe(i);
            while let Some(&(d, s)) = t.grace.first() {
                if d > now {
                    break;
                }
                t.grace.pop_first();
                if let Some(e) = t.sessions.remove(&s) {
                    tokens.push(e.token);
                }
            }
        }
        let expired = tokens.len();
        {
            let mut index = self.tokens();
            for token in tokens {
                index.remove(&token);
            }
        }
        for i in 0..self.inner.shards.len() {
            self.run(i, |m| m.handle_timeout(now)).await;
        }
        Ok(expired)
    }

    async fn check_invariants(&self) -> Result<(), String> {
        let mut counted: HashMap<SessionId, usize> = HashMap::new();
        for i in 0..self.inner.shards.len() {
            let m = self.shard(i);
            m.check_invariants()
                .map_err(|e| format!("shard {i}: {e}"))?;
            for j in 0..STRIPES {
                let t = self.stripe(j);
                for (&s, e) in &t.sessions {
                    if !m.contains_session(s) {
                        continue;
                    }
                    if e.shards & (1 << i) == 0 {
                        return Err(format!(
                            "{s:?} is in shard {i} but the table does not say so"
                        ));
                    }
                    if m.is_live(s) != e.grace_until.is_none() {
                        return Err(format!(
                            "{s:?}: shard {i} and the table disagree on its grace"
                        ));
                    }
                    *counted.entry(s).or_default() += m.session_rooms(s).map_or(0, <[_]>::len)
                        + m.session_watching(s).map_or(0, <[_]>::len);
                }
            }
        }
        let mut sessions = 0;
        for j in 0..STRIPES {
            let t = self.stripe(j);
            sessions += t.sessions.len();
            for (s, e) in &t.sessions {
                let n = counted.get(s).copied().unwrap_or(0);
                if n != e.rooms || n != e.joined.len() + e.watching.len() {
                    return Err(format!(
                        "{s:?}: the table counts {} rooms ({} listed), the shards hold {n}",
                        e.rooms,
                        e.joined.len() + e.watching.len()
                    ));
                }
                if self.tokens().get(&e.token) != Some(s) {
                    return Err(format!("{s:?}: the token index does not lead to it"));
                }
                if e.grace_until.is_some_and(|d| !t.grace.contains(&(d, *s))) {
                    return Err(format!("{s:?}: in grace but not in its stripe's timers"));
                }
            }
        }
        if self.tokens().len() != sessions {
            return Err("the table's token index has leftovers".into());
        }
        Ok(())
    }
}
