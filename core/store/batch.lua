-- One shard's part of a batch, written whole or not at all (store.batch.apply_batch).
-- ARGV: 1 the shard's key prefix, 2 window_max, 3 the flag stream's entries to keep,
-- 4 anomalies max, 5 use_model ('1' scored, '0' no model when prepared, '2' park even though a model is
-- published: it is unusable), 6 the batch's newest day, 7 retention days, 8 the cutoff day
-- the caller assumed (rows on or before it are late), 9 buckets per day in a shard, 10 the
-- orphan version the caller read its joins at, 11 the plan (JSON, see _plan), 12 the new
-- rows' window entry (JSON array of wire rows), 13 their flags (JSON array), then the new
-- rows' id hashes, in the plan's groups, then per-row values: the flag records of the new,
-- old and late rows when scoring, or their wire rows when parking.
local window_max, flags_max, anomalies_max = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local use_model, newest, retention = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local assumed, buckets = tonumber(ARGV[8]), tonumber(ARGV[9])
local plan = cjson.decode(ARGV[11])
local IDS = 14
local n_new = 0
for _, g in ipairs(plan.g) do n_new = n_new + g[3] end
local VALUES = IDS + n_new
-- unpack() puts its values on Lua's C stack, which holds 8,000.
local CHUNK = 1000
-- KEYS, as _BATCH_LAYOUT names them:

if use_model == '0' and redis.call('EXISTS', anomaly_model) == 1 then
  return {0, -1}  -- a model was published meanwhile: the caller scores and calls again
end

-- Lateness is decided against the clock as this batch leaves it; a caller that assumed
-- another is told the clock and sums again.
local clock = tonumber(redis.call('GET', clock_key) or newest)
local advanced = math.max(clock, newest)
if advanced - retention ~= assumed then return {'clock', tostring(clock)} end

-- The caller sends as new the rows it believes unseen, with their aggregates summed.
-- If any is seen (a redelivery), nothing is written and the caller is told which, so
-- it can move them to the old rows and sum again.
local clash, at = {}, IDS
for _, g in ipairs(plan.g) do
  local key = ix(g[1], g[2])
  for i = 0, g[3] - 1, CHUNK do
    local last = math.min(i + CHUNK, g[3]) - 1
    local held = redis.call('HMGET', key, unpack(ARGV, at + i, at + last))
    for j = 1, #held do
      if held[j] then clash[#clash + 1] = at + i + j - 1 - IDS end
    end
  end
  at = at + g[3]
end
if #clash > 0 then return {'clash', clash} end

-- The aggregates count each new row's score event as the caller read it; if an orphan
-- event arrived since, the caller joins again.
if (redis.call('GET', orphan_version) or '') ~= ARGV[10] then return {'rejoin', 0} end

if advanced > clock or redis.call('EXISTS', clock_key) == 0 then
  redis.call('SET', clock_key, advanced)
end

-- A late row is counted once, unless its day, which is leaving, still holds it: then it
-- is an old row (below).
local late, resident = 0, {}
for _, l in ipairs(plan.late) do
  if redis.call('HEXISTS', ix(l[1], l[2]), l[3]) == 1 then
    resident[#resident + 1] = l
  else
    late = late + redis.call('SADD', late_set(l[2]), l[3])
  end
end
if late > 0 then redis.call('HINCRBY', stats, 'late', late) end

-- Days that left the horizon go, with everything kept for them, once none of their rows
-- waits for a flag (parked for a model, maybe still queued after PENDING was drained).
local function evict()
  for _, d in ipairs(redis.call('SMEMBERS', days_key)) do
    if tonumber(d) <= advanced - retention and
        tonumber(redis.call('HGET', waiting, d) or 0) <= 0 then
      redis.call('HDEL', waiting, d)
      for b = 0, buckets - 1 do
        local waiting = redis.call('HLEN', orphans(d, b))
        if waiting > 0 then
          redis.call('HINCRBY', stats, 'orphans', -waiting)
          redis.call('HINCRBY', stats, 'orphans_expired', waiting)
        end
        for _, key in ipairs(day_keys(d, b)) do redis.call('UNLINK', key) end
      end
      for _, key in ipairs(day_wide_keys(d)) do redis.call('UNLINK', key) end
      redis.call('SREM', days_key, d)
    end
  end
end

local function write_new(values_at)
  local at = IDS
  for _, g in ipairs(plan.g) do
    local key = ix(g[1], g[2])
    for i = 0, g[3] - 1, CHUNK do
      local fields = {}
      for j = i, math.min(i + CHUNK, g[3]) - 1 do
        fields[#fields + 1] = ARGV[at + j]
        fields[#fields + 1] = values_at and ARGV[values_at + at - IDS + j] or ''
      end
      redis.call('HSET', key, unpack(fields))
    end
    at = at + g[3]
  end
end

if n_new > 0 then
  for _, d in ipairs(plan.days) do redis.call('SADD', days_key, d) end
  redis.call('HINCRBY', stats, 'seen', n_new)
  -- The batch's aggregates, summed by the caller: one record per session and day, and
  -- per wallet.
  for _, t in ipairs(plan.a) do add_aggregate(session_agg(t[1], t[2]), t[3], t[4]) end
  for _, t in ipairs(plan.w) do add_aggregate(wallet_agg, t[1], t[2]) end
  for _, t in ipairs(plan.d) do redis.call('HINCRBY', dropped, t[1], t[2]) end
  for _, t in ipairs(plan.jr) do redis.call('HSET', join(t[1], t[2]), t[3], t[4]) end
  for _, t in ipairs(plan.oh) do redis.call('HDEL', orphans(t[1], t[2]), t[3]) end
  if #plan.oh > 0 then redis.call('HINCRBY', stats, 'orphans', -#plan.oh) end
  if plan.j > 0 then redis.call('HINCRBY', stats, 'score_events_joined', plan.j) end
  local top = redis.call('XREVRANGE', window, '+', '-', 'COUNT', 1)
  local total = n_new
  if #top > 0 then total = total + tonumber(string.match(top[1][1], '^%d+')) end
  -- Keep every entry that holds one of the newest window_max rows.
  redis.call('XADD', window, 'MINID', string.format('%d', math.max(total - window_max + 1, 0)),
             string.format('%d-0', total), 'r', ARGV[12])
end

if use_model ~= '1' then
  -- No usable model: all rows, old ones too, wait in PENDING for the next training to drain.
  write_new(nil)
  for _, g in ipairs(plan.g) do redis.call('HINCRBY', waiting, g[1], g[3]) end
  local n = n_new + plan.no
  for i = 0, n - 1, CHUNK do
    redis.call('RPUSH', pending, unpack(ARGV, VALUES + i, VALUES + math.min(i + CHUNK, n) - 1))
  end
  for _, l in ipairs(resident) do redis.call('RPUSH', pending, ARGV[l[4]]) end
  return {n_new, 0, late}  -- PENDING holds rows: nothing leaves
end

local function count_anomaly(a)
  -- a: provider, record, day, id hash, reasons
  redis.call('HINCRBY', stats, 'anomalies', 1)
  redis.call('HINCRBY', by_provider, a[1], 1)
  redis.call('XADD', anomalies, 'MAXLEN', '~', anomalies_max, '*', 'a', a[2])
  redis.call('HSET', reasons(a[3]), a[4], a[5])
end

-- New rows have no flag yet: flags are only written here, after the check.
write_new(VALUES)
if n_new > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', n_new, 'f', ARGV[13])
  for _, a in ipairs(plan.an) do count_anomaly(a) end
end

-- Old rows were seen before; those still without a flag get theirs now, once.
local scored, flagged = n_new, {}
local function flag_old(o)
  -- o: day, bucket, id hash, the ARGV of its flag record, flag JSON, anomaly (or false)
  local key = ix(o[1], o[2])
  if redis.call('HGET', key, o[3]) == '' then
    redis.call('HSET', key, o[3], ARGV[o[4]])
    redis.call('HINCRBY', waiting, o[1], -1)
    scored = scored + 1
    flagged[#flagged + 1] = o[5]
    if o[6] then count_anomaly(o[6]) end
  end
end
for _, o in ipairs(plan.old) do flag_old(o) end
for _, o in ipairs(resident) do flag_old(o) end
if #flagged > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', #flagged,
             'f', '[' .. table.concat(flagged, ',') .. ']')
end
if scored > 0 then
  redis.call('HINCRBY', stats, 'scored', scored)
  redis.call('INCRBY', scored_this_minute, scored)
  redis.call('EXPIRE', scored_this_minute, 300)
end
evict()
return {n_new, scored, late}
