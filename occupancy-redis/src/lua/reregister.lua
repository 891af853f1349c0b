-- Reproduces Machine::connect again for a session Redis lost (token and rooms kept).
--
-- `reregister(sid, node, has_principal, principal, meta, token, joined, watching, grace_ms)`:
-- writes a local session's record back after Redis lost it.
local sid, node, hasp, p, meta, tok, J, W, rem =
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
local old = load_sess(sid)
if not old then stat('sessions', 1) end
local g = '0'
if rem > 0 then g = fmt(now_ms() + rem) end
local was_grace = old and old.g > 0
if rem > 0 and not was_grace then stat('grace', 1) end
if rem <= 0 and was_grace then stat('grace', -1) end
redis.call('HSET', skey(sid), 'n', node, 'm', meta, 't', tok, 'j', J, 'w', W, 'g', g)
if hasp == '1' then redis.call('HSET', skey(sid), 'p', p) end
redis.call('SET', tkey(tok), sid)
redis.call('SADD', nskey(node), sid)
return reply({}, nil)
