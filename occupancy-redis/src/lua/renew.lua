-- Reproduces Machine::close_many's trigger: the node lease after which a node's sessions are closed (no Machine rule of its own).
--
-- `renew(node, lease_ms)`: extends the node's lease. `s` = 1 (fine), 0 (the registration was
-- lost: Redis lost its data; restore), -1 (another node swept this one: its sessions are gone).
-- `x` lists the nodes to sweep: those whose lease has ended and those a sweep has begun on and
-- not finished (any node may carry on a sweep another one began). `d` is Redis time (ms: the
-- node's estimate of its clock's offset, for idle deadlines) and `ne` the earliest lease end of
-- the other nodes (Redis ms), so that the node looks again right when that lease ends instead of
-- at its next renewal: a dead node is swept promptly after its lease, whatever the lease.
local node, lease = ARGV[3], tonumber(ARGV[4])
local status = 1
if not redis.call('ZSCORE', NODES, node) then
  if redis.call('EXISTS', deadkey(node)) == 1 then
    status = -1
    redis.call('DEL', deadkey(node))
  else
    status = 0
  end
end
redis.call('ZADD', NODES, now_ms() + lease, node)
local todo = redis.call('ZRANGEBYSCORE', NODES, '-inf', now_ms())
for _, n in ipairs(redis.call('SMEMBERS', SWEEPING)) do
  if not find(todo, n) then table.insert(todo, n) end
end
local ne = nil
local first = redis.call('ZRANGE', NODES, 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= node then ne = first[i + 1]; break end
end
return reply({s = status, x = todo, d = now_str(), ne = ne}, nil)
