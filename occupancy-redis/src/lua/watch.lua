-- Reproduces Machine::watch.
--
-- `watch(sid, node, room, max_rooms)`: Machine::watch.
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
