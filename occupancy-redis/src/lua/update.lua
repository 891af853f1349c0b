-- Reproduces Machine::update.
--
-- `update(sid, node, room, meta, idle_ms)`: Machine::update, the occupant's metadata in a room
-- the session stands in; the same metadata again changes nothing (no version, no publish). An
-- update by a session of the holder refreshes its idle clock (stored without a publish: nobody
-- sees it).
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
  edit(st, {e = 'm', i = pos - 1, k = key, m = meta})
  save_room(room, was, st, true)
elseif refresh then
  save_room(room, was, st, false)
end
return reply({p = pos - 1}, room)
