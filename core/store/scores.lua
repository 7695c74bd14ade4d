-- ARGV: a JSON array of score events [id, interaction id, SCORES value, ts, score, use case].
-- An event counts once (SADD). Of an interaction's events the newest (ts, then id) stands;
-- if the interaction was seen, its aggregates move from the old standing score and use
-- case to the new, where it has none of its own (as ScoreEvent.fill).
-- KEYS, as _SCORES_LAYOUT names them:
local null = cjson.null
local function value(x) if x == null then return nil end return x end

local function move(sum, n, uc, who, old_score, new_score, old_uc, new_uc)
  if who == nil or who == '' then return end
  if old_score ~= new_score then
    if old_score ~= nil then
      redis.call('HINCRBYFLOAT', sum, who, -old_score)
      redis.call('HINCRBY', n, who, -1)
    end
    if new_score ~= nil then
      redis.call('HINCRBYFLOAT', sum, who, new_score)
      redis.call('HINCRBY', n, who, 1)
    end
  end
  if old_uc ~= new_uc then
    if old_uc ~= nil and redis.call('HINCRBY', uc, who .. '\t' .. old_uc, -1) <= 0 then
      redis.call('HDEL', uc, who .. '\t' .. old_uc)
    end
    if new_uc ~= nil then redis.call('HINCRBY', uc, who .. '\t' .. new_uc, 1) end
  end
end

local applied = 0
for _, e in ipairs(cjson.decode(ARGV[1])) do
  local id, target, stored = e[1], e[2], e[3]
  local ts, score, uc = value(e[4]) or 0, value(e[5]), value(e[6])
  if redis.call('SADD', events, id) == 1 then
    applied = applied + 1
    local current = redis.call('HGET', scores, target)
    local before = nil
    if current then before = cjson.decode(current) end
    local newer = before == nil or ts > before[1] or (ts == before[1] and id > before[2])
    if newer then
      redis.call('HSET', scores, target, stored)
      local record = redis.call('HGET', join_rows, target)
      if record then
        local row = cjson.decode(record)
        local session, wallet = value(row[1]), value(row[2])
        local own_score, own_uc = value(row[3]), value(row[4])
        local old_score, old_uc = own_score, own_uc
        if before ~= nil then
          if old_score == nil then old_score = value(before[3]) end
          if old_uc == nil then old_uc = value(before[4]) end
        end
        local new_score, new_uc = own_score, own_uc
        if new_score == nil then new_score = score end
        if new_uc == nil then new_uc = uc end
        move(s_sum, s_n, s_uc, session, old_score, new_score, old_uc, new_uc)
        move(w_sum, w_n, w_uc, wallet, old_score, new_score, old_uc, new_uc)
      end
      if before == nil and (record or redis.call('SISMEMBER', seen, target) == 1) then
        redis.call('HINCRBY', stats, 'score_events_joined', 1)
      end
    end
  end
end
if applied > 0 then redis.call('HINCRBY', stats, 'score_events', applied) end
local repeated = #cjson.decode(ARGV[1]) - applied
if repeated > 0 then redis.call('HINCRBY', stats, 'score_events_repeated', repeated) end
return applied
