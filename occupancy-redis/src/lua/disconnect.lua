-- Reproduces Machine::disconnect_as.
--
-- `disconnect(sid, node, grace_ms)`: Machine::disconnect_as; grace 0 closes at once.
local sid, node, rem = ARGV[3], ARGV[4], tonumber(ARGV[5])
local s, e = owned(sid, node)
if not s then return e end
if s.g > 0 then return reply({}, nil) end
if rem <= 0 then
  close_session(sid, s)
else
  redis.call('HSET', skey(sid), 'g', fmt(now_ms() + rem))
  stat('grace', 1)
end
return reply({}, nil)
