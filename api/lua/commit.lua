-- The atomic decision commit (docs/architecture.md, the hot path, step 7). All cap, conflict and idempotency
-- arithmetic lives here and only here, so the check and the reservation cannot race.
--
-- KEYS[1] ledger zset, KEYS[2] idempotency record, KEYS[3] prefs hash, KEYS[4] the prefix of
-- this user's idempotency record keys (same hash tag): a displaced message's record is
-- KEYS[4] .. its message id (preemption)
-- ARGV[1] plan (MessagePack, built by api/plan.py), ARGV[2] context JSON (stored verbatim),
-- ARGV[3] prefix of this message's ledger members, ARGV[3 + i] member of candidate i,
-- ARGV[3 + #cands + i] (optional) JSON annotation of candidate i, copied as "s" into the
-- outcome of the candidate reserved (score, score now, propensity: api/scoring.py)
--
-- Modes: 'earliest' reserves the earliest free instant over all candidates; 'first' the
-- first candidate with a free instant; 'ranked' the first scored slot (cand.s == 1, in
-- the order given: best expected value first) that is free, else the earliest free
-- instant of the remaining (window) candidates.
--
-- Returns {'new', outcome_json, displaced record, its member, ...} | {'dup', record}
--       | {'dup_ledger', member, score} | {'stale', current_rev}
--
-- Members are MessagePack arrays [mid, channel, category, campaign, tags, offer_id,
-- offer_group, priority] (api/plan.py: ledger_member); members written before priorities
-- have 7 elements and the default priority plan.dp. The array header (first byte) differs
-- between the two layouts, so a message's members are matched from the second byte on.
--
-- Blocks are half-open integer intervals [s, e) of epoch milliseconds. A rolling cap of
-- N per W is violated by a new send at t iff some N existing matching sends plus t fit in
-- a span shorter than W; for N consecutive entries e_a..e_{a+N-1} (span < W) that is
-- exactly t in [e_{a+N-1} - W + 1, e_a + W). So "the instant the window frees" is e_a + W.

local plan = cmsgpack.unpack(ARGV[1])
local now = plan.now

local function fmt(x) return string.format('%.0f', x) end

-- 1. idempotency: a record means this message was decided already
local rec = redis.call('GET', KEYS[2])
if rec then return {'dup', rec} end

-- 2. preferences changed since the read (opt-out, conversion...): caller retries
local rev = redis.call('HGET', KEYS[3], 'rev') or '0'
if rev ~= plan.rev then return {'stale', rev} end

-- 3. the ledger inside the longest window, past and future reservations alike
local raw = redis.call('ZRANGEBYSCORE', KEYS[1], fmt(plan.lo), '+inf', 'WITHSCORES')
local entries = {}
local mid_body = string.sub(ARGV[3], 2)
for i = 1, #raw, 2 do
  local member = raw[i]
  if string.sub(member, 2, #mid_body + 1) == mid_body then
    -- its record expired but the reservation still counts: same message, counted once
    return {'dup_ledger', member, raw[i + 1]}
  end
  local d = cmsgpack.unpack(member)
  entries[#entries + 1] = {t = tonumber(raw[i + 1]), ch = d[2], cat = d[3], camp = d[4],
                           tags = d[5], oid = d[6], og = d[7], pr = d[8] or plan.dp,
                           mid = d[1], member = member}
end

local function in_list(list, v)
  if list == nil or #list == 0 then return true end
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end
local function excluded(list, v)
  if list == nil then return false end
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end
local function tags_match(list, tags)
  if list == nil or #list == 0 then return true end
  for _, t in ipairs(tags) do
    for _, x in ipairs(list) do if x == t then return true end end
  end
  return false
end
local function matches(cap, ch, cat, camp, tags)
  return in_list(cap.ch, ch) and in_list(cap.cat, cat) and not excluded(cap.xcat, cat)
    and in_list(cap.camp, camp) and tags_match(cap.tag, tags)
end

-- blocked intervals of one cap for a message on channel ch
local function cap_blocks(cap)
  local times = {}
  for _, e in ipairs(entries) do
    if not e.gone and matches(cap, e.ch, e.cat, e.camp, e.tags) then
      times[#times + 1] = e.t
    end
  end
  local out = {}
  local n = cap.n
  if cap.w > 0 then
    for a = 1, #times - n + 1 do
      local first, last = times[a], times[a + n - 1]
      if last - first < cap.w then out[#out + 1] = {last - cap.w + 1, first + cap.w} end
    end
  else
    local b = cap.b
    local counts = {}
    local k = 1
    for _, t in ipairs(times) do
      while k < #b and b[k + 1] <= t do k = k + 1 end
      if k < #b and b[k] <= t then counts[k] = (counts[k] or 0) + 1 end
    end
    for i = 1, #b - 1 do
      if (counts[i] or 0) >= n then out[#out + 1] = {b[i], b[i + 1]} end
    end
  end
  return out
end

local msg = plan.msg
local cw = plan.cw

-- 4. a duplicate offer suppresses the whole message, whatever the channel
if cw > 0 and msg.og ~= '' then
  for _, e in ipairs(entries) do
    if e.og == msg.og and e.oid == msg.oid and e.t > now - cw then
      local out = '{"d":"suppress","ch":null,"t":null,"r":[[' .. cjson.encode('duplicate_offer')
        .. ',' .. cjson.encode('conflict_group:' .. msg.og) .. ',' .. fmt(e.t + cw) .. ','
        .. cjson.encode(e.ch) .. ']]}'
      if plan.dry == 0 then
        redis.call('SET', KEYS[2], ARGV[2] .. '\n' .. out, 'PX', fmt(plan.ttl))
      end
      return {'new', out}
    end
  end
end

-- sort + merge
local function normalize(ivs)
  table.sort(ivs, function(x, y) return x[1] < y[1] end)
  local out = {}
  for _, iv in ipairs(ivs) do
    if iv[2] > iv[1] then
      local last = out[#out]
      if last and iv[1] <= last[2] then
        if iv[2] > last[2] then last[2] = iv[2] end
      else
        out[#out + 1] = {iv[1], iv[2]}
      end
    end
  end
  return out
end

-- earliest instant in [a, b) outside every block, or nil
local function first_free(rules, a, b)
  local all = {}
  for _, r in ipairs(rules) do
    for _, iv in ipairs(r.iv) do all[#all + 1] = iv end
  end
  local x = a
  for _, iv in ipairs(normalize(all)) do
    if iv[1] > x then break end
    if iv[2] > x then x = iv[2] end
  end
  if x < b then return x end
  return nil
end

-- why [a, target) is blocked: walk from a, each step naming the rules that cover it
local function chain(rules, a, target, ch, out, seen)
  local x = a
  while x < target do
    local nx = nil
    for _, r in ipairs(rules) do
      for _, iv in ipairs(r.iv) do
        if iv[1] <= x and x < iv[2] then
          local key = r.c .. '\0' .. r.r .. '\0' .. ch
          local idx = seen[key]
          if idx == nil then
            out[#out + 1] = {r.c, r.r, iv[2], ch}
            seen[key] = #out
          elseif out[idx][3] < iv[2] then
            out[idx][3] = iv[2]
          end
          if nx == nil or iv[2] > nx then nx = iv[2] end
          break
        end
      end
    end
    if nx == nil then break end
    x = nx
  end
end

-- 5. every candidate's rules: Python's time blocks + caps + conflicting offers.
-- A cap's blocks depend on the ledger only, not on the candidate: computed once per call.
local cap_cache = {}
local conflict_rule = nil
if cw > 0 and msg.og ~= '' then
  local iv = {}
  for _, e in ipairs(entries) do
    if e.og == msg.og and e.oid ~= msg.oid then iv[#iv + 1] = {e.t - cw + 1, e.t + cw} end
  end
  if #iv > 0 then
    conflict_rule = {c = 'conflicting_offer', r = 'conflict_group:' .. msg.og, iv = normalize(iv)}
  end
end
local function time_rules(cand)
  local rules = {}
  for _, index in ipairs(cand.pb) do rules[#rules + 1] = plan.blocks[index + 1] end
  if conflict_rule then rules[#rules + 1] = conflict_rule end
  return rules
end

local function evaluate()
  local evaluated, chosen = {}, nil
  for i, cand in ipairs(plan.cands) do
    local rules = time_rules(cand)
    for ci, cap in ipairs(plan.caps) do
      if matches(cap, cand.ch, msg.cat, msg.camp, msg.tags) then
        local rule = cap_cache[ci]
        if rule == nil then
          rule = {c = cap.code, r = cap.id, iv = normalize(cap_blocks(cap))}
          cap_cache[ci] = rule
        end
        if #rule.iv > 0 then rules[#rules + 1] = rule end
      end
    end
    local t = first_free(rules, cand.a, cand.b)
    evaluated[i] = {cand = cand, rules = rules, t = t}
    if t ~= nil then
      if plan.mode == 'first' then chosen = i break end
      if plan.mode == 'ranked' and cand.s == 1 then chosen = i break end
      if chosen == nil or t < evaluated[chosen].t then chosen = i end
    end
  end
  return evaluated, chosen
end
local evaluated, chosen = evaluate()

-- 5b. preemption (policy.preemption): when caps keep the message from its best instant T
-- (the one its time rules and conflicts allow), displace up to plan.pk future reservations
-- of strictly lower priority counted by a cap blocking T (lowest priority first, then the
-- latest), if that frees T; otherwise displace nothing. Exempt categories are never
-- displaced. Each displaced message is suppressed with reason 'preempted' (step 7).
local displaced = {}
if plan.pk > 0 and #plan.cands > 0 then
  local ti, target = nil, nil
  for i, cand in ipairs(plan.cands) do
    local t = first_free(time_rules(cand), cand.a, cand.b)
    if t ~= nil then
      if plan.mode ~= 'earliest' then ti, target = i, t break end
      if target == nil or t < target then ti, target = i, t end
    end
  end
  local needed = target ~= nil and (chosen == nil or evaluated[chosen].t > target
                                    or (plan.mode ~= 'earliest' and chosen ~= ti))
  if needed then
    local cand = plan.cands[ti]
    local function blocking()
      local hit = {}
      for _, cap in ipairs(plan.caps) do
        if matches(cap, cand.ch, msg.cat, msg.camp, msg.tags) then
          for _, iv in ipairs(cap_blocks(cap)) do
            if iv[1] <= target and target < iv[2] then hit[#hit + 1] = cap break end
          end
        end
      end
      return hit
    end
    -- an entry counts toward the cap's block at T only inside its window (or bucket)
    local function near(cap, t)
      if cap.w > 0 then return math.abs(t - target) < cap.w end
      local b = cap.b
      for i = 1, #b - 1 do
        if b[i] <= target and target < b[i + 1] then return b[i] <= t and t < b[i + 1] end
      end
      return false
    end
    local hit = blocking()
    while #hit > 0 and #displaced < plan.pk do
      local victim = nil
      for _, e in ipairs(entries) do
        if not e.gone and e.t > now and e.pr < msg.pr and not excluded(plan.xc, e.cat) then
          for _, cap in ipairs(hit) do
            if matches(cap, e.ch, e.cat, e.camp, e.tags) and near(cap, e.t) then
              if victim == nil or e.pr < victim.pr or (e.pr == victim.pr and e.t > victim.t) then
                victim = e
                e.by = cap.id
              end
              break
            end
          end
        end
      end
      if victim == nil then break end
      victim.gone = true
      displaced[#displaced + 1] = victim
      hit = blocking()
    end
    if #hit > 0 then  -- T stays blocked: displace nobody
      for _, e in ipairs(displaced) do e.gone = nil end
      displaced = {}
    elseif #displaced > 0 then
      cap_cache = {}
      evaluated, chosen = evaluate()
    end
  end
end

-- 6. reasons and the outcome
local reasons, seen = {}, {}
local decision, out_ch, out_t
if chosen then
  local ev = evaluated[chosen]
  local t = ev.t
  out_ch, out_t = ev.cand.ch, t
  decision = (t <= now) and 'send' or 'defer'
  -- spread (send_time.spread_minutes): a deferral moves to t + plan.sp, or to the last
  -- instant of the free gap that starts at t when the gap ends sooner. Every instant of
  -- that gap is allowed by every rule of the candidate (the blocks are exact), so the
  -- spread is never earlier than allowed and caps stay exact.
  if plan.sp > 0 and t > now then
    local gap_end = ev.cand.b
    for _, r in ipairs(ev.rules) do
      for _, iv in ipairs(r.iv) do
        if iv[1] > t and iv[1] < gap_end then gap_end = iv[1] end
      end
    end
    out_t = math.min(t + plan.sp, gap_end - 1)
  end
  -- channels preferred over the chosen one: why they lost, at the instant it was chosen
  for i = 1, chosen - 1 do
    local other = evaluated[i]
    if other.t == nil or other.t > t then
      chain(other.rules, other.cand.a, math.min(t + 1, other.cand.b), other.cand.ch,
            reasons, seen)
    end
  end
  -- the chain stops at t, where the last rule stops blocking: reasons keep true instants
  chain(ev.rules, ev.cand.a, t, out_ch, reasons, seen)
  local why = ev.cand.why
  if why ~= nil and #why == 2 and out_t > now then
    reasons[#reasons + 1] = {why[1], why[2], nil, out_ch}
  end
else
  decision = 'suppress'
  for _, ev in ipairs(evaluated) do
    chain(ev.rules, ev.cand.a, ev.cand.b, ev.cand.ch, reasons, seen)
  end
  if #plan.cands > 0 then
    reasons[#reasons + 1] = {plan.endr.c, plan.endr.r, nil, nil}
  end
end

local parts = {}
for i, r in ipairs(reasons) do
  parts[i] = '[' .. cjson.encode(r[1]) .. ',' .. cjson.encode(r[2]) .. ','
    .. (r[3] and fmt(r[3]) or 'null') .. ',' .. (r[4] and cjson.encode(r[4]) or 'null') .. ']'
end
local out = '{"d":"' .. decision .. '","ch":' .. (out_ch and cjson.encode(out_ch) or 'null')
  .. ',"t":' .. (out_t and fmt(out_t) or 'null') .. ',"r":[' .. table.concat(parts, ',') .. ']'
local note = chosen and ARGV[3 + #plan.cands + chosen]
if note then out = out .. ',"s":' .. note end

-- the displaced messages' new outcome, and their decision ids (from their records' context)
local moved = {}
if #displaced > 0 then
  local ids = {}
  for _, e in ipairs(displaced) do
    local key = KEYS[4] .. e.mid
    local old = redis.call('GET', key)
    local ctx = old and string.match(old, '^[^\n]*')
    local did = ctx and cjson.decode(ctx).did
    if did then ids[#ids + 1] = cjson.encode(did) end
    local dout = '{"d":"suppress","ch":null,"t":null,"r":[[' .. cjson.encode('preempted')
      .. ',' .. cjson.encode(e.by) .. ',null,' .. cjson.encode(e.ch) .. ']],"p":1}'
    moved[#moved + 1] = {e = e, key = key, rec = ctx and (ctx .. '\n' .. dout)}
  end
  out = out .. ',"x":[' .. table.concat(ids, ',') .. ']'
end
out = out .. '}'

-- 7. write: the reservation, the trim, the TTLs, the idempotency record
if plan.dry == 0 then
  local ttl = plan.ttl
  if out_t then
    redis.call('ZADD', KEYS[1], fmt(out_t), ARGV[3 + chosen])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(now - plan.keep))
    local want = out_t - now + plan.keep
    if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], fmt(want)) end
    ttl = math.max(ttl, out_t - now + plan.ttl)
  end
  redis.call('SET', KEYS[2], ARGV[2] .. '\n' .. out, 'PX', fmt(ttl))
  for _, m in ipairs(moved) do
    redis.call('ZREM', KEYS[1], m.e.member)
    if m.rec then redis.call('SET', m.key, m.rec, 'KEEPTTL') end
  end
end
local reply = {'new', out}
for _, m in ipairs(moved) do
  if m.rec then
    reply[#reply + 1] = m.rec
    reply[#reply + 1] = m.e.member
  end
end
return reply
