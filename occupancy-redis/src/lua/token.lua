-- Reproduces Machine::resume's token lookup (session_for_token).
--
-- `session_for_token(token)`.
local sid = redis.call('GET', tkey(ARGV[3]))
if not sid then return reply({}, nil) end
local p = redis.call('HGET', skey(sid), 'p')
return reply({i = sid, pr = p or nil}, nil)
