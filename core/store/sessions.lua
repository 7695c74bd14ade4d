-- The sessions of each wallet, counted once each in the shard of the (wallet, session)
-- pair, in the wallet's aggregate record there (store.batch._count_sessions).
-- ARGV: 1 the shard's key prefix, 2 retention days, 3 a JSON
-- array of [wallet, bucket, the pair's hash, day]. A session goes on being the same one
-- across midnight; one idle for longer than the horizon counts again when it comes back.
-- KEYS, as _SESSIONS_LAYOUT names them:
local clock = tonumber(redis.call('GET', clock_key) or 0)
local cutoff = clock - tonumber(ARGV[2])
for _, p in ipairs(cjson.decode(ARGV[3])) do
  local wallet, bucket, pair, day = p[1], p[2], p[3], p[4]
  if day > cutoff and redis.call('HSETNX', session_seen(day, bucket), pair, 1) == 1 then
    redis.call('SADD', days_key, day)
    if redis.call('HEXISTS', session_seen(day - 1, bucket), pair) == 0 then
      local record = read_aggregate(wallet_agg, wallet)
      record[N_MEASURES + 1] = (record[N_MEASURES + 1] or 0) + 1
      write_aggregate(wallet_agg, wallet, record)
    end
  end
end
return 0
