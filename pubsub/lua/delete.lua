-- Delete every key of a job, drop it from its partition's index and announce it;
-- returns 0 when the job did not exist.
-- KEYS: job hash, history list, result, milestone cursors, partition index, job channel,
--       partition channel, partition live index (one hash slot). ARGV: envelope, job id.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('SPUBLISH', KEYS[6], ARGV[1])
redis.call('SPUBLISH', KEYS[7], ARGV[1])
return 1
