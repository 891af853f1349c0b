-- Reproduces Machine::handle_timeout (idle expiry).
--
-- `idle(room, idle_ms)`: Machine::handle_timeout's idle expiry, run by a node that hosts a
-- session of the holder when its local deadline comes due. Re-checks under Redis's atomicity:
-- if someone waits and the holder's idle clock plus `idle_ms` has passed, displaces the holder
-- (reason `idle`, one change, one publish; `n` = 1); if the holder was active meanwhile (or was
-- granted the room since), replies `d` = milliseconds until its deadline; otherwise (nobody
-- waits, nobody holds) nothing.
local room, idle = ARGV[3], tonumber(ARGV[4])
local st, was = load_room(room)
if (not st) or #st.o < 2 then return reply({}, nil) end
local due = idle_due(st, idle)
if not due then return reply({}, nil) end
if due > now_ms() then return reply({d = fmt(due - now_ms())}, nil) end
displace(room, st, was, 'idle')
return reply({n = 1}, nil)
