-- Reproduces Machine::close.
--
-- `close(sid, node)`: Machine::close.
local sid, node = ARGV[3], ARGV[4]
local s, e = owned(sid, node)
if not s then return e end
close_session(sid, s)
return reply({}, nil)
