-- The atomic decision commit (docs/architecture.md, the hot path, step 7). All cap, conflict and idempotency
-- arithmetic lives here and only here, so the check and the reservation cannot race.
--
-- KEYS[1] ledger zset, KEYS[2] idempotency record, KEYS[3] prefs hash, KEYS[4] the prefix of
-- this user's idempotency record keys, KEYS[5] the prefix of their re-decision plans (same
-- hash tag; api/keys.py): a displaced message's record is KEYS[4] .. its message id, the
-- compact plan a deferral keeps while it can be displaced is KEYS[5] .. its message id
-- ARGV[1] plan (MessagePack, built by api/plan.py), ARGV[2] context JSON (stored verbatim),
-- ARGV[3] prefix of this message's ledger members, ARGV[3 + i] member of candidate i,
-- ARGV[3 + #cands + i] (optional) JSON annotation of candidate i, copied as "s" into the
-- outcome of the candidate reserved (score, score now, propensity: api/scoring.py)
-- KEYS[6] (optional) conversions hash; when given, the last ARGV are the state check
-- (api/userstate.py: CommitCheck): the preferences hash as read (field, value, ...), the
-- campaign ('' none), its converted-at as read ('' none), then the number of fields
--
-- Modes: 'earliest' reserves the earliest free instant over all candidates; 'first' the
-- first candidate with a free instant; 'ranked' the first scored slot (cand.s == 1, in
-- the order given: best expected value first) that is free, else the earliest free
-- instant of the remaining (window) candidates.
--
-- Returns {'new', outcome_json, displaced record, its member, its old instant, ...}
--       | {'dup', record} | {'dup_ledger', member, score} | {'stale', current_rev}
--       | {'moved', outcome_json}: the outcome lands outside pacing's expectation (plan.pe,
--         step 6c), nothing written
--       | {'repace', outcome_json, message id, channel, instant, ...}: displaced messages
--         moved to paced instants pacing holds no token for (step 6c), nothing written
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
-- channel pacing's expectation (api/plan.py: PaceExpect), nil when nothing is paced
local pe = plan.pe
local function is_paced(ch)
  if pe == nil then return false end
  for _, c in ipairs(pe.pc) do if c == ch then return true end end
  return false
end

local function fmt(x) return string.format('%.0f', x) end

-- 1. idempotency: a record means this message was decided already
local rec = redis.call('GET', KEYS[2])
if rec then return {'dup', rec} end

-- 2. preferences changed since the read (opt-out, conversion...): caller retries
local rev = redis.call('HGET', KEYS[3], 'rev') or '0'
if rev ~= plan.rev then return {'stale', rev} end

-- 2b. the state the plan was made from, when the caller sends it (its read may be seconds
-- old: api/statecache.py): the whole preferences hash, field by field, and the campaign's
-- conversion. Anything else: stale, the caller re-reads.
local nargv = #ARGV
if KEYS[6] then
  local n = tonumber(ARGV[nargv])
  nargv = nargv - 3 - 2 * n
  local flat = redis.call('HGETALL', KEYS[3])
  if #flat ~= 2 * n then return {'stale', rev} end
  local want = {}
  for i = nargv + 1, nargv + 2 * n, 2 do want[ARGV[i]] = ARGV[i + 1] end
  for i = 1, #flat, 2 do
    if want[flat[i]] ~= flat[i + 1] then return {'stale', rev} end
  end
  local camp = ARGV[#ARGV - 2]
  if camp ~= '' and (redis.call('HGET', KEYS[6], camp) or '') ~= ARGV[#ARGV - 1] then
    return {'stale', rev}
  end
end

-- 3. the ledger inside the longest window, past and future reservations alike
-- Read from -inf: members older than plan.lo are skipped (they count for nothing), but
-- seeing them tells step 7 whether the trim has anything to remove, so a commit whose
-- ledger holds nothing stale saves that ZREMRANGEBYSCORE.
local raw = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'WITHSCORES')
local entries = {}
local mid_body = string.sub(ARGV[3], 2)
local lo, cut, stale = plan.lo, now - plan.keep, false
for i = 1, #raw, 2 do
  local member, t = raw[i], tonumber(raw[i + 1])
  if t < lo then
    if t < cut then stale = true end
  else
    if string.sub(member, 2, #mid_body + 1) == mid_body then
      -- its record expired but the reservation still counts: same message, counted once
      return {'dup_ledger', member, raw[i + 1]}
    end
    local d = cmsgpack.unpack(member)
    entries[#entries + 1] = {t = t, ch = d[2], cat = d[3], camp = d[4],
                             tags = d[5], oid = d[6], og = d[7], pr = d[8] or plan.dp,
                             mid = d[1], member = member}
  end
end

-- a reservation made in this call (preemption): entries stay in time order, which the cap
-- arithmetic relies on
local function add_entry(e)
  local at = #entries + 1
  while at > 1 and entries[at - 1].t > e.t do at = at - 1 end
  table.insert(entries, at, e)
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

-- earliest instant in [a, b) outside every block, or nil. x only ever jumps to the end of
-- a block covering it, so [a, x) stays covered, and the sweep ends when nothing covers x:
-- the same instant as merging all blocks first, without building and sorting that list
-- (most calls stop after one or two sweeps).
local function first_free(rules, a, b)
  local x = a
  local moved = true
  while moved and x < b do
    moved = false
    for _, r in ipairs(rules) do
      for _, iv in ipairs(r.iv) do
        if iv[1] <= x and x < iv[2] then x = iv[2] moved = true end
      end
    end
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
local function conflict_for(m, cwin)
  if cwin <= 0 or m.og == '' then return nil end
  local iv = {}
  for _, e in ipairs(entries) do
    if not e.gone and e.og == m.og and e.oid ~= m.oid then
      iv[#iv + 1] = {e.t - cwin + 1, e.t + cwin}
    end
  end
  if #iv == 0 then return nil end
  return {c = 'conflicting_offer', r = 'conflict_group:' .. m.og, iv = normalize(iv)}
end
local conflict_rule = conflict_for(msg, cw)

-- spread (send_time.spread_minutes): a deferral at t moves to t + sp, or to the last
-- instant of the free gap that starts at t when the gap ends sooner. Every instant of that
-- gap is allowed by every rule of the candidate (the blocks are exact), so the spread is
-- never earlier than allowed and caps stay exact.
-- A deferral that channel pacing ends (api/pacing.py) is not spread: it already is the
-- first instant with send capacity, and pacing itself spaces such messages.
local function spread(t, b, rules, sp)
  if sp <= 0 or t <= now then return t end
  local gap_end = b
  for _, r in ipairs(rules) do
    for _, iv in ipairs(r.iv) do
      if r.c == 'channel_pacing' and iv[2] == t then return t end
      if iv[1] > t and iv[1] < gap_end then gap_end = iv[1] end
    end
  end
  return math.min(t + sp, gap_end - 1)
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
-- displaced. Each displaced message is re-decided in step 6b.
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
    else
      -- keep only the displacements T needs: put each back (latest choice first) if T
      -- stays free without it
      for i = #displaced, 1, -1 do
        displaced[i].gone = nil
        if #blocking() > 0 then displaced[i].gone = true else table.remove(displaced, i) end
      end
    end
    if #displaced > 0 then
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
  out_t = spread(t, ev.cand.b, ev.rules, plan.sp)
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

-- the outcome JSON (api/render.py: Outcome); p = 1 marks a preempted suppression
local function outcome(d, ch, t, rs, p)
  local parts = {}
  for i, r in ipairs(rs) do
    parts[i] = '[' .. cjson.encode(r[1]) .. ',' .. cjson.encode(r[2]) .. ','
      .. (r[3] and fmt(r[3]) or 'null') .. ',' .. (r[4] and cjson.encode(r[4]) or 'null') .. ']'
  end
  return '{"d":"' .. d .. '","ch":' .. (ch and cjson.encode(ch) or 'null')
    .. ',"t":' .. (t and fmt(t) or 'null') .. ',"r":[' .. table.concat(parts, ',') .. ']'
    .. (p and ',"p":1' or '')
end
local out = outcome(decision, out_ch, out_t, reasons, false)
local note = chosen and 3 + #plan.cands + chosen <= nargv and ARGV[3 + #plan.cands + chosen]
if note then out = out .. ',"s":' .. note end

-- 6b. re-decide each displaced message inside this call, against the ledger as it is now
-- (this message's reservation included, the displaced ones gone): the earliest instant at
-- or after its old one that its own stored plan (KEYS[5] .. id: its window candidates,
-- time blocks, caps compiled for its priority, conflict window, spread) allows, spread
-- like any deferral; none before its horizon (or no stored plan): suppressed. Either way
-- the first reason is 'preempted'. No cascade: a re-decided message displaces nobody.
local function redecide(v)
  local raw_plan = redis.call('GET', KEYS[5] .. v.mid)
  local first = {'preempted', v.by, nil, v.ch}
  if not raw_plan then return {d = 'suppress', r = {first}} end
  local R = cmsgpack.unpack(raw_plan)
  local conflict = conflict_for(R.m, R.w)
  -- the full pacing spans the caller found for this message's new instant (step 6c)
  local paced_blocks = pe ~= nil and pe.dx ~= nil and pe.dx[v.mid] and pe.dx[v.mid].bl or {}
  local best, bt, brules
  for i, cand in ipairs(R.c) do
    local rules = {}
    for _, index in ipairs(cand.pb) do rules[#rules + 1] = R.b[index + 1] end
    local pb = paced_blocks[cand.ch]
    if pb ~= nil then rules[#rules + 1] = {c = pb.c, r = pb.r, iv = normalize(pb.iv)} end
    for _, cap in ipairs(R.k) do
      if matches(cap, cand.ch, R.m.cat, R.m.camp, R.m.tags) then
        local iv = normalize(cap_blocks(cap))
        if #iv > 0 then rules[#rules + 1] = {c = cap.code, r = cap.id, iv = iv} end
      end
    end
    if conflict then rules[#rules + 1] = conflict end
    local t = first_free(rules, math.max(cand.a, v.t), cand.b)
    if t ~= nil and (bt == nil or t < bt) then best, bt, brules = i, t, rules end
  end
  if best == nil then
    return {d = 'suppress', r = {first, {R.e.c, R.e.r, nil, nil}}}
  end
  local cand = R.c[best]
  local rs, seen2 = {first}, {}
  chain(brules, v.t, bt, cand.ch, rs, seen2)
  return {d = 'defer', ch = cand.ch, t = spread(bt, cand.b, brules, R.s), r = rs,
          member = R.mem[best], plan = raw_plan}
end

local moved = {}
if #displaced > 0 then
  -- from here on this message's reservation counts for the re-decisions
  if out_t and plan.dry == 0 then
    add_entry({t = out_t, ch = out_ch, cat = msg.cat, camp = msg.camp, tags = msg.tags,
               oid = msg.oid, og = msg.og, pr = msg.pr})
  end
  local ids = {}
  for _, e in ipairs(displaced) do
    local key = KEYS[4] .. e.mid
    local old = redis.call('GET', key)
    local ctx = old and string.match(old, '^[^\n]*')
    local did = ctx and cjson.decode(ctx).did
    if did then ids[#ids + 1] = cjson.encode(did) end
    local m = {e = e, key = key}
    if plan.dry == 0 then
      local r = redecide(e)
      if r.t then  -- moved: counted for the next re-decision
        local d = cmsgpack.unpack(r.member)
        add_entry({t = r.t, ch = d[2], cat = d[3], camp = d[4], tags = d[5], oid = d[6],
                   og = d[7], pr = d[8] or plan.dp})
      end
      m.r = r
      m.rec = ctx and (ctx .. '\n' .. outcome(r.d, r.ch, r.t, r.r, r.t == nil) .. '}')
    end
    moved[#moved + 1] = m
  end
  out = out .. ',"x":[' .. table.concat(ids, ',') .. ']'
end
out = out .. '}'

-- 6c. channel pacing's expectation (plan.pe, api/pacing.py): a send or deferral on a paced
-- channel is written only inside the span of the token pacing holds for it. The ledger can
-- change between the dry commit pacing planned with and this one (a concurrent decision for
-- the same recipient); then nothing is written and the caller gets where the message would
-- land, to reserve there and commit again. A displaced message moved to a paced channel
-- likewise needs a token held for its new instant (pe.dx[its id]); the ones without are
-- returned ('repace', with id, channel, instant each) and nothing is written. So no paced
-- send is ever written uncounted.
if plan.dry == 0 and pe ~= nil then
  if out_t and is_paced(out_ch) and (out_ch ~= pe.ch or out_t < pe.lo or out_t >= pe.hi) then
    return {'moved', out}
  end
  local repace = {'repace', out}
  for _, m in ipairs(moved) do
    local r = m.r
    if r.t and is_paced(r.ch) then
      local dx = pe.dx ~= nil and pe.dx[m.e.mid] or nil
      if dx == nil or dx.ch ~= r.ch or r.t < dx.lo or r.t >= dx.hi then
        repace[#repace + 1] = m.e.mid
        repace[#repace + 1] = r.ch
        repace[#repace + 1] = fmt(r.t)
      end
    end
  end
  if #repace > 2 then return repace end
end

-- 7. write: the reservation, the trim, the TTLs, the idempotency record
if plan.dry == 0 then
  local ttl = plan.ttl
  if out_t then
    redis.call('ZADD', KEYS[1], fmt(out_t), ARGV[3 + chosen])
    if stale then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(cut)) end
    local want = out_t - now + plan.keep
    if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], fmt(want)) end
    ttl = math.max(ttl, out_t - now + plan.ttl)
  end
  redis.call('SET', KEYS[2], ARGV[2] .. '\n' .. out, 'PX', fmt(ttl))
  -- a deferral that preemption may displace keeps its compact plan until it is due
  if plan.pk > 0 and out_t and out_t > now then
    local c, mem, last = {}, {}, out_t
    for i, cand in ipairs(plan.cands) do
      if cand.s ~= 1 then
        c[#c + 1] = {ch = cand.ch, a = cand.a, b = cand.b, pb = cand.pb}
        mem[#mem + 1] = ARGV[3 + i]
        if cand.b > last then last = cand.b end
      end
    end
    -- only the intervals its re-decision can meet: after this reservation, before the end
    local blocks = {}
    for i, blk in ipairs(plan.blocks) do
      local iv = {}
      for _, x in ipairs(blk.iv) do
        if x[2] > out_t and x[1] < last then iv[#iv + 1] = x end
      end
      blocks[i] = {c = blk.c, r = blk.r, iv = iv}
    end
    -- caps without their empty scope lists (nil matches everything, like an empty list)
    local caps = {}
    for i, cap in ipairs(plan.caps) do
      local k = {}
      for name, value in pairs(cap) do
        if type(value) ~= 'table' or #value > 0 then k[name] = value end
      end
      caps[i] = k
    end
    -- ARGV[3] is the member prefix: the array header, then the packed message id
    redis.call('SET', KEYS[5] .. cmsgpack.unpack(string.sub(ARGV[3], 2)), cmsgpack.pack(
      {c = c, b = blocks, k = caps, w = cw, m = msg, e = plan.endr, s = plan.sp,
       mem = mem}), 'PX', fmt(out_t - now + 1))
  end
  for _, m in ipairs(moved) do
    redis.call('ZREM', KEYS[1], m.e.member)
    local r = m.r
    if r.t then
      redis.call('ZADD', KEYS[1], fmt(r.t), r.member)
      redis.call('SET', KEYS[5] .. m.e.mid, r.plan, 'PX', fmt(r.t - now + 1))
      local want = r.t - now + plan.keep
      if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], fmt(want)) end
    else
      redis.call('DEL', KEYS[5] .. m.e.mid)
    end
    if m.rec then
      redis.call('SET', m.key, m.rec, 'KEEPTTL')
      if r.t then
        local want = r.t - now + plan.ttl
        if redis.call('PTTL', m.key) < want then redis.call('PEXPIRE', m.key, fmt(want)) end
      end
    end
  end
end
local reply = {'new', out}
for _, m in ipairs(moved) do
  if m.rec then
    reply[#reply + 1] = m.rec
    reply[#reply + 1] = m.e.member
    reply[#reply + 1] = fmt(m.e.t)
  end
end
return reply
