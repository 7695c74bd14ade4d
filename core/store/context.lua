-- One shard's part of a batch's live context (store.batch.provider_context): the aggregate
-- records of its wallets and sessions, in one call rather than one HMGET per key, which on
-- a cluster cost a round of the pipeline per shard and bucket. ARGV: 1 the shard's key
-- prefix, 2 a JSON array of groups [day or -1 for the wallets, bucket, [names]]. Returns,
-- per group, its names' records (nil where the shard has none).
-- KEYS, as _CONTEXT_LAYOUT names them:
local CHUNK = 1000  -- unpack() puts its values on Lua's C stack, which holds 8,000
local out = {}
for g, group in ipairs(cjson.decode(ARGV[2])) do
  local key = group[1] < 0 and wallet_agg or session_agg(group[1], group[2])
  local names, records = group[3], {}
  for i = 1, #names, CHUNK do
    local held = redis.call('HMGET', key, unpack(names, i, math.min(i + CHUNK - 1, #names)))
    for j = 1, #held do records[#records + 1] = held[j] end
  end
  out[g] = records
end
return out
