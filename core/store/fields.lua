-- Fields of many hashes of one shard in one call (store.shards.read_fields), rather than a
-- pipelined HMGET per hash: a batch's rows spread over a thousand small hashes a day.
-- KEYS[1]: one of the hashes, which routes the call to its shard. ARGV[1]: a JSON array of
-- [hash, [fields]]. Returns, per hash, its fields' values (nil where it has none).
local CHUNK = 1000  -- unpack() puts its values on Lua's C stack, which holds 8,000
local out = {}
for g, group in ipairs(cjson.decode(ARGV[1])) do
  local key, fields, values = group[1], group[2], {}
  for i = 1, #fields, CHUNK do
    local held = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #held do values[#values + 1] = held[j] end
  end
  out[g] = values
end
return out
