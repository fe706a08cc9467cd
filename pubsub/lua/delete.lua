-- Delete every key of a job and announce it; returns 0 when the job did not exist.
-- KEYS: job hash, history list, result, milestone cursors. ARGV: channel, envelope.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
