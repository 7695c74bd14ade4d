-- Rejected lines, each counted once while it is inside the retention horizon. A line is
-- known by its key (source:line:digest) in the hash of the day (wall clock) it was first
-- rejected on; each day's hash expires once the horizon has passed it.
-- KEYS: the count, the stream, today's hash, then every other hash still looked in (the
-- horizon's earlier days, and that of releases before per-day hashes).
-- ARGV: today's hash's time to live, the stream's length, then per line its key, its
-- reason and its record (JSON). Returns how many lines were new.
local count, stream, today = KEYS[1], KEYS[2], KEYS[3]
local new = 0
for i = 3, #ARGV, 3 do
  local key, held = ARGV[i], false
  for k = 3, #KEYS do
    if redis.call('HEXISTS', KEYS[k], key) == 1 then held = true break end
  end
  if not held then
    redis.call('HSET', today, key, ARGV[i + 1])
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', 'r', ARGV[i + 2])
    new = new + 1
  end
end
if new > 0 then
  redis.call('INCRBY', count, new)
  if redis.call('TTL', today) < 0 then redis.call('EXPIRE', today, ARGV[1]) end
end
return new
