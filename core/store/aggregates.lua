-- Adding to an aggregate record (store.records), for batch.lua and scores.lua. Before this
-- come MEASURE (name -> position), N_MEASURES and PER (position -> kept per value).
-- delta: per measure a number, or for those kept per value a table value -> count (nil
-- adds nothing); then maybe the session's wallet, which replaces the record's.
local function add_aggregate(key, who, delta)
  local held = redis.call('HGET', key, who)
  local record = held and cmsgpack.unpack(held) or {}
  for i = 1, N_MEASURES do
    local d = delta[i]
    if PER[i] then
      local counts = record[i] or {}
      for value, n in pairs(d or {}) do
        local total = (counts[value] or 0) + n
        -- What an event moved away to nothing goes: the map names what the rows have.
        if total <= 0 then counts[value] = nil else counts[value] = total end
      end
      record[i] = counts
    else
      record[i] = (record[i] or 0) + (d or 0)
    end
  end
  local wallet = delta[N_MEASURES + 1]
  if wallet ~= nil and wallet ~= cjson.null then record[N_MEASURES + 1] = wallet end
  redis.call('HSET', key, who, cmsgpack.pack(record))
end
