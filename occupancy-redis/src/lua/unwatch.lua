-- Reproduces Machine::unwatch.
--
-- `unwatch(sid, node, room)`: Machine::unwatch.
local sid, node, room = ARGV[3], ARGV[4], ARGV[5]
local s, e = live(sid, node)
if not s then return e end
local i = find(s.w, room)
if not i then return reply({wm = 0}, nil) end
table.remove(s.w, i)
save_lists(sid, s)
remove_watcher(room, sid)
return reply({wm = 1}, nil)
