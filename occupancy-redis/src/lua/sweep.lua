-- Reproduces Machine::close_many (a dead node's sessions, in bounded calls).
--
-- `sweep(dead_node, max_sessions, max_units, budget_us, small_bytes)`: Machine::close_many
-- over the dead node's sessions, run as a series of bounded calls so that no call blocks Redis
-- for long, whatever the number of sessions or the length of their lines. The caller repeats it
-- while the reply says `m` = 1 (more to do); any node can carry on a sweep another began (what
-- is left is kept in Redis). Each call:
--
-- 1. **Sessions**: takes up to `max_sessions` of the dead node's sessions (fewer when half of
--    `budget_us` of Redis time is used up) and forgets them (record, token, counters: they can
--    no longer be resumed). Their removals are merged per room: each room they were in changes
--    once in this call — one version, one publish, its next in line granted the room by
--    `save_room` as for any change — if its stored state is at most `small_bytes` long (and
--    time is left). A longer room's removals are queued instead (`{prefix}:rx:{<room hex>}`:
--    `o<session><occupant key>` or `w<session>`; the room listed in `{prefix}:sweep:rooms`),
--    so that a long line is read and rewritten once per sweep, not once per call. One `x`
--    message per call names the sessions, for the dead node if it was only cut off.
-- 2. **Queued rooms**, once no session is left: each loses all its queued removals at once (one
--    version, one publish), until `max_units` (rooms plus the line lengths read) or the budget
--    is used up. A room is never split: one room whose line alone takes longer than the budget
--    is one call of its own.
--
-- The first call (the node's lease has ended) takes the node out of the lease set, marks it
-- dead (its `renew` answers -1 if it comes back) and moves its session set aside
-- (`{prefix}:sw:{<node>}`), so that sessions a node that comes back creates under the same id
-- are not swept. Replies `n` (sessions closed by this call) and `m`; `c` lists the changed
-- rooms with their versions but not their states (they reach every node by pub/sub, and the
-- sweeping node rarely follows the rooms of a dead node).
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
