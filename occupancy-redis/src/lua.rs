//! The Lua scripts: one per transition, each run atomically by Redis in one round trip
//! (`EVALSHA`, through [`redis::Script`]). They share a prelude of helpers (key names, room and
//! session records, version bumps, counters, publishing); see the crate docs for the data layout.
//!
//! Every script takes `ARGV[1]` = key prefix and `ARGV[2]` = the calling node's version floor (the
//! highest room version it has seen), then its own arguments from `ARGV[3]`. Every script replies
//! with one JSON string: `e` (an error code) when refused, `c` (the rooms it changed, as
//! `[room, version, state]` triples, in the order it changed them; the sweep leaves the state
//! empty, see `SWEEP`), the state of the room it was about after the call and fields of its own.
//! That state travels once: when the script changed the room last by a published save, the reply
//! says which entry of `c` it is (`ri`, 1-based); otherwise it carries the stored state (`r`).
//!
//! Published messages on `{prefix}:ch`: `r<room>\n<version>\n<state>` (a room's new state; the
//! version first, so that a node can drop a state it does not need without decoding it),
//! `s<session>\n<node>` (the session was resumed on that node) and `x<node>\n<session>,...`
//! (sessions of that node closed by a sweep).
//!
//! Times (`since` of an occupant `t`, `held_since` of a room `h`, the holder's idle clock `a`,
//! grace deadlines, leases) are Redis `TIME` in milliseconds, read inside the script: one clock
//! for every node, so the order of `since` stamps is the order of the changes, and an idle
//! deadline is checked against the same clock that stamped it, whatever the nodes' clocks say.
//!
//! Each script names the [`Machine`](occupancy_core::Machine) rule it reproduces; the grant of a
//! room (`held_since`, idle clock, pending forced release) is done in one place, `save_room`,
//! whenever the occupant at the front changed, as `Machine`'s `grant` is called wherever the
//! holder changes.
//!
//! A session belongs to one node at a time (its record's `n`; a resume on another node moves it).
//! Every script that acts on an existing session takes the calling node and refuses with
//! `not_owner` when another node owns it: the caller's connection is a stale one that a resume
//! elsewhere replaced (its node has not processed the `s` message yet), and must not close,
//! disconnect or change the session the new node now serves.

/// Helpers shared by every script.
const PRELUDE: &str = r#"
local P = ARGV[1]
local FLOOR = tonumber(ARGV[2])
local NODES = P .. ':nodes'
local SWEEPING = P .. ':sweeping'
local STATS = P .. ':stats'
local CH = P .. ':ch'
local function hex(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function rkey(room) return P .. ':r:{' .. hex(room) .. '}' end
local function skey(sid) return P .. ':s:{' .. sid .. '}' end
local function tkey(t) return P .. ':t:{' .. t .. '}' end
local function nskey(n) return P .. ':ns:{' .. n .. '}' end
local function deadkey(n) return P .. ':dead:{' .. n .. '}' end
local function fmt(n) return string.format('%.0f', n) end
local NOW_US
local function now_us()
  if not NOW_US then
    local t = redis.call('TIME')
    NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return NOW_US
end
local function now_ms() return math.floor(now_us() / 1000) end
-- Counter changes, written once per script (by `reply` / `err`, which end every script).
local STAT_D = {}
local function stat(f, d) if d ~= 0 then STAT_D[f] = (STAT_D[f] or 0) + d end end
local function flush_stats()
  for f, d in pairs(STAT_D) do
    if d ~= 0 then redis.call('HINCRBY', STATS, f, d) end
  end
  STAT_D = {}
end
local function find(list, x)
  for i, y in ipairs(list) do if y == x then return i end end
  return nil
end
-- The rooms this script changed, `{room, version, state}`, for the caller (see the module docs).
local CHANGED = {}
-- Whether CHANGED carries the states (the sweep reports versions only: the states reach every
-- node by pub/sub, and the sweeping node rarely follows the rooms of a dead node).
local REPORT_STATES = true
-- room -> index in CHANGED of its last save, when that save was published and the room still
-- exists (nil after a save without a publish): the reply then names the entry instead of
-- carrying the state a second time.
local LAST = {}
local function err(code)
  flush_stats()
  return cjson.encode({e = code, c = CHANGED})
end
local function reply(t, room)
  flush_stats()
  t.c = CHANGED
  if room then
    if LAST[room] then
      t.ri = LAST[room]
    else
      local raw = redis.call('GET', rkey(room))
      if raw then t.r = raw end
    end
  end
  return cjson.encode(t)
end
-- Versions: above the stored one, above Redis TIME in microseconds, above the caller's floor.
-- A new version displaced nobody until the script says so (`r`, see `displace`).
local function bump(st)
  st.v = fmt(math.max(tonumber(st.v) + 1, now_us(), FLOOR + 1))
  st.r = nil
end
local function new_room() return {v = fmt(math.max(now_us(), FLOOR)), o = {}, w = {}} end
local function holder_key(st) return st.o[1] and st.o[1].k end
-- Saves a room (publishing its new state if `publish`). Machine's `grant`: when the occupant at
-- the front is not the one that was (a join into an empty line, the holder leaving, a take over,
-- a displacement), the new holder's `held_since` (`h`) is now, its idle clock starts there (no
-- `a`: `h` is the clock until it is refreshed) and a pending forced release (`p`) is dropped.
-- When nobody stands in line, none of them is kept.
local function save_room(room, was, st, publish)
  local n, w = #st.o, #st.w
  if n == 0 then
    st.h = nil; st.a = nil; st.p = nil
  elseif holder_key(st) ~= was.hk then
    st.h = fmt(now_ms()); st.a = nil; st.p = nil
  end
  local js = cjson.encode(st)
  if n == 0 and w == 0 then
    if was.exists then redis.call('DEL', rkey(room)); stat('rooms', -1) end
  else
    redis.call('SET', rkey(room), js)
    if not was.exists then stat('rooms', 1) end
  end
  stat('occupants', n - was.n)
  stat('watchers', w - was.w)
  was.exists = (n > 0 or w > 0); was.n = n; was.w = w; was.hk = holder_key(st)
  if publish then
    redis.call('PUBLISH', CH, 'r' .. room .. '\n' .. st.v .. '\n' .. js)
    if REPORT_STATES then
      table.insert(CHANGED, {room, st.v, js})
      if was.exists then LAST[room] = #CHANGED else LAST[room] = nil end
    else
      table.insert(CHANGED, {room, st.v, ''})
    end
  else
    LAST[room] = nil
  end
end
-- Loads a room; first drops sessions restored as placeholders whose owner never came back.
local function load_room(room)
  local raw = redis.call('GET', rkey(room))
  if not raw then return nil, {exists = false, n = 0, w = 0} end
  local st = cjson.decode(raw)
  local was = {exists = true, n = #st.o, w = #st.w, hk = holder_key(st)}
  local pruned = false
  for i = #st.o, 1, -1 do
    local occ = st.o[i]
    if occ.x and tonumber(occ.x) <= now_ms() then
      local keep = {}
      for _, s in ipairs(occ.s) do
        if not find(occ.u or {}, s) then table.insert(keep, s) end
      end
      occ.s = keep; occ.x = nil; occ.u = nil
      if #keep == 0 then table.remove(st.o, i) end
      pruned = true
    end
  end
  if pruned then
    bump(st)
    save_room(room, was, st, true)
    if not was.exists then return nil, was end
  end
  return st, was
end
-- Machine::displace_holder: in a line of two or more, the occupant at place 1 moves to the front
-- (one change, one version): the holder becomes next in line, displaced for `reason` (`idle`,
-- `server`; a take over stores none), and save_room grants the room to the new holder. O(1)
-- besides the room's encoding.
local function displace(room, st, was, reason)
  bump(st)
  local occ = table.remove(st.o, 2)
  occ.q = fmt(tonumber(st.o[1].q) - 1)
  table.insert(st.o, 1, occ)
  if reason ~= 'takeover' then st.r = reason end
  save_room(room, was, st, true)
end
-- When the holder's idle timeout comes due (Redis ms): its idle clock (last refresh `a`, else
-- when it was granted the room `h`) plus `idle`. nil without a clock or with the timeout off.
local function idle_due(st, idle)
  if idle <= 0 or #st.o == 0 then return nil end
  local a = st.a or st.h
  if not a then return nil end
  return tonumber(a) + idle
end
local function now_str() return fmt(now_ms()) end
local function load_sess(sid)
  local h = redis.call('HGETALL', skey(sid))
  if #h == 0 then return nil end
  local s = {}
  for i = 1, #h, 2 do s[h[i]] = h[i + 1] end
  s.j = cjson.decode(s.j or '[]')
  s.w = cjson.decode(s.w or '[]')
  s.g = tonumber(s.g or '0')
  return s
end
-- The session if it exists and `node` owns it, else nil and the refusal to return.
local function owned(sid, node)
  local s = load_sess(sid)
  if not s then return nil, err('unknown_session') end
  if s.n ~= node then return nil, err('not_owner') end
  return s
end
-- The same, and live (not in grace).
local function live(sid, node)
  local s, e = owned(sid, node)
  if not s then return nil, e end
  if s.g > 0 then return nil, err('unknown_session') end
  return s
end
-- Not in the room's line although the session's record lists the room: Redis lost its data and
-- the room is not written back yet (see `restore`): try again shortly, rather than a wrong no.
local function absent(s, room, code)
  if find(s.j, room) then return err('restoring') end
  return err(code)
end
local function save_lists(sid, s)
  redis.call('HSET', skey(sid), 'j', cjson.encode(s.j), 'w', cjson.encode(s.w))
end
local function okey(sid, s)
  if s.p then return 'u:' .. s.p end
  return 'a:' .. sid
end
local function remove_from_line(room, sid, key)
  local st, was = load_room(room)
  if not st then return end
  for i, occ in ipairs(st.o) do
    if occ.k == key then
      local j = find(occ.s, sid)
      if j then table.remove(occ.s, j) end
      if occ.u then
        local ju = find(occ.u, sid)
        if ju then table.remove(occ.u, ju) end
      end
      if #occ.s == 0 then table.remove(st.o, i) end
      break
    end
  end
  bump(st)
  save_room(room, was, st, true)
end
local function remove_watcher(room, sid)
  local st, was = load_room(room)
  if not st then return end
  local i = find(st.w, sid)
  if i then table.remove(st.w, i) end
  save_room(room, was, st, false)
end
-- Machine::close: leaves every room of the session (watches first), then forgets it.
local function close_session(sid, s)
  for _, room in ipairs(s.w) do remove_watcher(room, sid) end
  local key = okey(sid, s)
  for _, room in ipairs(s.j) do remove_from_line(room, sid, key) end
  redis.call('DEL', skey(sid))
  if s.t then redis.call('DEL', tkey(s.t)) end
  if s.n then redis.call('SREM', nskey(s.n), sid) end
  stat('sessions', -1)
  if s.g > 0 then stat('grace', -1) end
end
"#;

/// `connect(sid, node, has_principal, principal, meta, token)`: Machine::connect.
pub(crate) const CONNECT: &str = r#"
local sid, node, hasp, p, meta, tok = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('EXISTS', skey(sid)) == 1 or redis.call('EXISTS', tkey(tok)) == 1 then
  return err('session_exists')
end
redis.call('HSET', skey(sid), 'n', node, 'm', meta, 't', tok, 'j', '[]', 'w', '[]', 'g', '0')
if hasp == '1' then redis.call('HSET', skey(sid), 'p', p) end
redis.call('SET', tkey(tok), sid)
redis.call('SADD', nskey(node), sid)
stat('sessions', 1)
return reply({}, nil)
"#;

/// `disconnect(sid, node, grace_ms)`: Machine::disconnect_as; grace 0 closes at once.
pub(crate) const DISCONNECT: &str = r#"
local sid, node, rem = ARGV[3], ARGV[4], tonumber(ARGV[5])
local s, e = owned(sid, node)
if not s then return e end
if s.g > 0 then return reply({}, nil) end
if rem <= 0 then
  close_session(sid, s)
else
  redis.call('HSET', skey(sid), 'g', fmt(now_ms() + rem))
  stat('grace', 1)
end
return reply({}, nil)
"#;

/// `close(sid, node)`: Machine::close.
pub(crate) const CLOSE: &str = r#"
local sid, node = ARGV[3], ARGV[4]
local s, e = owned(sid, node)
if not s then return e end
close_session(sid, s)
return reply({}, nil)
"#;

/// `expire(sid, node)`: Machine::handle_timeout's grace expiry. The owning node's grace timer
/// ran out; closes the session if it is still in grace and still owned by that node (a resume on
/// another node moved it).
pub(crate) const EXPIRE: &str = r#"
local sid, node = ARGV[3], ARGV[4]
local s = load_sess(sid)
if s and s.n == node and s.g > 0 then
  close_session(sid, s)
  return reply({n = 1}, nil)
end
return reply({n = 0}, nil)
"#;

/// `join(sid, node, room, meta, max_rooms, max_occupants, idle_ms)` (`idle_ms` 0: no idle
/// expiry).
///
/// Machine::join: idempotent for a session already in line; a new occupant stands at the back
/// with `since` (`t`) now. A join by any session of the holder (also an idempotent one) refreshes
/// its idle clock. A join that makes someone wait behind a holder a forced release found alone
/// (`p`), or behind an idle holder, is followed at once by a second change (and publish):
/// displacing the holder (reason `server` / `idle`); the reply gives the place after both.
pub(crate) const JOIN: &str = r#"
local sid, node, room, meta = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_rooms, max_occ, idle = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local s, e = live(sid, node)
if not s then return e end
local key = okey(sid, s)
local st, was = load_room(room)
local pos = nil
if st then
  for i, occ in ipairs(st.o) do if occ.k == key then pos = i; break end end
end
if pos and find(st.o[pos].s, sid) then
  if pos == 1 and idle > 0 then
    st.a = now_str()
    save_room(room, was, st, false)
  end
  return reply({p = pos - 1}, room)
end
if #s.j + #s.w >= max_rooms then return err('too_many_rooms') end
if (not pos) and st and #st.o >= max_occ then return err('room_full') end
if not st then st = new_room() end
bump(st)
local behind = false
if pos then
  table.insert(st.o[pos].s, sid)
  if pos == 1 and idle > 0 then st.a = now_str() end
else
  behind = #st.o > 0
  table.insert(st.o, {k = key, m = meta, q = st.v, s = {sid}, t = now_str()})
  pos = #st.o
end
save_room(room, was, st, true)
table.insert(s.j, room)
save_lists(sid, s)
if behind then
  local reason = nil
  local due = idle_due(st, idle)
  if st.p then
    reason = 'server'
  elseif due and due <= now_ms() then
    reason = 'idle'
  end
  if reason then
    displace(room, st, was, reason)
    -- Places 1 and 2 (1-based) swapped; everyone else stays.
    if pos == 2 then pos = 1 end
  end
end
return reply({p = pos - 1}, room)
"#;

/// `update(sid, node, room, meta, idle_ms)`: Machine::update, the occupant's metadata in a room
/// the session stands in; the same metadata again changes nothing (no version, no publish). An
/// update by a session of the holder refreshes its idle clock (stored without a publish: nobody
/// sees it).
pub(crate) const UPDATE: &str = r#"
local sid, node, room, meta, idle = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local s, e = live(sid, node)
if not s then return e end
local key = okey(sid, s)
local st, was = load_room(room)
if not st then return absent(s, room, 'not_member') end
local pos = nil
for i, occ in ipairs(st.o) do if occ.k == key then pos = i; break end end
if (not pos) or (not find(st.o[pos].s, sid)) then return absent(s, room, 'not_member') end
local refresh = (pos == 1 and idle > 0)
if refresh then st.a = now_str() end
if st.o[pos].m ~= meta then
  st.o[pos].m = meta
  bump(st)
  save_room(room, was, st, true)
elseif refresh then
  save_room(room, was, st, false)
end
return reply({p = pos - 1}, room)
"#;

/// `leave(sid, node, room)`: Machine::leave (the next in line is granted the room in
/// `save_room` when the holder left).
pub(crate) const LEAVE: &str = r#"
local sid, node, room = ARGV[3], ARGV[4], ARGV[5]
local s, e = live(sid, node)
if not s then return e end
local i = find(s.j, room)
if not i then return reply({wm = 0}, nil) end
table.remove(s.j, i)
save_lists(sid, s)
remove_from_line(room, sid, okey(sid, s))
return reply({wm = 1}, room)
"#;

/// `takeover(sid, node, room)`: Machine::takeover (the room is granted to the caller in
/// `save_room`; no `r`: the reason is a take over).
pub(crate) const TAKEOVER: &str = r#"
local sid, node, room = ARGV[3], ARGV[4], ARGV[5]
local s, e = live(sid, node)
if not s then return e end
local key = okey(sid, s)
local st, was = load_room(room)
if not st then return absent(s, room, 'not_in_room') end
local pos = nil
for i, occ in ipairs(st.o) do if occ.k == key then pos = i; break end end
if (not pos) or (not find(st.o[pos].s, sid)) then return absent(s, room, 'not_in_room') end
if pos > 1 then
  local occ = table.remove(st.o, pos)
  occ.q = fmt(tonumber(st.o[1].q) - 1)
  table.insert(st.o, 1, occ)
  bump(st)
  save_room(room, was, st, true)
end
return reply({p = 0}, room)
"#;

/// `active(sid, node, room, idle_ms)`: Machine::active. `not_member` unless this session stands
/// in the room; when its occupant holds and idle expiry is on, its idle clock is now (stored
/// without a publish: no version, nobody is told).
pub(crate) const ACTIVE: &str = r#"
local sid, node, room, idle = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local s, e = live(sid, node)
if not s then return e end
local key = okey(sid, s)
local st, was = load_room(room)
if not st then return absent(s, room, 'not_member') end
local pos = nil
for i, occ in ipairs(st.o) do if occ.k == key then pos = i; break end end
if (not pos) or (not find(st.o[pos].s, sid)) then return absent(s, room, 'not_member') end
if pos == 1 and idle > 0 then
  st.a = now_str()
  save_room(room, was, st, false)
end
return reply({p = pos - 1}, room)
"#;

/// `idle(room, idle_ms)`: Machine::handle_timeout's idle expiry, run by a node that hosts a
/// session of the holder when its local deadline comes due. Re-checks under Redis's atomicity:
/// if someone waits and the holder's idle clock plus `idle_ms` has passed, displaces the holder
/// (reason `idle`, one change, one publish; `n` = 1); if the holder was active meanwhile (or was
/// granted the room since), replies `d` = milliseconds until its deadline; otherwise (nobody
/// waits, nobody holds) nothing.
pub(crate) const IDLE: &str = r#"
local room, idle = ARGV[3], tonumber(ARGV[4])
local st, was = load_room(room)
if (not st) or #st.o < 2 then return reply({}, nil) end
local due = idle_due(st, idle)
if not due then return reply({}, nil) end
if due > now_ms() then return reply({d = fmt(due - now_ms())}, nil) end
displace(room, st, was, 'idle')
return reply({n = 1}, nil)
"#;

/// `release(room)`: Machine::release, a forced release. Nobody in line: `k` = `vacant`. The
/// holder alone: `pending` (`p` stored, no version, no publish; the next join that makes someone
/// wait displaces the holder, see `join`). Two or more: the holder is displaced (reason
/// `server`), `handed`, and `r` is the new state.
pub(crate) const RELEASE: &str = r#"
local room = ARGV[3]
local st, was = load_room(room)
if (not st) or #st.o == 0 then return reply({k = 'vacant'}, nil) end
if #st.o == 1 then
  st.p = '1'
  save_room(room, was, st, false)
  return reply({k = 'pending'}, nil)
end
displace(room, st, was, 'server')
return reply({k = 'handed'}, room)
"#;

/// `watch(sid, node, room, max_rooms)`: Machine::watch.
pub(crate) const WATCH: &str = r#"
local sid, node, room, max_rooms = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local s, e = live(sid, node)
if not s then return e end
if find(s.w, room) then return reply({}, room) end
if #s.j + #s.w >= max_rooms then return err('too_many_rooms') end
local st, was = load_room(room)
if not st then st = new_room() end
table.insert(st.w, sid)
save_room(room, was, st, false)
table.insert(s.w, room)
save_lists(sid, s)
return reply({}, room)
"#;

/// `unwatch(sid, node, room)`: Machine::unwatch.
pub(crate) const UNWATCH: &str = r#"
local sid, node, room = ARGV[3], ARGV[4], ARGV[5]
local s, e = live(sid, node)
if not s then return e end
local i = find(s.w, room)
if not i then return reply({wm = 0}, nil) end
table.remove(s.w, i)
save_lists(sid, s)
remove_watcher(room, sid)
return reply({wm = 1}, nil)
"#;

/// `resume(token, new_token, node)`: Machine::resume. Moves the session to `node` (publishing
/// `s` so its old node closes the old connection), returns its rooms' states.
pub(crate) const RESUME: &str = r#"
local tok, new, node = ARGV[3], ARGV[4], ARGV[5]
local sid = redis.call('GET', tkey(tok))
if not sid then return err('resume_invalid') end
if tok ~= new and redis.call('EXISTS', tkey(new)) == 1 then return err('session_exists') end
local s = load_sess(sid)
if not s then return err('resume_invalid') end
if s.g > 0 and s.g <= now_ms() then
  close_session(sid, s)
  return err('resume_invalid')
end
local was_live = (s.g == 0)
if not was_live then stat('grace', -1) end
redis.call('DEL', tkey(tok))
redis.call('SET', tkey(new), sid)
redis.call('HSET', skey(sid), 't', new, 'g', '0', 'n', node)
if s.n ~= node then
  if s.n then redis.call('SREM', nskey(s.n), sid) end
  redis.call('SADD', nskey(node), sid)
  redis.call('PUBLISH', CH, 's' .. sid .. '\n' .. node)
end
local rooms, watching = {}, {}
for _, room in ipairs(s.j) do table.insert(rooms, {room, redis.call('GET', rkey(room)) or ''}) end
for _, room in ipairs(s.w) do table.insert(watching, {room, redis.call('GET', rkey(room)) or ''}) end
return reply({i = sid, lv = was_live and 1 or 0, pr = s.p, me = s.m, j = rooms, w = watching}, nil)
"#;

/// `session_for_token(token)`.
pub(crate) const TOKEN: &str = r#"
local sid = redis.call('GET', tkey(ARGV[3]))
if not sid then return reply({}, nil) end
local p = redis.call('HGET', skey(sid), 'p')
return reply({i = sid, pr = p or nil}, nil)
"#;

/// `renew(node, lease_ms)`: extends the node's lease. `s` = 1 (fine), 0 (the registration was
/// lost: Redis lost its data; restore), -1 (another node swept this one: its sessions are gone).
/// `x` lists the nodes to sweep: those whose lease has ended and those a sweep has begun on and
/// not finished (any node may carry on a sweep another one began). `d` is Redis time (ms: the
/// node's estimate of its clock's offset, for idle deadlines) and `ne` the earliest lease end of
/// the other nodes (Redis ms), so that the node looks again right when that lease ends instead of
/// at its next renewal: a dead node is swept promptly after its lease, whatever the lease.
pub(crate) const RENEW: &str = r#"
local node, lease = ARGV[3], tonumber(ARGV[4])
local status = 1
if not redis.call('ZSCORE', NODES, node) then
  if redis.call('EXISTS', deadkey(node)) == 1 then
    status = -1
    redis.call('DEL', deadkey(node))
  else
    status = 0
  end
end
redis.call('ZADD', NODES, now_ms() + lease, node)
local todo = redis.call('ZRANGEBYSCORE', NODES, '-inf', now_ms())
for _, n in ipairs(redis.call('SMEMBERS', SWEEPING)) do
  if not find(todo, n) then table.insert(todo, n) end
end
local ne = nil
local first = redis.call('ZRANGE', NODES, 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= node then ne = first[i + 1]; break end
end
return reply({s = status, x = todo, d = now_str(), ne = ne}, nil)
"#;

/// `sweep(dead_node, max_sessions, max_units, budget_us, small_bytes)`: Machine::close_many
/// over the dead node's sessions, run as a series of bounded calls so that no call blocks Redis
/// for long, whatever the number of sessions or the length of their lines. The caller repeats it
/// while the reply says `m` = 1 (more to do); any node can carry on a sweep another began (what
/// is left is kept in Redis). Each call:
///
/// 1. **Sessions**: takes up to `max_sessions` of the dead node's sessions (fewer when half of
///    `budget_us` of Redis time is used up) and forgets them (record, token, counters: they can
///    no longer be resumed). Their removals are merged per room: each room they were in changes
///    once in this call — one version, one publish, its next in line granted the room by
///    `save_room` as for any change — if its stored state is at most `small_bytes` long (and
///    time is left). A longer room's removals are queued instead (`{prefix}:rx:{<room hex>}`:
///    `o<session><occupant key>` or `w<session>`; the room listed in `{prefix}:sweep:rooms`),
///    so that a long line is read and rewritten once per sweep, not once per call. One `x`
///    message per call names the sessions, for the dead node if it was only cut off.
/// 2. **Queued rooms**, once no session is left: each loses all its queued removals at once (one
///    version, one publish), until `max_units` (rooms plus the line lengths read) or the budget
///    is used up. A room is never split: one room whose line alone takes longer than the budget
///    is one call of its own.
///
/// The first call (the node's lease has ended) takes the node out of the lease set, marks it
/// dead (its `renew` answers -1 if it comes back) and moves its session set aside
/// (`{prefix}:sw:{<node>}`), so that sessions a node that comes back creates under the same id
/// are not swept. Replies `n` (sessions closed by this call) and `m`; `c` lists the changed
/// rooms with their versions but not their states (they reach every node by pub/sub, and the
/// sweeping node rarely follows the rooms of a dead node).
pub(crate) const SWEEP: &str = r#"
local dead = ARGV[3]
local max_sessions, max_units = tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, small = tonumber(ARGV[6]), tonumber(ARGV[7])
local ROOMS = P .. ':sweep:rooms'
local SW = P .. ':sw:{' .. dead .. '}'
local function rxkey(room) return P .. ':rx:{' .. hex(room) .. '}' end
REPORT_STATES = false
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local t0 = clock()
local function spent() return clock() - t0 end
if redis.call('SISMEMBER', SWEEPING, dead) == 0 then
  local score = redis.call('ZSCORE', NODES, dead)
  if (not score) or tonumber(score) > now_ms() then return reply({n = 0, m = 0}, nil) end
  redis.call('ZREM', NODES, dead)
  redis.call('SET', deadkey(dead), '1', 'PX', 86400000)
  if redis.call('EXISTS', nskey(dead)) == 1 then
    if redis.call('EXISTS', SW) == 1 then
      redis.call('SUNIONSTORE', SW, SW, nskey(dead))
      redis.call('DEL', nskey(dead))
    else
      redis.call('RENAME', nskey(dead), SW)
    end
  end
  redis.call('SADD', SWEEPING, dead)
end
-- Removals of one room: occupant key -> {session -> true}, and watchers {session -> true}.
local touched, order = {}, {}
local function removals(room)
  local r = touched[room]
  if not r then
    r = {members = {}, watchers = {}, any = false, n = 0}
    touched[room] = r
    table.insert(order, room)
  end
  return r
end
-- Takes a room's removals out of its queue (step 2, or a queued room touched again).
local function dequeue(room, r)
  local queued = redis.call('SMEMBERS', rxkey(room))
  redis.call('DEL', rxkey(room))
  for _, q in ipairs(queued) do
    local sid = string.sub(q, 2, 17)
    if string.sub(q, 1, 1) == 'o' then
      local key = string.sub(q, 18)
      r.members[key] = r.members[key] or {}
      r.members[key][sid] = true
      r.any = true
    else
      r.watchers[sid] = true
    end
    r.n = r.n + 1
  end
end
-- Applies a room's removals in one change. Returns the work done (1 + line length).
local function apply(room, r)
  local st, was = load_room(room)
  if not st then return 1 end
  local w = {}
  for _, x in ipairs(st.w) do if not r.watchers[x] then table.insert(w, x) end end
  st.w = w
  local removed = false
  if r.any then
    local line = {}
    for _, occ in ipairs(st.o) do
      local out = r.members[occ.k]
      if out then
        local keep = {}
        for _, x in ipairs(occ.s) do
          if out[x] then removed = true else table.insert(keep, x) end
        end
        occ.s = keep
        if occ.u then
          local u = {}
          for _, x in ipairs(occ.u) do if not out[x] then table.insert(u, x) end end
          if #u > 0 then occ.u = u else occ.u = nil; occ.x = nil end
        end
      end
      if #occ.s > 0 then table.insert(line, occ) end
    end
    st.o = line
  end
  if removed then bump(st) end
  save_room(room, was, st, removed)
  return 1 + #st.o
end
-- 1. Sessions.
local gone, seen, dels = {}, 0, {}
local grace = 0
while seen < max_sessions and spent() * 2 <= budget do
  local batch = redis.call('SPOP', SW, math.min(16, max_sessions - seen))
  if #batch == 0 then break end
  for _, sid in ipairs(batch) do
    seen = seen + 1
    local s = load_sess(sid)
    -- A session resumed on another node meanwhile is that node's now.
    if s and s.n == dead then
      for _, room in ipairs(s.w) do removals(room).watchers[sid] = true end
      local key = okey(sid, s)
      for _, room in ipairs(s.j) do
        local r = removals(room)
        r.members[key] = r.members[key] or {}
        r.members[key][sid] = true
        r.any = true
      end
      table.insert(dels, skey(sid))
      if s.t then table.insert(dels, tkey(s.t)) end
      if s.g > 0 then grace = grace - 1 end
      table.insert(gone, sid)
    end
  end
end
for i = 1, #dels, 256 do
  redis.call('DEL', unpack(dels, i, math.min(i + 255, #dels)))
end
stat('sessions', -#gone)
stat('grace', grace)
if #gone > 0 then redis.call('PUBLISH', CH, 'x' .. dead .. '\n' .. table.concat(gone, ',')) end
for _, room in ipairs(order) do
  local r = touched[room]
  local queued = redis.call('SISMEMBER', ROOMS, room) == 1
  if (not queued) and spent() <= budget and redis.call('STRLEN', rkey(room)) <= small then
    apply(room, r)
  else
    for key, sids in pairs(r.members) do
      for sid in pairs(sids) do redis.call('SADD', rxkey(room), 'o' .. sid .. key) end
    end
    for sid in pairs(r.watchers) do redis.call('SADD', rxkey(room), 'w' .. sid) end
    if not queued then redis.call('SADD', ROOMS, room) end
  end
end
if redis.call('SCARD', SW) > 0 then return reply({n = #gone, m = 1}, nil) end
-- 2. Queued rooms. At least one when step 1 had nothing left to do, so that every call makes
-- progress.
local units, progress = 0, seen > 0
while (not progress) or (units < max_units and spent() <= budget) do
  local room = redis.call('SPOP', ROOMS)
  if not room then break end
  local r = {members = {}, watchers = {}, any = false, n = 0}
  dequeue(room, r)
  units = units + r.n + apply(room, r)
  progress = true
end
if redis.call('SCARD', ROOMS) > 0 then return reply({n = #gone, m = 1}, nil) end
redis.call('SREM', SWEEPING, dead)
return reply({n = #gone, m = 0}, nil)
"#;

/// `prune(room)`: drops expired placeholders (see `restore`).
pub(crate) const PRUNE: &str = r#"
local st = load_room(ARGV[3])
return reply({}, nil)
"#;

/// `reregister(sid, node, has_principal, principal, meta, token, joined, watching, grace_ms)`:
/// writes a local session's record back after Redis lost it.
pub(crate) const REREGISTER: &str = r#"
local sid, node, hasp, p, meta, tok, J, W, rem =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
local old = load_sess(sid)
if not old then stat('sessions', 1) end
local g = '0'
if rem > 0 then g = fmt(now_ms() + rem) end
local was_grace = old and old.g > 0
if rem > 0 and not was_grace then stat('grace', 1) end
if rem <= 0 and was_grace then stat('grace', -1) end
redis.call('HSET', skey(sid), 'n', node, 'm', meta, 't', tok, 'j', J, 'w', W, 'g', g)
if hasp == '1' then redis.call('HSET', skey(sid), 'p', p) end
redis.call('SET', tkey(tok), sid)
redis.call('SADD', nskey(node), sid)
return reply({}, nil)
"#;

/// `restore(room, last_seen_state, my_sessions, my_watchers, lease_ms)`: after Redis lost its
/// data, puts a room back from the state this node saw last. If the room is missing, the whole
/// line is written back in its old order; the other nodes' sessions are kept as placeholders for
/// one lease (their nodes confirm them with their own restore, or they are dropped). If it
/// exists, this node's occupants are merged in at their old place (by their order key `q`).
/// Only where this node's sessions still are: the node wrote their records back first and keeps
/// serving meanwhile, so one that left the room (or stopped watching it, or ended) since the
/// node's snapshot is not put back (its record says so).
pub(crate) const RESTORE: &str = r#"
local room, raw, lease = ARGV[3], ARGV[4], tonumber(ARGV[7])
local mine, mywatch = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local seen = cjson.decode(raw)
local function still(sid, field)
  local l = redis.call('HGET', skey(sid), field)
  return l ~= false and l ~= nil and find(cjson.decode(l), room) ~= nil
end
local st, was = load_room(room)
local changed = false
if not st then
  -- The line as it was, with its holder's grant (held_since, idle clock, pending release).
  st = {v = seen.v, o = {}, w = {}, h = seen.h, a = seen.a, p = seen.p, r = seen.r}
  for _, occ in ipairs(seen.o) do
    local u, s = {}, {}
    for _, sid in ipairs(occ.s) do
      if not find(mine, sid) then
        table.insert(u, sid); table.insert(s, sid)
      elseif still(sid, 'j') then
        table.insert(s, sid)
      end
    end
    occ.s = s
    if #u > 0 then occ.u = u; occ.x = fmt(now_ms() + lease) else occ.u = nil; occ.x = nil end
    if #s > 0 then table.insert(st.o, occ) end
  end
  -- Not a grant: the holder is the one that held (if it left meanwhile, the next one is).
  if seen.o[1] then was.hk = seen.o[1].k else was.hk = nil end
  changed = true
else
  for _, socc in ipairs(seen.o) do
    local ours = {}
    for _, sid in ipairs(socc.s) do
      if find(mine, sid) and still(sid, 'j') then table.insert(ours, sid) end
    end
    if #ours > 0 then
      local pos = nil
      for i, occ in ipairs(st.o) do if occ.k == socc.k then pos = i; break end end
      if not pos then
        local at = #st.o + 1
        for i, occ in ipairs(st.o) do
          if tonumber(occ.q) > tonumber(socc.q) then at = i; break end
        end
        table.insert(st.o, at, {k = socc.k, m = socc.m, q = socc.q, s = ours, t = socc.t})
        changed = true
      else
        local occ = st.o[pos]
        for _, sid in ipairs(ours) do
          if not find(occ.s, sid) then table.insert(occ.s, sid); changed = true end
          if occ.u then
            local j = find(occ.u, sid)
            if j then table.remove(occ.u, j); changed = true end
          end
        end
        if occ.u and #occ.u == 0 then occ.u = nil; occ.x = nil end
      end
    end
  end
end
for _, w in ipairs(mywatch) do
  if not find(st.w, w) and still(w, 'w') then table.insert(st.w, w) end
end
if changed then bump(st) end
save_room(room, was, st, changed)
return reply({}, nil)
"#;

/// `check()`: the invariants (tests only; O(everything), uses KEYS). Replies `x`: problems.
pub(crate) const CHECK: &str = r#"
local problems = {}
local n = {rooms = 0, occupants = 0, watchers = 0, sessions = 0, grace = 0}
local function unhex(h) return (string.gsub(h, '%x%x', function(x) return string.char(tonumber(x, 16)) end)) end
for _, k in ipairs(redis.call('KEYS', P .. ':r:*')) do
  local room = unhex(string.match(k, '{(%x*)}$'))
  local st = cjson.decode(redis.call('GET', k))
  n.rooms = n.rooms + 1
  n.occupants = n.occupants + #st.o
  n.watchers = n.watchers + #st.w
  if #st.o == 0 and #st.w == 0 then table.insert(problems, 'empty room ' .. room) end
  if #st.o > 0 and not st.h then table.insert(problems, 'no held_since in ' .. room) end
  if #st.o == 0 and (st.h or st.a or st.p) then table.insert(problems, 'a hold kept in empty ' .. room) end
  for _, occ in ipairs(st.o) do
    if #occ.s == 0 then table.insert(problems, 'occupant without session in ' .. room) end
    if not occ.t then table.insert(problems, 'occupant without since in ' .. room) end
    for _, sid in ipairs(occ.s) do
      local s = load_sess(sid)
      if not s then table.insert(problems, 'unknown session ' .. sid .. ' in ' .. room)
      elseif okey(sid, s) ~= occ.k then table.insert(problems, 'wrong occupant for ' .. sid)
      elseif not find(s.j, room) then table.insert(problems, sid .. ' does not list ' .. room) end
    end
  end
  for _, sid in ipairs(st.w) do
    local s = load_sess(sid)
    if (not s) or (not find(s.w, room)) then table.insert(problems, 'watcher ' .. sid .. ' of ' .. room) end
  end
end
for _, k in ipairs(redis.call('KEYS', P .. ':s:*')) do
  local sid = string.match(k, '{(%x*)}$')
  local s = load_sess(sid)
  n.sessions = n.sessions + 1
  if s.g > 0 then n.grace = n.grace + 1 end
  if redis.call('GET', tkey(s.t)) ~= sid then table.insert(problems, 'token of ' .. sid) end
  for _, room in ipairs(s.j) do
    local raw = redis.call('GET', rkey(room))
    local ok = false
    if raw then
      for _, occ in ipairs(cjson.decode(raw).o) do
        if occ.k == okey(sid, s) and find(occ.s, sid) then ok = true end
      end
    end
    if not ok then table.insert(problems, sid .. ' lists ' .. room .. ' it is not in') end
  end
end
-- A sweep leaves nothing behind once it is over.
if redis.call('SCARD', SWEEPING) == 0 then
  if redis.call('EXISTS', P .. ':sweep:rooms') == 1 then table.insert(problems, 'rooms queued by no sweep') end
  for _, k in ipairs(redis.call('KEYS', P .. ':rx:*')) do table.insert(problems, 'left by a sweep: ' .. k) end
  for _, k in ipairs(redis.call('KEYS', P .. ':sw:*')) do table.insert(problems, 'left by a sweep: ' .. k) end
end
for f, v in pairs(n) do
  local c = tonumber(redis.call('HGET', STATS, f) or '0')
  if c ~= v then table.insert(problems, 'counter ' .. f .. ' is ' .. c .. ', counted ' .. v) end
end
return reply({x = problems}, nil)
"#;

/// A script with the prelude.
pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}\n{body}"))
}
