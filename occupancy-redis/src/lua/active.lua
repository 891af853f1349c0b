-- Reproduces Machine::active.
--
-- `active(sid, node, room, idle_ms)`: Machine::active. `not_member` unless this session stands
-- in the room; when its occupant holds and idle expiry is on, its idle clock is now (stored
-- without a publish: no version, nobody is told).
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
