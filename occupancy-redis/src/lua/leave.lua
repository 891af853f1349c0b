-- Reproduces Machine::leave.
--
-- `leave(sid, node, room)`: Machine::leave (the next in line is granted the room in
-- `save_room` when the holder left).
local sid, node, room = ARGV[3], ARGV[4], ARGV[5]
local s, e = live(sid, node)
if not s then return e end
local i = find(s.j, room)
if not i then return reply({wm = 0}, nil) end
table.remove(s.j, i)
save_lists(sid, s)
remove_from_line(room, sid, okey(sid, s))
return reply({wm = 1}, room)
