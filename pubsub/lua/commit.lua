-- Commit one job update atomically, if nobody else committed since it was read.
-- KEYS: job hash, history list, result, milestone cursors, partition index, job channel,
--       partition channel, partition live index (one hash slot: the partition's tag, see
--       pubsub/brokers/keys.py).
-- ARGV: expected seq, record, snapshot, envelope, ttl, history length,
--       result ('' = keep), job id, creation time, last update time ('' = cannot stall),
--       the writer's field of the job hash ('' = none), the writer's update number,
--       the digest of the caller's request key ('' = none), the digest of its update,
--       how many request keys the job keeps.
-- Returns {1} once written, {0, record} when the seq moved, and {2, record} when the job
-- holds this writer's update, or this request key's, already: a retry whose first answer
-- was lost (a dropped connection, a WAIT that timed out) is applied once
-- (pubsub/broker.py UpdateId, RequestKey). {3} when the job holds the request key for
-- another update's digest.
-- The events go out with SPUBLISH from here: Redis (7.0 and later, cluster mode too)
-- accepts it in a script when the channel is in the script's slot, so the write and its
-- publication are one atomic step, on one server or a cluster.
local writer = ARGV[11] ~= '' and ARGV[11] or nil
if writer then
  local held = redis.call('HGET', KEYS[1], writer)
  if held and tonumber(held) >= tonumber(ARGV[12]) then
    return {2, redis.call('HGET', KEYS[1], 'record')}
  end
end
-- The job's last request keys: one string of 32-character entries, oldest first, each
-- the digest of a caller's key then the digest of its update (16 hex digits each:
-- pubsub/broker.py RequestKey), so a lookup is a find and the bound a cut.
local request = ARGV[13] ~= '' and ARGV[13] or nil
local requests = ''
if request then
  requests = redis.call('HGET', KEYS[1], 'requests') or ''
  local from = 1
  while true do
    local at = string.find(requests, request, from, true)
    if not at then
      break
    end
    if at % 32 == 1 then
      if string.sub(requests, at + 16, at + 31) == ARGV[14] then
        return {2, redis.call('HGET', KEYS[1], 'record')}
      end
      return {3}
    end
    from = at + 1
  end
end
local current = redis.call('HGET', KEYS[1], 'seq') or '0'
if current ~= ARGV[1] then
  return {0, redis.call('HGET', KEYS[1], 'record')}
end
local seq = tostring(tonumber(ARGV[1]) + 1)
local fields = {'seq', seq, 'record', ARGV[2]}
if writer then
  table.insert(fields, writer)
  table.insert(fields, ARGV[12])
end
if request then
  table.insert(fields, 'requests')
  table.insert(fields, string.sub(requests .. request .. ARGV[14], -32 * tonumber(ARGV[15])))
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7])
end
for i = 1, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
if current == '0' then
  redis.call('ZADD', KEYS[5], ARGV[9], ARGV[8])
end
if ARGV[10] == '' then
  redis.call('ZREM', KEYS[8], ARGV[8])
else
  redis.call('ZADD', KEYS[8], ARGV[10], ARGV[8])
end
redis.call('SPUBLISH', KEYS[6], ARGV[4])
redis.call('SPUBLISH', KEYS[7], ARGV[4])
return {1}
