-- Reproduces Machine::connect.
--
-- `connect(sid, node, has_principal, principal, meta, token)`: Machine::connect.
local sid, node, hasp, p, meta, tok = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('EXISTS', skey(sid)) == 1 or redis.call('EXISTS', tkey(tok)) == 1 then
  return err('session_exists')
end
redis.call('HSET', skey(sid), 'n', node, 'm', meta, 't', tok, 'j', '[]', 'w', '[]', 'g', '0')
if hasp == '1' then redis.call('HSET', skey(sid), 'p', p) end
redis.call('SET', tkey(tok), sid)
redis.call('SADD', nskey(node), sid)
stat('sessions', 1)
return reply({}, nil)
