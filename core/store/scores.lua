-- One shard's score events (store.batch.apply_scores). ARGV: 1 the shard's key prefix,
-- 2 retention days, 3 the wall clock's day, 4 a JSON array of events [interaction bucket,
-- interaction id hash, event bucket, event id hash, event day, stored value, ts, id,
-- score, use case].
-- An event counts once. Of an interaction's events the newest (ts, then id) stands; if the
-- interaction was seen, its aggregates move from the old standing score and use case to
-- the new, where it has none of its own (as ScoreEvent.fill). If it was not, the event
-- waits as an orphan for its row (store.batch.read_joins).
-- KEYS, as _SCORES_LAYOUT names them:
local null = cjson.null
local function value(x) if x == null then return nil end return x end
local retention, today = tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = tonumber(redis.call('GET', clock_key) or 0)

-- The days the shard holds, newest first: an interaction's row is looked for in each.
local held, holds = {}, {}
for _, d in ipairs(redis.call('SMEMBERS', days_key)) do
  held[#held + 1] = tonumber(d)
  holds[tonumber(d)] = true
end
local function hold(d)
  if not holds[d] then
    holds[d] = true
    held[#held + 1] = d
    redis.call('SADD', days_key, d)
  end
  table.sort(held, function(a, b) return a > b end)
end
table.sort(held, function(a, b) return a > b end)

local function move(key, who, old_score, new_score, old_uc, new_uc)
  if who == nil or who == '' then return end
  local delta = {}
  if old_score ~= new_score then
    delta[MEASURE.score_sum] = (new_score or 0) - (old_score or 0)
    delta[MEASURE.score_n] = (new_score and 1 or 0) - (old_score and 1 or 0)
  end
  if old_uc ~= new_uc then
    local counts = {}
    if old_uc ~= nil then counts[old_uc] = -1 end
    if new_uc ~= nil then counts[new_uc] = (counts[new_uc] or 0) + 1 end
    delta[MEASURE.uc] = counts
  end
  if next(delta) ~= nil then add_aggregate(key, who, delta) end
end

local function newer(ts, id, before_ts, before_id)
  return before_id == nil or ts > before_ts or (ts == before_ts and id > before_id)
end

local batch = cjson.decode(ARGV[4])
local applied, late = 0, 0
for _, e in ipairs(batch) do
  local tb, tf, eb, ef, eday, stored = e[1], e[2], e[3], e[4], e[5], e[6]
  local ts, id, score, uc = value(e[7]) or 0, e[8], value(e[9]), value(e[10])
  if eday ~= 'undated' and clock > 0 and eday <= clock - retention then
    late = late + redis.call('SADD', late_set(eb), 'e' .. ef)  -- its day has gone
  elseif redis.call('SADD', events(eday, eb), ef) == 1 then
    applied = applied + 1
    if eday ~= 'undated' then hold(eday) end  -- its mark leaves with its day
    local found = nil
    for _, d in ipairs(held) do
      if redis.call('HEXISTS', ix(d, tb), tf) == 1 then found = d break end
    end
    if found then
      local record = redis.call('HGET', join(found, tb), tf)
      -- A row with its own score and use case has no record: no event can change it.
      local row = record and cjson.decode(record) or {null, null, 0, '', null, null, null, null, 0}
      local before_ts, before_id = value(row[5]), value(row[6])
      if newer(ts, id, before_ts, before_id) then
        local session, wallet = value(row[1]), value(row[2])
        local own_score, own_uc = value(row[3]), value(row[4])
        local old_score, old_uc = own_score, own_uc
        if before_id ~= nil then
          if old_score == nil then old_score = value(row[7]) end
          if old_uc == nil then old_uc = value(row[8]) end
        end
        local new_score, new_uc = own_score, own_uc
        if new_score == nil then new_score = score end
        if new_uc == nil then new_uc = uc end
        move(session_agg(found, row[9]), session, old_score, new_score, old_uc, new_uc)
        move(wallet_agg, wallet, old_score, new_score, old_uc, new_uc)
        row[5], row[6], row[7], row[8] = ts, id, e[9], e[10]
        redis.call('HSET', join(found, tb), tf, cjson.encode(row))
        if before_id == nil then redis.call('HINCRBY', stats, 'score_events_joined', 1) end
      end
    else
      local before, at = nil, nil
      for _, d in ipairs(held) do
        local v = redis.call('HGET', orphans(d, tb), tf)
        if v then before, at = cjson.decode(v), d break end
      end
      if before == nil or newer(ts, id, before[1], before[2]) then
        -- It waits under the shard's clock (today's day before any row), and leaves with it.
        local here = clock > 0 and clock or today
        if at ~= nil and at ~= here then redis.call('HDEL', orphans(at, tb), tf) end
        redis.call('HSET', orphans(here, tb), tf, stored)
        hold(here)
        if before == nil then redis.call('HINCRBY', stats, 'orphans', 1) end
        redis.call('INCR', orphan_version)
      end
    end
  end
end
if applied > 0 then redis.call('HINCRBY', stats, 'score_events', applied) end
if late > 0 then redis.call('HINCRBY', stats, 'late_events', late) end
local repeated = #batch - applied - late
if repeated > 0 then redis.call('HINCRBY', stats, 'score_events_repeated', repeated) end
return applied
