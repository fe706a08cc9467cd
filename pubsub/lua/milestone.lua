-- Count one milestone-gate call and move the client's cursor by at most one milestone.
-- KEYS: milestone cursors hash, job hash. ARGV: client, progress, max clients, milestones...
-- Returns {1, calls, milestone} when one was reached, {0, calls} when not, {-1} when the
-- job is gone, {-2} when the job already has too many clients. The milestone goes back as
-- a string: Lua numbers returned to Redis are truncated to integers.
local ttl = redis.call('PTTL', KEYS[2])
if ttl < 0 then
  return {-1}
end
local calls_field = 'calls:' .. ARGV[1]
local last_field = 'last:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], calls_field) == 0
    and redis.call('HLEN', KEYS[1]) >= 2 * tonumber(ARGV[3]) then
  return {-2}
end
local calls = redis.call('HINCRBY', KEYS[1], calls_field, 1)
redis.call('PEXPIRE', KEYS[1], ttl)
local last = tonumber(redis.call('HGET', KEYS[1], last_field) or '-1')
local progress = tonumber(ARGV[2])
for i = 4, #ARGV do
  local milestone = tonumber(ARGV[i])
  if milestone > last then
    if progress >= milestone then
      redis.call('HSET', KEYS[1], last_field, ARGV[i])
      return {1, calls, ARGV[i]}
    end
    break
  end
end
return {0, calls}
