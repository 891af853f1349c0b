-- Reproduces Machine's line order (occupants by first join) kept across a Redis that restarted empty.
--
-- `restore(room, last_seen_state, my_sessions, my_watchers, lease_ms)`: after Redis lost its
-- data, puts a room back from the state this node saw last. If the room is missing, the whole
-- line is written back in its old order; the other nodes' sessions are kept as placeholders for
-- one lease (their nodes confirm them with their own restore, or they are dropped). If it
-- exists, this node's occupants are merged in at their old place (by their order key `q`).
-- Only where this node's sessions still are: the node wrote their records back first and keeps
-- serving meanwhile, so one that left the room (or stopped watching it, or ended) since the
-- node's snapshot is not put back (its record says so).
local room, raw, lease = ARGV[3], ARGV[4], tonumber(ARGV[7])
local mine, mywatch = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local seen = cjson.decode(raw)
local function still(sid, field)
  local l = redis.call('HGET', skey(sid), field)
  return l ~= false and l ~= nil and find(cjson.decode(l), room) ~= nil
end
-- Another node's session, kept as a placeholder until its node confirms it: false once its
-- record is back and does not list the room (it left meanwhile: no placeholder, not even for a
-- lease, or it stands in the line as a ghost), else true (listed, or not back yet).
local function may_stand(sid)
  local l = redis.call('HGET', skey(sid), 'j')
  return l == false or l == nil or find(cjson.decode(l), room) ~= nil
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
        if may_stand(sid) then table.insert(u, sid); table.insert(s, sid) end
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
  -- Placeholders (written back by another node) whose records say they left meanwhile.
  for i = #st.o, 1, -1 do
    local occ = st.o[i]
    if occ.u then
      for j = #occ.u, 1, -1 do
        local sid = occ.u[j]
        if not may_stand(sid) then
          table.remove(occ.u, j)
          local k = find(occ.s, sid)
          if k then table.remove(occ.s, k) end
          changed = true
        end
      end
      if #occ.u == 0 then occ.u = nil; occ.x = nil end
      if #occ.s == 0 then table.remove(st.o, i) end
    end
  end
end
for _, w in ipairs(mywatch) do
  if not find(st.w, w) and still(w, 'w') then table.insert(st.w, w) end
end
if changed then bump(st) end
save_room(room, was, st, changed)
return reply({}, nil)
