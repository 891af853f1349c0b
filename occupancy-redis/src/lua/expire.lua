-- Reproduces Machine::handle_timeout (grace expiry).
--
-- `expire(sid, node)`: Machine::handle_timeout's grace expiry. The owning node's grace timer
-- ran out; closes the session if it is still in grace and still owned by that node (a resume on
-- another node moved it).
local sid, node = ARGV[3], ARGV[4]
local s = load_sess(sid)
if s and s.n == node and s.g > 0 then
  close_session(sid, s)
  return reply({n = 1}, nil)
end
return reply({n = 0}, nil)
