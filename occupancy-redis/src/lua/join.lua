-- Reproduces Machine::join.
--
-- `join(sid, node, room, meta, max_rooms, max_occupants, idle_ms)` (`idle_ms` 0: no idle
-- expiry).
--
-- Machine::join: idempotent for a session already in line; a new occupant stands at the back
-- with `since` (`t`) now. A join by any session of the holder (also an idempotent one) refreshes
-- its idle clock. A join that makes someone wait behind a holder a forced release found alone
-- (`p`), or behind an idle holder, is followed at once by a second change (and publish):
-- displacing the holder (reason `server` / `idle`); the reply gives the place after both.
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
-- A room that did not exist has no version a follower could hold: its first state goes whole.
local existed = st ~= nil
if not st then st = new_room() end
local behind = false
if pos then
  if existed then edit(st, {e = 's', i = pos - 1, k = key, s = sid}) else bump(st) end
  table.insert(st.o[pos].s, sid)
  if pos == 1 and idle > 0 then st.a = now_str() end
else
  local d = {e = 'j'}
  if existed then edit(st, d) else bump(st) end
  behind = #st.o > 0
  local occ = {k = key, m = meta, q = st.v, s = {sid}, t = now_str()}
  d.o = occ
  table.insert(st.o, occ)
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
