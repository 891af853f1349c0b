-- Reproduces Machine::check_invariants (tests only).
--
-- `check()`: the invariants (tests only; O(everything), uses KEYS). Replies `x`: problems.
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
