-- Aggregate records (store.records), for the scripts. Before this come MEASURE (name ->
-- position), N_MEASURES and PER (position -> kept per value). Position N_MEASURES + 1 holds
-- a session's wallet (keys.wallet_ref), or the sessions a wallet has had.
local function read_aggregate(key, who)
  local held = redis.call('HGET', key, who)
  local record = held and cmsgpack.unpack(held) or {}
  for i = 1, N_MEASURES do
    if record[i] == nil then record[i] = PER[i] and {} or 0 end
  end
  return record
end

local function write_aggregate(key, who, record)
  redis.call('HSET', key, who, cmsgpack.pack(record))
end

-- delta: per measure a number, or for those kept per value a table value -> count (nil
-- adds nothing); then maybe the session's wallet, which replaces the record's.
local function add_aggregate(key, who, delta)
  local record = read_aggregate(key, who)
  for i = 1, N_MEASURES do
    local d = delta[i]
    if PER[i] then
      local counts = record[i]
      for value, n in pairs(d or {}) do
        local total = (counts[value] or 0) + n
        -- What an event moved away to nothing goes: the map names what the rows have.
        if total <= 0 then counts[value] = nil else counts[value] = total end
      end
    else
      record[i] = record[i] + (d or 0)
    end
  end
  local wallet = delta[N_MEASURES + 1]
  if wallet ~= nil and wallet ~= cjson.null then record[N_MEASURES + 1] = wallet end
  write_aggregate(key, who, record)
end
