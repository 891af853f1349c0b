-- Reproduces Machine's shared rules: per-room versions (bump, edit), grant on a new holder (save_room), Machine::displace_holder (displace), Machine::close (close_session).
--
-- Helpers shared by every script.
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
-- Publishes (see lua.rs): an edit the script described (`edit`) as a delta `d<room>\n<prev>\n
-- <version>\n<edit JSON>`, sized by the change; any other change as the whole state when it is
-- at most FULL_MAX bytes long, else as `v<room>\n<version>` (followers re-read the room: one GET
-- per following node, instead of the whole line to every node).
local FULL_MAX = 16384
-- The edit of the change in progress and the version it starts from (set by `edit`, consumed by
-- the next save).
local DELTA, DELTA_PREV = nil, nil
-- A change that one small edit describes (Machine's one-place edits: an occupant appended, a
-- session added to or removed from one occupant, one occupant's metadata): bumps the version and
-- remembers the edit for the publish. `d.i` is the occupant's 0-based place, `d.k` its key.
local function edit(st, d)
  local prev = st.v
  bump(st)
  DELTA, DELTA_PREV = d, prev
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
    if DELTA then
      -- The room's clocks after the change travel with the edit (a grant may have reset them).
      DELTA.h = st.h; DELTA.a = st.a
      redis.call('PUBLISH', CH, 'd' .. room .. '\n' .. DELTA_PREV .. '\n' .. st.v .. '\n' .. cjson.encode(DELTA))
    elseif #js <= FULL_MAX then
      redis.call('PUBLISH', CH, 'r' .. room .. '\n' .. st.v .. '\n' .. js)
    else
      redis.call('PUBLISH', CH, 'v' .. room .. '\n' .. st.v)
    end
    if REPORT_STATES then
      table.insert(CHANGED, {room, st.v, js})
      if was.exists then LAST[room] = #CHANGED else LAST[room] = nil end
    else
      table.insert(CHANGED, {room, st.v, ''})
    end
  else
    LAST[room] = nil
  end
  DELTA, DELTA_PREV = nil, nil
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
  local d = nil
  for i, occ in ipairs(st.o) do
    if occ.k == key then
      local j = find(occ.s, sid)
      -- One session out of one occupant (the occupant too when it was its last): an edit, unless
      -- the occupant is a restored placeholder (its deadline `x` is part of the node's view).
      if j and not occ.x then d = {e = 'x', i = i - 1, k = key, s = sid} end
      if j then table.remove(occ.s, j) end
      if occ.u then
        local ju = find(occ.u, sid)
        if ju then table.remove(occ.u, ju) end
      end
      if #occ.s == 0 then table.remove(st.o, i) end
      break
    end
  end
  if d then edit(st, d) else bump(st) end
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
