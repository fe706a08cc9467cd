-- Commit one job update atomically, if nobody else committed since it was read.
-- KEYS: job hash, history list, result, milestone cursors (one hash slot: the job id).
-- ARGV: expected seq, record, snapshot, channel, envelope, ttl, history length, result ('' = keep)
local current = redis.call('HGET', KEYS[1], 'seq') or '0'
if current ~= ARGV[1] then
  return {0, redis.call('HGET', KEYS[1], 'record')}
end
redis.call('HSET', KEYS[1], 'seq', tostring(tonumber(ARGV[1]) + 1), 'record', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[7]), -1)
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[3], ARGV[8])
end
for i = 1, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[6])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1}
