-- ARGV: 1 window_max, 2 flag stream max entries, 3 anomalies max, 4 use_model ('1' scored,
-- '0' no model when prepared, '2' park even though a model is published: it is unusable),
-- 5 n_new, 6 n_old, 7 the new rows' aggregates (JSON, see _totals), 8 their window entry
-- (JSON array of wire rows), 9 their flags (JSON array), 10 their anomalies (JSON), 11 the
-- old rows (JSON), 12 the score events the caller joined to new rows (JSON object id ->
-- SCORES value), 13 the new rows' JOIN_ROWS records (JSON array of [id, record]), then the
-- n_new ids, then per-row values: the n_new flags when scoring, or the wire rows of all
-- n_new + n_old rows when parking.
local window_max, flags_max, anomalies_max = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local use_model, n_new, n_old = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local IDS = 14
local VALUES = IDS + n_new
-- unpack() puts its values on Lua's C stack, which holds 8,000.
local CHUNK = 1000
-- KEYS, as _BATCH_LAYOUT names them (the aggregates' hashes are addressed by index):
local scored_this_minute = KEYS[#KEYS]

if use_model == '0' and redis.call('EXISTS', model_current) == 1 then
  return {0, -1}  -- a model was published meanwhile: the caller scores and calls again
end

-- The caller sends as new the rows it believes SEEN lacks, with their aggregates summed.
-- If SEEN holds any of them (a redelivery), nothing is written and the caller is told
-- which, so it can move them to the old rows and sum again.
local clash = {}
for i = 0, n_new - 1, CHUNK do
  local last = math.min(i + CHUNK, n_new) - 1
  local member = redis.call('SMISMEMBER', seen, unpack(ARGV, IDS + i, IDS + last))
  for j = 1, #member do
    if member[j] == 1 then clash[#clash + 1] = i + j - 1 end
  end
end
if #clash > 0 then return {'clash', clash} end

-- The aggregates count each new row's score event as the caller read it; if one arrived
-- since, the caller joins again.
local joined = cjson.decode(ARGV[12])
if n_new > 0 and redis.call('HLEN', scores) > 0 then
  for i = 0, n_new - 1, CHUNK do
    local last = math.min(i + CHUNK, n_new) - 1
    local now = redis.call('HMGET', scores, unpack(ARGV, IDS + i, IDS + last))
    for j = 1, #now do
      if (now[j] or false) ~= (joined[ARGV[IDS + i + j - 1]] or false) then return {'rejoin', 0} end
    end
  end
end

for i = 0, n_new - 1, CHUNK do
  redis.call('SADD', seen, unpack(ARGV, IDS + i, IDS + math.min(i + CHUNK, n_new) - 1))
end
if n_new > 0 then
  -- The batch's aggregates, summed by the caller: one call per session or wallet and measure.
  local totals = cjson.decode(ARGV[7])
  for _, t in ipairs(totals.i) do redis.call('HINCRBY', KEYS[t[1]], t[2], t[3]) end
  for _, t in ipairs(totals.f) do redis.call('HINCRBYFLOAT', KEYS[t[1]], t[2], t[3]) end
  for _, t in ipairs(totals.sw) do redis.call('HSET', session_wallet, t[1], t[2]) end
  for _, t in ipairs(totals.p) do
    if redis.call('HSETNX', wallet_session_seen, t[2], 1) == 1 then
      redis.call('HINCRBY', wallet_sessions, t[1], 1)
    end
  end
  for _, t in ipairs(totals.d) do redis.call('HINCRBY', dropped, t[1], t[2]) end
  for _, t in ipairs(cjson.decode(ARGV[13])) do redis.call('HSET', join_rows, t[1], t[2]) end
  if totals.j > 0 then redis.call('HINCRBY', stats, 'score_events_joined', totals.j) end
  local top = redis.call('XREVRANGE', window, '+', '-', 'COUNT', 1)
  local total = n_new
  if #top > 0 then total = total + tonumber(string.match(top[1][1], '^%d+')) end
  -- Keep every entry that holds one of the newest window_max rows.
  redis.call('XADD', window, 'MINID', string.format('%d', math.max(total - window_max + 1, 0)),
             string.format('%d-0', total), 'r', ARGV[8])
end

if use_model ~= '1' then
  -- No usable model: all rows, old ones too, wait in PENDING for the next training to drain.
  local n = n_new + n_old
  for i = 0, n - 1, CHUNK do
    redis.call('RPUSH', pending, unpack(ARGV, VALUES + i, VALUES + math.min(i + CHUNK, n) - 1))
  end
  return {n_new, 0}
end

local function count_anomaly(provider, record)
  redis.call('HINCRBY', stats, 'anomalies', 1)
  redis.call('HINCRBY', by_provider, provider, 1)
  redis.call('XADD', anomalies, 'MAXLEN', '~', anomalies_max, '*', 'a', record)
end

-- New rows have no flag yet: flags are only written here, after SADD.
for i = 0, n_new - 1, CHUNK do
  local fields = {}
  for j = i, math.min(i + CHUNK, n_new) - 1 do
    fields[#fields + 1] = ARGV[IDS + j]
    fields[#fields + 1] = ARGV[VALUES + j]
  end
  redis.call('HSET', flags, unpack(fields))
end
if n_new > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', n_new, 'f', ARGV[9])
  for _, a in ipairs(cjson.decode(ARGV[10])) do count_anomaly(a[1], a[2]) end
end

-- Old rows were seen before; those without a flag yet get theirs now, once.
local scored, late = n_new, {}
if n_old > 0 then
  for _, o in ipairs(cjson.decode(ARGV[11])) do
    local id, flag, provider, record = o[1], o[2], o[3], o[4]
    if redis.call('HSETNX', flags, id, flag) == 1 then
      scored = scored + 1
      late[#late + 1] = flag
      if record ~= '' then count_anomaly(provider, record) end
    end
  end
end
if #late > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', #late,
             'f', '[' .. table.concat(late, ',') .. ']')
end
if scored > 0 then
  redis.call('HINCRBY', stats, 'scored', scored)  -- equals HLEN flags unless one was sent twice
  redis.call('INCRBY', scored_this_minute, scored)
  redis.call('EXPIRE', scored_this_minute, 300)
end
return {n_new, scored}
