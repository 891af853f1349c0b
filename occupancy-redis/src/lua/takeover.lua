-- Reproduces Machine::takeover.
--
-- `takeover(sid, node, room)`: Machine::takeover (the room is granted to the caller in
-- `save_room`; no `r`: the reason is a take over).
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
