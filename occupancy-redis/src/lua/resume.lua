-- Reproduces Machine::resume.
--
-- `resume(token, new_token, node)`: Machine::resume. Moves the session to `node` (publishing
-- `s` so its old node closes the old connection), returns its rooms' states.
local tok, new, node = ARGV[3], ARGV[4], ARGV[5]
local sid = redis.call('GET', tkey(tok))
if not sid then return err('resume_invalid') end
if tok ~= new and redis.call('EXISTS', tkey(new)) == 1 then return err('session_exists') end
local s = load_sess(sid)
if not s then return err('resume_invalid') end
if s.g > 0 and s.g <= now_ms() then
  close_session(sid, s)
  return err('resume_invalid')
end
local was_live = (s.g == 0)
if not was_live then stat('grace', -1) end
redis.call('DEL', tkey(tok))
redis.call('SET', tkey(new), sid)
redis.call('HSET', skey(sid), 't', new, 'g', '0', 'n', node)
if s.n ~= node then
  if s.n then redis.call('SREM', nskey(s.n), sid) end
  redis.call('SADD', nskey(node), sid)
  redis.call('PUBLISH', CH, 's' .. sid .. '\n' .. node)
end
local rooms, watching = {}, {}
for _, room in ipairs(s.j) do table.insert(rooms, {room, redis.call('GET', rkey(room)) or ''}) end
for _, room in ipairs(s.w) do table.insert(watching, {room, redis.call('GET', rkey(room)) or ''}) end
return reply({i = sid, lv = was_live and 1 or 0, pr = s.p, me = s.m, j = rooms, w = watching}, nil)
