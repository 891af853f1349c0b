//! The room-queue state machine: every rule of DESIGN.md "Rules" and nothing else.
//!
//! Sans-I/O, in the style of quinn-proto: a plain struct with no tokio, no locks and no clock.
//! Calls go in (with the current time where it matters), results come back as return values, and
//! notices for other sessions collect in an outbox ([`Machine::drain_notices`]). Grace deadlines
//! are exposed as [`Machine::poll_timeout`] / [`Machine::handle_timeout`], so a driver decides how
//! time passes — a tokio task in production, a plain loop in tests.
//!
//! Cost model (DESIGN.md "Cost rules"): every call touches only the rooms of the session it
//! names — `disconnect` walks the session's own room list (a reverse index), never the map of all
//! rooms, and the maps are hash maps, so forgetting a room is O(1) (an `IndexMap::shift_remove`
//! here would be O(all rooms)). Inside a room, work is proportional to the change: a place is
//! found through the line's index ([`Line`]), the machine describes the edit it made
//! ([`Change`]) instead of diffing the room, and only the people whose view changed are told.
//! Batches ([`Machine::close_many`], a `handle_timeout` ending many graces) merge their removals
//! per room, so n sessions leaving one room cost O(n), not O(n²).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::change::Change;
use crate::config::{Config, Ending};
use crate::error::Error;
use crate::ids::{Meta, OccupantKey, Person, ResumeToken, RoomId, SessionId};
use crate::line::Line;
use crate::notice::{DisplacedReason, Notice, NoticeKind, Presence, PresenceBody};
use crate::outbox::{Outbox, Outgoing};
use crate::room_table::{Keyed, RoomTable};
use crate::state::{OccupantState, RoomState, RoomSummary, Sessions};

/// The answer to a join or take over: where the session stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The room.
    pub room: RoomId,
    /// True when the session's occupant holds the room.
    pub holding: bool,
    /// 0 = holding, 1 = next in line, ...
    pub position: u32,
    /// The room's version after the call.
    pub version: u64,
    /// Who holds the room (possibly the caller).
    pub holder: Person,
}

/// The answer to a leave.
#[derive(Debug, Clone, PartialEq)]
pub struct Left {
    /// The room.
    pub room: RoomId,
    /// False when the session was not in the room (leave is idempotent).
    pub was_member: bool,
}

/// The answer to a resume: the session and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The resumed session (same id as before).
    pub session: SessionId,
    /// True when the session had not been disconnected yet (a client reconnecting before the
    /// server noticed the old connection died): the driver must close the old connection.
    pub was_live: bool,
    /// Its rooms and places, in the order they were joined.
    pub rooms: Vec<Joined>,
    /// The rooms it watches.
    pub watching: Vec<RoomId>,
}

/// The answer to a forced release ([`Machine::release`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ForcedRelease {
    /// Nobody held the room: nothing changed.
    Vacant,
    /// The holder was displaced (`displaced` with reason `"server"`) and the next in line
    /// released.
    HandedOver {
        /// The room's version after the change.
        version: u64,
        /// Who holds the room now.
        to: Person,
    },
    /// The holder is alone in the room: it keeps it until someone joins, who is then granted
    /// the room at once (the holder is displaced with reason `"server"` then).
    Pending,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rooms with at least one occupant or watcher.
    pub rooms: usize,
    /// Sessions, live or in grace.
    pub sessions: usize,
    /// Sessions in grace (disconnected, waiting for a resume).
    pub sessions_in_grace: usize,
    /// Occupants standing in lines, summed over rooms.
    pub occupants: usize,
    /// Watches, summed over rooms.
    pub watchers: usize,
    /// Invariant checks run since the start (only with
    /// [`Config::check_invariants`](crate::Config::check_invariants); zero otherwise).
    pub invariant_checks: u64,
    /// Of those, how many found a broken invariant (always zero unless there is a bug).
    pub invariant_violations: u64,
}

#[derive(Debug)]
struct SessionEntry {
    principal: Option<Arc<str>>,
    meta: Meta,
    token: ResumeToken,
    /// Rooms this session stands in, in join order (the reverse index used by disconnect).
    joined: Vec<RoomId>,
    /// Rooms this session watches.
    watching: Vec<RoomId>,
    /// Set while disconnected and waiting for a resume.
    grace_until: Option<Instant>,
}

impl SessionEntry {
    fn key(&self, id: SessionId) -> OccupantKey {
        OccupantKey::of(id, self.principal.as_ref())
    }
    fn room_count(&self) -> usize {
        self.joined.len() + self.watching.len()
    }
}

#[derive(Debug)]
struct Room {
    /// The room's id (its key in the machine's [`RoomTable`]).
    id: RoomId,
    /// Bumped on every change of the line (see [`RoomState::version`]).
    version: u64,
    line: Line,
    watchers: Vec<SessionId>,
    /// When the current holder was granted the room (Unix ms); meaningless when empty.
    held_since: u64,
}

impl Keyed for Room {
    fn id(&self) -> &RoomId {
        &self.id
    }
}

impl Room {
    fn new(id: RoomId, version: u64) -> Room {
        Room {
            id,
            version,
            line: Line::default(),
            watchers: Vec::new(),
            held_since: 0,
        }
    }

    fn summary(&self) -> RoomSummary {
        RoomSummary {
            room: self.id.clone(),
            version: self.version,
            holder: self.line.front().map(OccupantState::person),
            held_since: self.held_since(),
            waiting: self.line.len().saturating_sub(1) as u32,
            watchers: self.watchers.len() as u32,
        }
    }

    fn held_since(&self) -> Option<u64> {
        self.line.front().map(|_| self.held_since)
    }

    fn presence(&self, k: usize) -> PresenceBody {
        PresenceBody::of_line(self.version, self.held_since(), &self.line, k)
    }

    fn is_empty(&self) -> bool {
        self.line.is_empty() && self.watchers.is_empty()
    }
}

/// What a batch removes from one room: members (occupant key and session) and watchers.
#[derive(Default)]
struct Removals {
    members: Vec<(OccupantKey, SessionId)>,
    watchers: Vec<SessionId>,
}

/// The state machine. See the [crate docs](crate).
///
/// Methods come in four groups, as in quinn-proto's `Connection`:
/// - **reads** ([`Machine::room`], [`Machine::position`], [`Machine::stats`], ...): look, change
///   nothing;
/// - **mutators** ([`Machine::connect`], [`Machine::join`], [`Machine::leave`],
///   [`Machine::takeover`], [`Machine::watch`], [`Machine::resume`], [`Machine::disconnect`],
///   [`Machine::close`] and the batches [`Machine::disconnect_many`], [`Machine::close_many`]):
///   the calls a driver makes for its clients; each returns its answer and leaves notices for
///   everyone else in the outbox;
/// - **time** ([`Machine::poll_timeout`], [`Machine::handle_timeout`]): grace deadlines;
/// - **outbox** ([`Machine::poll_notice`], [`Machine::drain_notices`]): the notices to deliver,
///   urgent ones of each change (`released`, `displaced`, `occupied`) before its presences.
///
/// Cost: every call costs what it changes (DESIGN.md "Cost rules"). A place is found in O(1)
/// (an index per long line), a join or leave at the back tells only the first
/// [`Config::presence_occupants`], the holder leaving tells everyone once (each place moved), and
/// a batch of n removals from one room costs O(n + the places that moved) with each remaining
/// member told its final place once.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    sessions: HashMap<SessionId, SessionEntry, IdHash>,
    /// Rooms by id, each its own key (a room id is stored once; see `room_table`). Keyed
    /// hasher: room ids come from clients.
    rooms: RoomTable<Room>,
    tokens: HashMap<ResumeToken, SessionId, IdHash>,
    /// Grace deadlines, earliest first. Exact removal on resume keeps it small.
    timers: BTreeSet<(Instant, SessionId)>,
    /// Idle clocks, idle deadlines and pending forced releases of holds.
    holds: Holds,
    /// The latest time a caller passed in ([`Machine::advance`]); `None` before the first.
    now: Option<Instant>,
    /// An instant and the Unix time in milliseconds it corresponds to ([`Machine::set_wall_clock`]).
    epoch: Option<(Instant, u64)>,
    /// Rooms changed since the last [`Machine::take_changes`], with their new versions, while
    /// [`Machine::record_changes`] is on.
    changed: Vec<(RoomId, u64)>,
    recording: bool,
    /// Source of room versions: one counter for all rooms, so a room that empties (and is
    /// forgotten) and is created again still gets versions above every one it had before.
    clock: u64,
    occupants: usize,
    watches: usize,
    outbox: Outbox,
    /// Counters of [`Machine::run_enabled_checks`].
    invariant_checks: u64,
    invariant_violations: u64,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new(Config::default()).expect("default config is valid")
    }
}

impl Machine {
    /// A machine with the given configuration.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        Ok(Machine {
            config,
            sessions: HashMap::default(),
            rooms: RoomTable::default(),
            tokens: HashMap::default(),
            timers: BTreeSet::new(),
            holds: Holds::default(),
            now: None,
            epoch: None,
            changed: Vec::new(),
            recording: false,
            clock: 0,
            occupants: 0,
            watches: 0,
            outbox: Outbox::default(),
            invariant_checks: 0,
            invariant_violations: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- time -----------------------------------------------------------------------------

    /// Tells the machine what time it is. The machine reads no clock: the calls that take `now`
    /// ([`Machine::disconnect`], [`Machine::resume`], [`Machine::handle_timeout`]) advance it
    /// too, and a driver calls this before the others (a join stamps `since` and refreshes the
    /// idle clock with it). Time never goes back: an earlier `now` than the latest is ignored.
    pub fn advance(&mut self, now: Instant) {
        if self.now.is_none_or(|t| now > t) {
            self.now = Some(now);
        }
        if self.epoch.is_none() {
            self.epoch = Some((now, 0));
        }
    }

    /// Sets which Unix time (milliseconds) the instant `at` is: `since` and `held_since` are
    /// computed from it and the time passed in, so they follow the monotonic clock (a wall clock
    /// stepping back does not reorder them). Without it, the first instant passed in is time 0.
    pub fn set_wall_clock(&mut self, at: Instant, unix_ms: u64) {
        self.epoch = Some((at, unix_ms));
    }

    /// True (once) when a call since the last one set an idle deadline earlier than every other
    /// pending one ([`Config::idle_timeout`]): a driver that sleeps until [`Machine::poll_timeout`]
    /// must look again. Grace deadlines are not counted (the driver starts those itself, with
    /// [`Machine::disconnect`]).
    pub fn take_deadline_moved(&mut self) -> bool {
        std::mem::take(&mut self.holds.moved)
    }

    /// Turns the record of changed rooms on or off (off by default): while on, every change of a
    /// room's line notes the room and its new version for [`Machine::take_changes`] (an audit log,
    /// a webhook: the Hub's [`changes`](crate::Hub::changes) stream). O(1) per change.
    pub fn record_changes(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.changed.clear();
        }
    }

    /// Moves the rooms changed since the last call, in order, with their new versions, into
    /// `out` (see [`Machine::record_changes`]).
    pub fn take_changes(&mut self, out: &mut Vec<(RoomId, u64)>) {
        out.append(&mut self.changed);
    }

    /// The current time as Unix milliseconds (0 before any time was passed in).
    pub fn now_unix_ms(&self) -> u64 {
        unix_ms(self.now, self.epoch)
    }

    // ----- mutators: sessions ---------------------------------------------------------------

    /// Registers a new live session. `principal` is the authenticated user, if any: sessions with
    /// the same principal are one occupant. `meta` is the default public metadata for its joins.
    pub fn connect(
        &mut self,
        id: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error> {
        if self.sessions.contains_key(&id) || self.tokens.contains_key(&token) {
            return Err(Error::SessionExists);
        }
        meta.check(self.config.limits.max_meta_bytes)?;
        self.tokens.insert(token, id);
        self.sessions.insert(
            id,
            SessionEntry {
                principal: principal.map(Arc::from),
                meta,
                token,
                joined: Vec::new(),
                watching: Vec::new(),
                grace_until: None,
            },
        );
        Ok(())
    }

    /// The connection of `session` was lost ([`Ending::Lost`]): see [`Machine::disconnect_as`].
    pub fn disconnect(&mut self, session: SessionId, now: Instant) -> Result<(), Error> {
        self.disconnect_as(session, now, Ending::Lost)
    }

    /// The connection of `session` ended as `ending` says. With a non-zero grace for that
    /// ending ([`Config::grace_for`]: `grace` when lost, `close_grace` when the client closed
    /// it) the session keeps its places until `now + grace` (see [`Machine::resume`]); with zero
    /// it leaves everything now. Idempotent: disconnecting a session already in grace changes
    /// nothing (its deadline stays).
    pub fn disconnect_as(
        &mut self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        self.advance(now);
        let grace = self.config.grace_for(ending);
        let entry = self
            .sessions
            .get_mut(&session)
            .ok_or(Error::UnknownSession)?;
        if entry.grace_until.is_some() {
            return Ok(());
        }
        if grace.is_zero() {
            self.close(session)
        } else {
            let deadline = now + grace;
            entry.grace_until = Some(deadline);
            self.timers.insert((deadline, session));
            Ok(())
        }
    }

    /// [`Machine::disconnect`] for many sessions at once (a network blip, a deploy): see
    /// [`Machine::disconnect_many_as`].
    pub fn disconnect_many(&mut self, sessions: &[SessionId], now: Instant) -> usize {
        self.disconnect_many_as(sessions, now, Ending::Lost)
    }

    /// [`Machine::disconnect_as`] for many sessions whose connections ended the same way. With
    /// zero grace they are closed in one batch ([`Machine::close_many`]). Unknown sessions and
    /// sessions already in grace are skipped. Returns how many sessions changed state.
    pub fn disconnect_many_as(
        &mut self,
        sessions: &[SessionId],
        now: Instant,
        ending: Ending,
    ) -> usize {
        self.advance(now);
        let grace = self.config.grace_for(ending);
        if grace.is_zero() {
            return self.close_many(sessions);
        }
        let deadline = now + grace;
        let mut n = 0;
        for &s in sessions {
            if let Some(entry) = self.sessions.get_mut(&s)
                && entry.grace_until.is_none()
            {
                entry.grace_until = Some(deadline);
                self.timers.insert((deadline, s));
                n += 1;
            }
        }
        n
    }

    /// Removes a session at once, live or in grace, leaving all its rooms (no grace). Used when
    /// the grace runs out, for an explicit sign-out, or for a session that must not come back.
    /// O(rooms of this session): the reverse index, never a scan of all rooms.
    pub fn close(&mut self, session: SessionId) -> Result<(), Error> {
        let entry = self.forget_session(session).ok_or(Error::UnknownSession)?;
        let key = entry.key(session);
        for room in &entry.watching {
            self.remove_watchers(room, &[session]);
        }
        for room in &entry.joined {
            self.remove_members(room, &[(key.clone(), session)]);
        }
        Ok(())
    }

    /// Closes many sessions in one batch (grace ends for many at once, a dead node's sessions).
    /// Removals are merged per room: each room changes once (one version), and each remaining
    /// member and watcher of a touched room is told its final place once. Cost O(n + places
    /// that moved), never O(n²) however many leave one room. Unknown sessions and duplicates are
    /// skipped; returns how many sessions were closed.
    pub fn close_many(&mut self, sessions: &[SessionId]) -> usize {
        if let [one] = sessions {
            return usize::from(self.close(*one).is_ok());
        }
        let mut per_room: HashMap<RoomId, Removals, foldhash::fast::RandomState> =
            HashMap::default();
        let mut n = 0;
        for &session in sessions {
            let Some(entry) = self.forget_session(session) else {
                continue;
            };
            n += 1;
            let key = entry.key(session);
            for room in entry.watching {
                per_room.entry(room).or_default().watchers.push(session);
            }
            for room in entry.joined {
                per_room
                    .entry(room)
                    .or_default()
                    .members
                    .push((key.clone(), session));
            }
        }
        // Watches first: a session leaving a room it watches must not be told about it.
        for (room, removals) in &per_room {
            if !removals.watchers.is_empty() {
                self.remove_watchers(room, &removals.watchers);
            }
        }
        for (room, removals) in &per_room {
            if !removals.members.is_empty() {
                self.remove_members(room, &removals.members);
            }
        }
        n
    }

    /// Takes a session back with its resume token: within the grace it keeps every place. The
    /// token is single use: `new_token` replaces it. Afterwards the session receives a presence
    /// notice for each of its rooms (what it missed while away). O(its rooms × k).
    pub fn resume(
        &mut self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error> {
        self.advance(now);
        let &session = self.tokens.get(&token).ok_or(Error::ResumeInvalid)?;
        if token != new_token && self.tokens.contains_key(&new_token) {
            return Err(Error::SessionExists);
        }
        let entry = self.sessions.get(&session).ok_or(Error::ResumeInvalid)?;
        if let Some(deadline) = entry.grace_until
            && deadline <= now
        {
            // Expired but the driver has not called handle_timeout yet: it is gone all the same.
            self.close(session)?;
            return Err(Error::ResumeInvalid);
        }
        let entry = self.sessions.get_mut(&session).expect("checked above");
        let was_live = entry.grace_until.is_none();
        if let Some(deadline) = entry.grace_until.take() {
            self.timers.remove(&(deadline, session));
        }
        self.tokens.remove(&token);
        self.tokens.insert(new_token, session);
        entry.token = new_token;

        let entry = &self.sessions[&session];
        let key = entry.key(session);
        let k = self.config.presence_occupants;
        let mut rooms = Vec::with_capacity(entry.joined.len());
        for room_id in &entry.joined {
            let room = &self.rooms[room_id];
            let position = room.line.position(&key).expect("reverse index") as u32;
            rooms.push(joined(room, position));
            self.outbox.push(Notice {
                session,
                room: room_id.clone(),
                kind: NoticeKind::Presence(Presence {
                    body: Arc::new(room.presence(k)),
                    position: Some(position),
                }),
            });
        }
        for room_id in &entry.watching {
            // A member who also watches was told above, as a member (as on every change): a
            // second, place-less presence would replace the first in the session's queue.
            if entry.joined.contains(room_id) {
                continue;
            }
            let room = &self.rooms[room_id];
            self.outbox.push(Notice {
                session,
                room: room_id.clone(),
                kind: NoticeKind::Presence(Presence {
                    body: Arc::new(room.presence(k)),
                    position: None,
                }),
            });
        }
        Ok(Resumed {
            session,
            was_live,
            rooms,
            watching: entry.watching.clone(),
        })
    }

    // ----- mutators: rooms ------------------------------------------------------------------

    /// Stands `session` in the line of `room`. Idempotent: joining a room you are in returns your
    /// place and tells nobody anything (it refreshes the holder's idle clock). `meta` overrides
    /// the session's default metadata for this room (used when the occupant is new to the room).
    /// O(1) plus O(k) presences (the first k see the line grow).
    ///
    /// With [`Config::idle_timeout`], a join that makes someone wait behind an idle holder (or
    /// behind a holder a forced release found alone) is followed at once by a second change:
    /// the holder is displaced to place 1 (`displaced` with reason `"idle"` or `"server"`) and
    /// the next in line is released. The reply gives the place after both.
    pub fn join(
        &mut self,
        session: SessionId,
        room: &str,
        meta: Option<Meta>,
    ) -> Result<Joined, Error> {
        // Fields are borrowed one by one (not through `&self` helpers) so that the room is looked
        // up once and changed in place: this is the hottest path.
        let limits = &self.config.limits;
        RoomId::check(room, limits.max_room_id_len)?;
        let entry = match self.sessions.get_mut(&session) {
            Some(e) if e.grace_until.is_none() => e,
            _ => return Err(Error::UnknownSession),
        };
        let key = entry.key(session);
        // Bad metadata is refused even when the join would change nothing (the session's own
        // default was checked at connect).
        if let Some(meta) = &meta {
            meta.check(limits.max_meta_bytes)?;
        }
        let idle = self.config.idle_timeout.zip(self.now);

        // Already in the line (this session, or another session of the same occupant)?
        let mut existing = self.rooms.get_mut(room);
        let mut occupant_pos = None;
        if let Some(r) = existing.as_deref_mut()
            && let Some(pos) = r.line.position(&key)
        {
            if r.line
                .get(pos)
                .is_some_and(|o| o.sessions.contains(&session))
            {
                if pos == 0
                    && let Some((_, now)) = idle
                {
                    self.holds.refresh(room, now);
                }
                return Ok(joined(r, pos as u32));
            }
            occupant_pos = Some(pos);
        }
        let meta = meta.unwrap_or_else(|| entry.meta.clone());
        if entry.room_count() >= limits.max_rooms_per_session {
            return Err(Error::TooManyRooms {
                limit: limits.max_rooms_per_session,
            });
        }
        if occupant_pos.is_none()
            && existing
                .as_deref()
                .is_some_and(|r| r.line.len() >= limits.max_occupants_per_room)
        {
            return Err(Error::RoomFull {
                limit: limits.max_occupants_per_room,
            });
        }

        // Every check passed: now change things. A new room starts at the current clock (its
        // "empty" version), then the join ticks.
        let r = match existing {
            Some(r) => r,
            None => {
                let id = RoomId::parse(room, usize::MAX)?;
                let clock = self.clock;
                self.rooms.get_or_insert_with(room, || Room::new(id, clock))
            }
        };
        self.clock += 1;
        r.version = self.clock;
        if self.recording {
            self.changed.push((r.id.clone(), r.version));
        }
        let k = self.config.presence_occupants;
        let mut behind_holder = false;
        let change = match occupant_pos {
            // Another tab of an occupant already in line: only this session is told.
            Some(pos) => {
                if let Some(o) = r.line.get_mut(pos) {
                    o.sessions.push(session);
                }
                if pos == 0
                    && let Some((_, now)) = idle
                {
                    self.holds.refresh(room, now);
                }
                Change {
                    version: r.version,
                    new_session: Some((session, pos)),
                    ..Change::default()
                }
            }
            None => {
                let n_old = r.line.len();
                // `since` (and `held_since`) in the server's Unix milliseconds.
                let now_ms = unix_ms(self.now, self.epoch);
                r.line.push_back(OccupantState {
                    key,
                    meta,
                    sessions: Sessions::one(session),
                    since: now_ms,
                });
                self.occupants += 1;
                if n_old == 0 {
                    r.held_since = now_ms;
                    self.holds.grant(&r.id, idle);
                } else {
                    behind_holder = true;
                }
                Change {
                    version: r.version,
                    holder_changed: n_old == 0,
                    top_changed: n_old < k,
                    waiting_changed: n_old >= 1,
                    new_session: Some((session, n_old)),
                    ..Change::default()
                }
            }
        };
        let position = change.new_session.map_or(0, |(_, p)| p as u32);
        let reply = joined(r, position);
        emit(&change, r, &self.sessions, k, &mut self.outbox);
        // Someone waits now: an idle holder (or one a forced release found alone) gives way.
        let give_way = if behind_holder && !self.holds.is_empty() {
            self.holds.give_way(&r.id, idle)
        } else {
            None
        };
        let room_id = r.id.clone();
        let rooms = &mut self
            .sessions
            .get_mut(&session)
            .expect("checked live")
            .joined;
        if rooms.capacity() == 0 {
            // Most sessions stand in one room: room for one, not four.
            rooms.reserve_exact(1);
        }
        let Some(reason) = give_way else {
            rooms.push(room_id);
            return Ok(reply);
        };
        rooms.push(room_id.clone());
        self.displace_holder(&room_id, reason);
        // Places 0 and 1 swapped; everyone else stays.
        let position = match position {
            0 => 1,
            1 => 0,
            p => p,
        };
        Ok(joined(&self.rooms[&room_id], position))
    }

    /// Changes the metadata `session`'s occupant shows in `room` ("viewing" → "editing")
    /// without leaving: same place, same line. Everyone whose view shows the occupant is told —
    /// everyone in the room and its watchers when it holds or stands among the first
    /// [`Config::presence_occupants`](crate::Config::presence_occupants); further back only the
    /// watchers (told of every version; no member's presence lists the occupant), so the cost is
    /// O(watchers) there, O(line) at the top as for any change of the top. The same metadata
    /// again changes nothing. Errors, in this order:
    /// the room id, [`Error::UnknownSession`], the metadata's size and shape, then
    /// [`Error::NotMember`] when this session does not stand in the room (another tab of the
    /// same user does not count: join from this one first).
    pub fn update(&mut self, session: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        let limits = &self.config.limits;
        RoomId::check(room, limits.max_room_id_len)?;
        let key = self.live_session(session)?.key(session);
        meta.check(limits.max_meta_bytes)?;
        let (r, pos) = self.standing(session, &key, room, Error::NotMember)?;
        let unchanged = r.line.get(pos).is_some_and(|o| o.meta == meta);
        if pos == 0
            && self.config.idle_timeout.is_some()
            && let Some(now) = self.now
        {
            self.holds.refresh(room, now);
        }
        let r = self.rooms.get_mut(room).expect("found above");
        if unchanged {
            return Ok(joined(r, pos as u32));
        }
        self.clock += 1;
        let version = self.clock;
        let k = self.config.presence_occupants;
        r.version = version;
        if self.recording {
            self.changed.push((r.id.clone(), version));
        }
        if let Some(o) = r.line.get_mut(pos) {
            o.meta = meta;
        }
        // The holder is in everyone's presence (and in `occupied`), the first k in everyone's
        // list; further back no member sees the metadata, and only the watchers (told of every
        // version) hear of it.
        let change = Change {
            version,
            top_changed: pos == 0 || pos < k,
            ..Change::default()
        };
        emit(&change, r, &self.sessions, k, &mut self.outbox);
        Ok(joined(r, pos as u32))
    }

    /// "The person is still working here": refreshes the idle clock of `session`'s occupant in
    /// `room` when it holds the room ([`Config::idle_timeout`]); changes nothing anyone sees and
    /// tells nobody. Returns the session's place. Errors, in this order: the room id,
    /// [`Error::UnknownSession`], [`Error::NotMember`] when this session does not stand in the
    /// room. O(1).
    pub fn active(&mut self, session: SessionId, room: &str) -> Result<Joined, Error> {
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let key = self.live_session(session)?.key(session);
        let (r, pos) = self.standing(session, &key, room, Error::NotMember)?;
        let reply = joined(r, pos as u32);
        if pos == 0
            && self.config.idle_timeout.is_some()
            && let Some(now) = self.now
        {
            self.holds.refresh(room, now);
        }
        Ok(reply)
    }

    /// Forces a release of `room` (an administrator unlocking a document): the holder is
    /// displaced to place 1 with reason `"server"` and the next in line is released. A holder
    /// alone keeps the room until someone joins, who is then granted it at once. Errors only
    /// for an invalid room id. O(1) plus the change's notices (everyone's view shows the holder).
    pub fn release(&mut self, room: &str) -> Result<ForcedRelease, Error> {
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let Some(r) = self.rooms.get_mut(room) else {
            return Ok(ForcedRelease::Vacant);
        };
        match r.line.len() {
            0 => Ok(ForcedRelease::Vacant),
            1 => {
                let id = r.id.clone();
                self.holds.set_pending(&id);
                Ok(ForcedRelease::Pending)
            }
            _ => {
                let id = r.id.clone();
                let version = self.displace_holder(&id, DisplacedReason::Server);
                let to = self.rooms[&id]
                    .line
                    .front()
                    .map(OccupantState::person)
                    .expect("two stood in line");
                Ok(ForcedRelease::HandedOver { version, to })
            }
        }
    }

    /// Moves the occupant at place 1 to the front of a room of two or more: the holder is
    /// displaced (`reason`) and the next one released. Returns the new version.
    fn displace_holder(&mut self, room_id: &RoomId, reason: DisplacedReason) -> u64 {
        let version = self.tick();
        let now_ms = self.now_unix_ms();
        let idle = self.config.idle_timeout.zip(self.now);
        let k = self.config.presence_occupants;
        let r = self.rooms.get_mut(room_id).expect("caller checked");
        debug_assert!(r.line.len() >= 2);
        r.line.move_to_front(1);
        r.version = version;
        if self.recording {
            self.changed.push((r.id.clone(), version));
        }
        r.held_since = now_ms;
        self.holds.grant(&r.id, idle);
        let change = Change {
            version,
            holder_changed: true,
            released: true,
            top_changed: true,
            moved: (0, 2),
            displaced: Some(1),
            reason,
            ..Change::default()
        };
        emit(&change, r, &self.sessions, k, &mut self.outbox);
        version
    }

    /// The room `session` (of occupant `key`) stands in, and its place; `missing` when it does not
    /// stand there (another tab of the same occupant does not count). O(1).
    fn standing(
        &self,
        session: SessionId,
        key: &OccupantKey,
        room: &str,
        missing: Error,
    ) -> Result<(&Room, usize), Error> {
        let Some(r) = self.rooms.get(room) else {
            return Err(missing);
        };
        match r.line.position(key) {
            Some(pos)
                if r.line
                    .get(pos)
                    .is_some_and(|o| o.sessions.contains(&session)) =>
            {
                Ok((r, pos))
            }
            _ => Err(missing),
        }
    }

    /// Takes `session` out of `room`'s line. Idempotent: leaving a room you are not in is not an
    /// error (`was_member: false`). When the holder leaves, the next in line is released.
    /// O(1) at the back; a leave further up tells everyone behind their new place.
    pub fn leave(&mut self, session: SessionId, room: &str) -> Result<Left, Error> {
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let entry = self.live_session_mut(session)?;
        let Some(i) = entry.joined.iter().position(|r| r.as_str() == room) else {
            return Ok(Left {
                room: RoomId::parse(room, usize::MAX)?,
                was_member: false,
            });
        };
        // Order of a session's rooms matters only for resume replies; swap_remove would reorder.
        let room_id = entry.joined.remove(i);
        let key = entry.key(session);
        self.remove_members(&room_id, &[(key, session)]);
        Ok(Left {
            room: room_id,
            was_member: true,
        })
    }

    /// Moves the caller's occupant to the front of `room`'s line: it holds the room, and the
    /// previous holder is told it was displaced and becomes next in line. Whether this is allowed
    /// is the application's policy (the runtime's authorization hook); here it only requires the
    /// caller to stand in the line. Taking over a room you hold changes nothing. Everyone in the
    /// room is told (everyone's view shows the holder).
    pub fn takeover(&mut self, session: SessionId, room: &str) -> Result<Joined, Error> {
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let key = self.live_session(session)?.key(session);
        let (r, pos) = self.standing(session, &key, room, Error::NotInRoom)?;
        if pos == 0 {
            return Ok(joined(r, 0));
        }
        let version = self.tick();
        let now_ms = self.now_unix_ms();
        let idle = self.config.idle_timeout.zip(self.now);
        let r = self.rooms.get_mut(room).expect("found above");
        r.line.move_to_front(pos);
        r.version = version;
        if self.recording {
            self.changed.push((r.id.clone(), version));
        }
        r.held_since = now_ms;
        self.holds.grant(&r.id, idle);
        let change = Change {
            version,
            holder_changed: true,
            released: true,
            top_changed: true,
            moved: (0, pos + 1),
            displaced: Some(1),
            ..Change::default()
        };
        emit(
            &change,
            r,
            &self.sessions,
            self.config.presence_occupants,
            &mut self.outbox,
        );
        Ok(joined(r, 0))
    }

    /// Watches `room` without standing in line: the session receives the room's presence notices
    /// and never holds. Counts against the rooms-per-session limit. Idempotent. Returns the room's
    /// current presence. O(k).
    pub fn watch(&mut self, session: SessionId, room: &str) -> Result<PresenceBody, Error> {
        let limits = &self.config.limits;
        let k = self.config.presence_occupants;
        RoomId::check(room, limits.max_room_id_len)?;
        let entry = self.live_session(session)?;
        if entry.watching_str(room) {
            return Ok(self.rooms[room].presence(k));
        }
        if entry.room_count() >= limits.max_rooms_per_session {
            return Err(Error::TooManyRooms {
                limit: limits.max_rooms_per_session,
            });
        }
        let room_id = match self.rooms.get(room) {
            Some(r) => r.id.clone(),
            None => RoomId::parse(room, usize::MAX)?,
        };
        let clock = self.clock;
        // A room nobody stands in: its version is the current clock, which is at least the last
        // version it ever had, so a client never sees versions go backwards.
        let r = self
            .rooms
            .get_or_insert_with(room, || Room::new(room_id.clone(), clock));
        r.watchers.push(session);
        self.watches += 1;
        let body = r.presence(k);
        self.sessions
            .get_mut(&session)
            .expect("checked live")
            .watching
            .push(room_id);
        Ok(body)
    }

    /// Stops watching `room`. Idempotent: returns false when the session was not watching it.
    /// O(the room's watchers).
    pub fn unwatch(&mut self, session: SessionId, room: &str) -> Result<bool, Error> {
        RoomId::check(room, self.config.limits.max_room_id_len)?;
        let entry = self.live_session_mut(session)?;
        let Some(i) = entry.watching.iter().position(|r| r.as_str() == room) else {
            return Ok(false);
        };
        let room_id = entry.watching.swap_remove(i);
        self.remove_watchers(&room_id, &[session]);
        Ok(true)
    }

    // ----- time -----------------------------------------------------------------------------

    /// The earliest deadline: a grace ending, or a holder's idle timeout
    /// ([`Config::idle_timeout`]) coming due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grace = self.timers.first().map(|&(t, _)| t);
        let idle = self.holds.timers.first().map(|(t, _)| *t);
        match (grace, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes every session whose grace ended at or before `now`, in one batch
    /// ([`Machine::close_many`]): the next in line of the rooms they held is released, and each
    /// remaining member is told its final place once. Then displaces every holder whose idle
    /// timeout came due while someone waits (`displaced` with reason `"idle"`; a holder alone
    /// keeps the room until someone joins). Returns how many sessions expired.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        self.advance(now);
        let expired = self.expire_graces(now);
        self.expire_idle(now);
        expired
    }

    /// The idle deadlines that came due: re-armed when the holder was active meanwhile (or a new
    /// holder was granted), the holder displaced when someone waits, left dormant when alone
    /// (the next join checks). O(log rooms) per deadline.
    fn expire_idle(&mut self, now: Instant) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        while let Some(room_id) = self.holds.pop_due(now) {
            let Some(due) = self.holds.active_at(&room_id).map(|t| t + timeout) else {
                continue;
            };
            if due > now {
                self.holds.arm(&room_id, due);
            } else if self.rooms.get(&room_id).is_some_and(|r| r.line.len() >= 2) {
                self.displace_holder(&room_id, DisplacedReason::Idle);
            }
        }
    }

    fn expire_graces(&mut self, now: Instant) -> usize {
        let mut expired = Vec::new();
        while let Some(&(deadline, session)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            expired.push(session);
        }
        match expired.len() {
            0 => 0,
            _ => self.close_many(&expired),
        }
    }

    // ----- outbox ---------------------------------------------------------------------------

    /// Takes the notices produced since the last drain, in the order they were produced: for
    /// each room, version order; within one change, `released` / `displaced` / `occupied` before
    /// the presences. Dropping the iterator early drops the notices not taken.
    ///
    /// A crowded room's presences are made here, as they are taken, rather than inside the
    /// change: the change only records who is told at which place.
    pub fn drain_notices(&mut self) -> Drain<'_> {
        Drain(&mut self.outbox)
    }

    /// Takes the oldest pending notice. O(1).
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.outbox.pop()
    }

    /// True when notices are waiting in the outbox.
    pub fn has_notices(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Takes all pending entries at once by swapping the outbox with `buf` (which should be
    /// empty; its allocation becomes the outbox's). O(1): a driver that hands notices on whole
    /// copies nothing, and a fan-out stays one entry until it is delivered.
    pub(crate) fn swap_outbox(&mut self, buf: &mut Outbox) {
        std::mem::swap(&mut self.outbox, buf);
    }

    /// Takes the oldest pending entry, a fan-out whole.
    pub(crate) fn pop_outgoing(&mut self) -> Option<Outgoing> {
        self.outbox.pop_entry()
    }

    /// The room of the oldest pending notice.
    pub(crate) fn front_notice_room(&self) -> Option<&RoomId> {
        self.outbox.front_room()
    }

    /// True when every pending notice is about the room whose id's text starts at `room`
    /// (compared by address: the notices of one change share the room's id). For drivers that
    /// route notices by room. O(pending entries), reads only.
    pub(crate) fn notices_all_about(&self, room: *const u8) -> bool {
        self.outbox.all_about(room)
    }

    // ----- reads ----------------------------------------------------------------------------

    /// A copy of a room's state (`None` if nobody stands in or watches it). O(the line): for
    /// reads, tests and tools, not for hot paths (see [`Machine::position`], [`Machine::holder`]).
    pub fn room(&self, room: &str) -> Option<RoomState> {
        self.rooms
            .get(room)
            .map(|r| r.line.snapshot(r.version, r.held_since()))
    }

    /// A room at a glance: version, holder, `held_since`, how many wait and watch (`None` if
    /// nobody stands in or watches it). O(1).
    pub fn summary(&self, room: &str) -> Option<RoomSummary> {
        self.rooms.get(room).map(Room::summary)
    }

    /// One page of the rooms, in order of their ids: the first `limit` rooms whose id comes after
    /// `after` (all from the start with `None`); the last one's id is the next page's `after`.
    /// For operators (an admin list), not hot paths: O(all rooms × log limit) per page.
    pub fn rooms_page(&self, after: Option<&str>, limit: usize) -> Vec<RoomSummary> {
        let mut page: std::collections::BinaryHeap<&RoomId> =
            std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1);
        for id in self.rooms.iter().map(|r| &r.id) {
            if after.is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            if page.len() < limit {
                page.push(id);
            } else if page.peek().is_some_and(|top| id < *top) {
                page.pop();
                page.push(id);
            }
        }
        page.into_sorted_vec()
            .into_iter()
            .map(|id| self.rooms[id].summary())
            .collect()
    }

    /// A room's version (`None` if nobody stands in or watches it).
    pub fn room_version(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.version)
    }

    /// How many stand in `room`'s line.
    pub fn line_len(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.line.len())
    }

    /// Who holds `room`.
    pub fn holder(&self, room: &str) -> Option<Person> {
        self.rooms
            .get(room)?
            .line
            .front()
            .map(OccupantState::person)
    }

    /// The place of `session` in `room` (0 = holding). O(1).
    pub fn position(&self, session: SessionId, room: &str) -> Option<u32> {
        let entry = self.sessions.get(&session)?;
        let key = entry.key(session);
        let line = &self.rooms.get(room)?.line;
        let pos = line.position(&key)?;
        line.get(pos)?
            .sessions
            .contains(&session)
            .then_some(pos as u32)
    }

    /// Everyone in `room`'s line, holder first. O(the line).
    pub fn occupants(&self, room: &str) -> Vec<Person> {
        self.rooms
            .get(room)
            .map(|r| r.line.iter().map(OccupantState::person).collect())
            .unwrap_or_default()
    }

    /// The sessions watching `room`.
    pub fn watchers(&self, room: &str) -> &[SessionId] {
        self.rooms.get(room).map(|r| &r.watchers[..]).unwrap_or(&[])
    }

    /// The rooms `session` stands in, in join order.
    pub fn session_rooms(&self, session: SessionId) -> Option<&[RoomId]> {
        self.sessions.get(&session).map(|e| &e.joined[..])
    }

    /// The rooms `session` watches.
    pub fn session_watching(&self, session: SessionId) -> Option<&[RoomId]> {
        self.sessions.get(&session).map(|e| &e.watching[..])
    }

    /// True when the session exists and is live (not in grace).
    pub fn is_live(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|e| e.grace_until.is_none())
    }

    /// True when the session exists (live or in grace).
    pub fn contains_session(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// The current resume token of a session.
    pub fn resume_token(&self, session: SessionId) -> Option<ResumeToken> {
        self.sessions.get(&session).map(|e| e.token)
    }

    /// The session a resume token belongs to, and its principal (`None` when no session holds
    /// the token). O(1).
    pub fn session_for_token(&self, token: ResumeToken) -> Option<(SessionId, Option<&str>)> {
        let &session = self.tokens.get(&token)?;
        let entry = self.sessions.get(&session)?;
        Some((session, entry.principal.as_deref()))
    }

    /// Counts for metrics. O(1).
    pub fn stats(&self) -> Stats {
        Stats {
            rooms: self.rooms.len(),
            sessions: self.sessions.len(),
            sessions_in_grace: self.timers.len(),
            occupants: self.occupants,
            watchers: self.watches,
            invariant_checks: self.invariant_checks,
            invariant_violations: self.invariant_violations,
        }
    }

    /// When [`Config::check_invariants`] is set, runs [`Machine::check_invariants`] and counts
    /// the result in [`Stats`] (a violation is also logged at `error` level); otherwise does
    /// nothing. The in-memory backend calls it after every operation. O(all state) when enabled.
    pub fn run_enabled_checks(&mut self) {
        if !self.config.check_invariants {
            return;
        }
        self.invariant_checks += 1;
        if let Err(violation) = self.check_invariants() {
            self.invariant_violations += 1;
            tracing::error!(%violation, "occupancy: a state machine invariant is broken (a bug: please report it)");
        }
    }

    /// Checks every internal invariant (reverse indexes agree, every line's place index agrees
    /// with the line, no empty leftovers, counters right). O(everything): for tests, fuzzing and
    /// soak runs, not for production paths.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut occupants = 0;
        let mut watches = 0;
        // (room, session) pairs found from the rooms' side.
        let (mut held_joins, mut held_watches) = (0usize, 0usize);
        for (id, room) in self.rooms.iter().map(|r| (&r.id, r)) {
            if room.is_empty() {
                return Err(format!("room {id:?} is empty but still stored"));
            }
            if &room.id != id {
                return Err(format!("room {id:?} is stored under another id"));
            }
            if room.version > self.clock {
                return Err(format!("room {id:?} has a version above the clock"));
            }
            room.line.check().map_err(|e| format!("room {id:?}: {e}"))?;
            occupants += room.line.len();
            watches += room.watchers.len();
            let mut keys = std::collections::HashSet::new();
            for occ in room.line.iter() {
                if !keys.insert(&occ.key) {
                    return Err(format!("room {id:?} lists {:?} twice", occ.key));
                }
                if occ.sessions.is_empty() {
                    return Err(format!(
                        "room {id:?}: occupant {:?} has no session",
                        occ.key
                    ));
                }
                for s in &occ.sessions {
                    let e = self
                        .sessions
                        .get(s)
                        .ok_or_else(|| format!("room {id:?}: unknown session {s:?}"))?;
                    if e.key(*s) != occ.key {
                        return Err(format!("room {id:?}: session {s:?} under wrong occupant"));
                    }
                    if e.joined.iter().filter(|r| *r == id).count() != 1 {
                        return Err(format!("session {s:?} does not list room {id:?} once"));
                    }
                    held_joins += 1;
                }
            }
            for w in &room.watchers {
                let e = self
                    .sessions
                    .get(w)
                    .ok_or_else(|| format!("room {id:?}: unknown watcher {w:?}"))?;
                if e.watching.iter().filter(|r| *r == id).count() != 1 {
                    return Err(format!("watcher {w:?} does not list room {id:?} once"));
                }
                held_watches += 1;
            }
        }
        if occupants != self.occupants || watches != self.watches {
            return Err("occupant or watch counter is off".into());
        }
        let mut in_grace = 0;
        let (mut listed_joins, mut listed_watches) = (0, 0);
        for (s, e) in &self.sessions {
            if self.tokens.get(&e.token) != Some(s) {
                return Err(format!("session {s:?}: token index disagrees"));
            }
            if let Some(d) = e.grace_until {
                in_grace += 1;
                if !self.timers.contains(&(d, *s)) {
                    return Err(format!("session {s:?}: in grace without a timer"));
                }
            }
            // The other direction (each room a session lists really holds it) by counting:
            // the rooms' side found every (room, session) pair listed exactly once, so equal
            // totals leave no room for a listed pair the rooms do not hold. A lookup per pair
            // would scan long lines and make this check quadratic in a busy room.
            listed_joins += e.joined.len();
            listed_watches += e.watching.len();
        }
        if listed_joins != held_joins {
            return Err(format!(
                "sessions list {listed_joins} room memberships, the rooms hold {held_joins}"
            ));
        }
        if listed_watches != held_watches {
            return Err(format!(
                "sessions list {listed_watches} watches, the rooms hold {held_watches}"
            ));
        }
        if in_grace != self.timers.len() || self.tokens.len() != self.sessions.len() {
            return Err("timer or token index has leftovers".into());
        }
        let mut armed = 0;
        for (id, hold) in &self.holds.of {
            if self.rooms.get(id).is_none_or(|r| r.line.is_empty()) {
                return Err(format!("room {id:?}: nobody holds but a hold is kept"));
            }
            if let Some(deadline) = hold.timer {
                armed += 1;
                if !self.holds.timers.contains(&(deadline, id.clone())) {
                    return Err(format!("room {id:?}: idle deadline without a timer"));
                }
            } else if self.config.idle_timeout.is_some()
                && hold.active_at.is_some()
                && self.rooms[id].line.len() >= 2
            {
                // (A hold granted before any time was passed in has no idle clock.)
                return Err(format!("room {id:?}: people wait but no idle deadline"));
            }
        }
        if armed != self.holds.timers.len() {
            return Err("idle timers have leftovers".into());
        }
        Ok(())
    }

    // ----- internals ------------------------------------------------------------------------

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn live_session(&self, session: SessionId) -> Result<&SessionEntry, Error> {
        match self.sessions.get(&session) {
            Some(e) if e.grace_until.is_none() => Ok(e),
            _ => Err(Error::UnknownSession),
        }
    }

    fn live_session_mut(&mut self, session: SessionId) -> Result<&mut SessionEntry, Error> {
        match self.sessions.get_mut(&session) {
            Some(e) if e.grace_until.is_none() => Ok(e),
            _ => Err(Error::UnknownSession),
        }
    }

    /// Takes a session out of the session, token and timer maps (its rooms are the caller's).
    fn forget_session(&mut self, session: SessionId) -> Option<SessionEntry> {
        let entry = self.sessions.remove(&session)?;
        self.tokens.remove(&entry.token);
        if let Some(deadline) = entry.grace_until {
            self.timers.remove(&(deadline, session));
        }
        Some(entry)
    }

    /// Takes sessions out of a room's line in one change (the caller already removed the room
    /// from each session's own list, and each session stands in the line once), emits the
    /// notices, forgets the room if it is now empty.
    ///
    /// One removal is O(1) at either end of the line and O(the places that moved) elsewhere; a
    /// batch is one pass from the first emptied place to the back.
    fn remove_members(&mut self, room_id: &RoomId, removals: &[(OccupantKey, SessionId)]) {
        let k = self.config.presence_occupants;
        let version = self.tick();
        let idle = self.config.idle_timeout.zip(self.now);
        let Some(r) = self.rooms.get_mut(room_id) else {
            debug_assert!(false, "reverse index points at a missing room");
            return;
        };
        let n_old = r.line.len();
        let change = if let [(key, session)] = removals {
            let Some(pos) = r.line.position(key) else {
                debug_assert!(false, "reverse index points at a room without the occupant");
                return;
            };
            let occ = r.line.get_mut(pos).expect("position is in line");
            if occ.sessions.len() > 1 {
                // Another tab of the occupant stays: nobody's view changes but the watchers'.
                occ.sessions.retain(|s| s != session);
                Change {
                    version,
                    ..Change::default()
                }
            } else {
                r.line.remove(pos);
                self.occupants -= 1;
                let n = n_old - 1;
                Change {
                    version,
                    holder_changed: pos == 0,
                    released: pos == 0 && n > 0,
                    top_changed: pos < k,
                    waiting_changed: n_old >= 2,
                    moved: (pos, n),
                    ..Change::default()
                }
            }
        } else {
            // A batch: what the people who stay saw before, then every removal, then one pass.
            let old_holder = r.line.front().map(|o| o.key.clone());
            let old_top: Vec<Person> = r.line.top(k);
            let mut first_emptied = usize::MAX;
            for (key, session) in removals {
                let Some(pos) = r.line.position(key) else {
                    debug_assert!(false, "reverse index points at a room without the occupant");
                    continue;
                };
                let occ = r.line.get_mut(pos).expect("position is in line");
                occ.sessions.retain(|s| s != session);
                if occ.sessions.is_empty() {
                    first_emptied = first_emptied.min(pos);
                }
            }
            if first_emptied != usize::MAX {
                self.occupants -= r.line.drop_emptied(first_emptied);
            }
            let n = r.line.len();
            let holder_changed = r.line.front().map(|o| &o.key) != old_holder.as_ref();
            let top_changed = old_top.len() != n.min(k)
                || old_top
                    .iter()
                    .zip(r.line.iter())
                    .any(|(a, b)| a.id != b.key || !(a.meta.ptr_eq(&b.meta) || a.meta == b.meta));
            Change {
                version,
                holder_changed,
                released: holder_changed && old_holder.is_some() && n > 0,
                top_changed,
                waiting_changed: n_old.saturating_sub(1) != n.saturating_sub(1),
                moved: (first_emptied.min(n), n),
                ..Change::default()
            }
        };
        r.version = version;
        if self.recording {
            self.changed.push((r.id.clone(), version));
        }
        if change.holder_changed && !r.line.is_empty() {
            r.held_since = unix_ms(self.now, self.epoch);
            self.holds.grant(&r.id, idle);
        }
        emit(&change, r, &self.sessions, k, &mut self.outbox);
        if r.line.is_empty() {
            // Nobody holds: no idle clock, no pending forced release.
            self.holds.forget(&r.id);
        }
        if r.is_empty() {
            // HashMap::remove: O(1), not a shift of every other room.
            self.rooms.remove(room_id);
        }
    }

    /// Removes watchers from a room (the caller already removed the room from their lists).
    /// O(the room's watchers) for a batch; a single one is found by a scan.
    fn remove_watchers(&mut self, room_id: &RoomId, sessions: &[SessionId]) {
        let Some(r) = self.rooms.get_mut(room_id) else {
            debug_assert!(false, "watch index points at a missing room");
            return;
        };
        let before = r.watchers.len();
        if let [one] = sessions {
            if let Some(i) = r.watchers.iter().position(|w| w == one) {
                r.watchers.swap_remove(i);
            }
        } else {
            let mut gone: Vec<SessionId> = sessions.to_vec();
            gone.sort_unstable();
            r.watchers.retain(|w| gone.binary_search(w).is_err());
        }
        self.watches -= before - r.watchers.len();
        if r.is_empty() {
            self.rooms.remove(room_id);
        }
    }
}

/// `now` as Unix milliseconds by the wall clock anchor `epoch` (0 without both).
fn unix_ms(now: Option<Instant>, epoch: Option<(Instant, u64)>) -> u64 {
    match (now, epoch) {
        (Some(now), Some((at, ms))) if now >= at => {
            ms.saturating_add(now.duration_since(at).as_millis() as u64)
        }
        (Some(now), Some((at, ms))) => ms.saturating_sub(at.duration_since(now).as_millis() as u64),
        _ => 0,
    }
}

/// The holds' idle clocks, idle deadlines and pending forced releases, kept beside the rooms:
/// most rooms never need them (idle expiry is off by default, a forced release is rare), and a
/// room's size is what a machine with many rooms pays in cache misses on every call. Empty
/// unless idle expiry is on or a release is pending, so the hot paths test `is_empty` only.
#[derive(Debug, Default)]
struct Holds {
    of: HashMap<RoomId, Hold, foldhash::fast::RandomState>,
    /// Idle deadlines, earliest first, one per room at most (a grant keeps a pending one: it is
    /// no later than the new one, and re-arms itself at the right time when it fires).
    timers: BTreeSet<(Instant, RoomId)>,
    /// A deadline earlier than every other was set ([`Machine::take_deadline_moved`]).
    moved: bool,
}

#[derive(Debug, Default)]
struct Hold {
    /// The holder's idle clock: when it was granted the room or one of its sessions last joined,
    /// updated or said `active`, whichever is later.
    active_at: Option<Instant>,
    /// This room's entry in [`Holds::timers`].
    timer: Option<Instant>,
    /// A forced release found the holder alone: the next join that makes someone wait displaces
    /// it.
    release_pending: bool,
}

impl Holds {
    fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// A new holder was granted `room`: a pending release is spent, and with `idle` (the timeout
    /// and the current time) its idle clock starts and the room has a deadline.
    fn grant(&mut self, room: &RoomId, idle: Option<(Duration, Instant)>) {
        match idle {
            Some((timeout, now)) => {
                let h = self.of.entry(room.clone()).or_default();
                h.active_at = Some(now);
                h.release_pending = false;
                self.arm(room, now + timeout);
            }
            None if self.of.is_empty() => {}
            None => {
                if self
                    .of
                    .get_mut(room)
                    .is_some_and(|h| std::mem::take(&mut h.release_pending) && h.timer.is_none())
                {
                    self.of.remove(room);
                }
            }
        }
    }

    /// Gives `room` an idle deadline at `due` unless it has one.
    fn arm(&mut self, room: &RoomId, due: Instant) {
        let h = self.of.entry(room.clone()).or_default();
        if h.timer.is_none() {
            if self.timers.first().is_none_or(|(first, _)| due < *first) {
                self.moved = true;
            }
            h.timer = Some(due);
            self.timers.insert((due, room.clone()));
        }
    }

    /// The holder of `room` was active now.
    fn refresh(&mut self, room: &str, now: Instant) {
        if let Some(h) = self.of.get_mut(room) {
            h.active_at = Some(now);
        }
    }

    fn active_at(&self, room: &RoomId) -> Option<Instant> {
        self.of.get(room).and_then(|h| h.active_at)
    }

    fn set_pending(&mut self, room: &RoomId) {
        self.of.entry(room.clone()).or_default().release_pending = true;
    }

    /// Someone now waits in `room`: the reason its holder gives way at once (a pending forced
    /// release, an idle clock past the timeout), or `None` (and the room has a deadline).
    fn give_way(
        &mut self,
        room: &RoomId,
        idle: Option<(Duration, Instant)>,
    ) -> Option<DisplacedReason> {
        let h = self.of.get(room)?;
        if h.release_pending {
            return Some(DisplacedReason::Server);
        }
        let (timeout, now) = idle?;
        let due = h.active_at? + timeout;
        if due <= now {
            return Some(DisplacedReason::Idle);
        }
        self.arm(room, due);
        None
    }

    /// The room with the earliest deadline at or before `now`, its deadline taken.
    fn pop_due(&mut self, now: Instant) -> Option<RoomId> {
        let (deadline, _) = self.timers.first()?;
        if *deadline > now {
            return None;
        }
        let (_, room) = self.timers.pop_first().expect("just looked");
        if let Some(h) = self.of.get_mut(&room) {
            h.timer = None;
        }
        Some(room)
    }

    /// Nobody holds `room` any more.
    fn forget(&mut self, room: &RoomId) {
        if self.of.is_empty() {
            return;
        }
        if let Some(h) = self.of.remove(room)
            && let Some(deadline) = h.timer
        {
            self.timers.remove(&(deadline, room.clone()));
        }
    }
}

/// Emits `change`, just made to room `r`, into `out` ([`Change::emit`]; a watcher who also stands
/// in the line gets only its member presence).
fn emit(
    change: &Change,
    r: &Room,
    sessions: &HashMap<SessionId, SessionEntry, IdHash>,
    k: usize,
    out: &mut Outbox,
) {
    change.emit(
        &r.id,
        r.held_since(),
        &r.line,
        &r.watchers,
        |w| is_member(sessions, &r.line, w),
        k,
        out,
    );
}

fn is_member(
    sessions: &HashMap<SessionId, SessionEntry, IdHash>,
    line: &Line,
    w: SessionId,
) -> bool {
    let Some(entry) = sessions.get(&w) else {
        return false;
    };
    let key = entry.key(w);
    line.position(&key)
        .and_then(|p| line.get(p))
        .is_some_and(|o| o.sessions.contains(&w))
}

impl SessionEntry {
    fn watching_str(&self, room: &str) -> bool {
        self.watching.iter().any(|r| r.as_str() == room)
    }
}

fn joined(room: &Room, position: u32) -> Joined {
    Joined {
        room: room.id.clone(),
        holding: position == 0,
        position,
        version: room.version,
        holder: room
            .line
            .front()
            .map(OccupantState::person)
            .expect("a member's room has a holder"),
    }
}

/// Hasher for ids the server makes itself (random session ids, random tokens): nobody outside can
/// choose them, so a fast multiplicative mix is safe and much cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // FxHash's step, then a final fold so the high bits (which hashbrown uses) vary too.
        let h = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        self.0 = h ^ (h >> 29);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

pub(crate) type IdHash = BuildHasherDefault<IdHasher>;

/// The notices [`Machine::drain_notices`] takes, oldest first. Dropping it drops the rest.
#[derive(Debug)]
pub struct Drain<'a>(&'a mut Outbox);

impl Iterator for Drain<'_> {
    type Item = Notice;

    fn next(&mut self) -> Option<Notice> {
        self.0.pop()
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_with_one_member() -> (Machine, SessionId) {
        let mut m = Machine::default();
        let s = SessionId(1);
        m.connect(s, Some("ann"), Meta::empty(), ResumeToken(1))
            .unwrap();
        m.join(s, "doc", None).unwrap();
        m.check_invariants().unwrap();
        (m, s)
    }

    /// The check counts (room, session) pairs from both sides instead of looking each one up;
    /// corrupting either side must still be caught.
    #[test]
    fn invariant_check_catches_a_session_listing_a_room_it_is_not_in() {
        let (mut m, s) = machine_with_one_member();
        let other = RoomId::parse("other", 256).unwrap();
        m.sessions.get_mut(&s).unwrap().joined.push(other.clone());
        assert_eq!(
            m.check_invariants(),
            Err("sessions list 2 room memberships, the rooms hold 1".into())
        );

        let (mut m, s) = machine_with_one_member();
        m.sessions.get_mut(&s).unwrap().watching.push(other);
        assert_eq!(
            m.check_invariants(),
            Err("sessions list 1 watches, the rooms hold 0".into())
        );

        let (mut m, s) = machine_with_one_member();
        let doc = RoomId::parse("doc", 256).unwrap();
        m.rooms
            .get_mut(&doc)
            .unwrap()
            .line
            .get_mut(0)
            .unwrap()
            .sessions
            .push(s);
        assert_eq!(
            m.check_invariants(),
            Err("sessions list 1 room memberships, the rooms hold 2".into())
        );
    }
}
