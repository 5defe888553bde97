-- The atomic decision commit (docs/architecture.md, the hot path, step 7). All cap, conflict and idempotency
-- arithmetic lives here and only here, so the check and the reservation cannot race.
--
-- KEYS[1] ledger zset, KEYS[2] idempotency records hash, KEYS[3] prefs hash, KEYS[4] the
-- prefix of the record keys a previous release wrote, KEYS[5] the prefix of the re-decision
-- plans, KEYS[6] this message's record key of a previous release (same hash tag;
-- api/keys.py): a record is field <message id> of KEYS[2], or else (written before the
-- hash, read and updated in place until it expires) KEYS[4] .. its message id; the
-- compact plan a deferral keeps while it can be displaced is KEYS[5] .. its message id
-- ARGV[1] plan (built by api/plan.py: lua_plan; the candidates as fixed-size binary
-- records, then MessagePack positional arrays in the order of PLAN_FIELDS), ARGV[2]
-- the context (stored verbatim; api/plan.py: encode_context: JSON, or MessagePack in
-- record format 6),
-- ARGV[3] prefix of this message's ledger members, ARGV[4] what follows a member's channel
-- (api/plan.py: member_prefix, member_tail; candidate i's member is ARGV[3], its packed
-- channel, ARGV[4]), ARGV[5] the candidates' JSON annotations, concatenated (each record
-- says where its own is; none: length 0), the reserved candidate's copied as "s" into its
-- outcome (score, score now, propensity: api/scoring.py)
-- KEYS[7] (optional) conversions hash and KEYS[8] the send-time profile hash; when given,
-- the last ARGV are the state check (api/userstate.py: CommitCheck): the preferences hash
-- as read (field, value, ...), the campaign ('' none), its converted-at as read ('' none),
-- the profile as read ('' none), then the number of fields
--
-- Modes: 'earliest' reserves the earliest free instant over all candidates; 'first' the
-- first candidate with a free instant; 'ranked' the first scored slot (its s == 1, in
-- the order given: best expected value first) that is free, else the earliest free
-- instant of the remaining (window) candidates.
--
-- Returns {'new', outcome_json, displaced record, its member, its old instant, ...}
--       | {'dup', record} | {'dup_ledger', member, score} | {'stale', current_rev}
--       | {'moved', outcome_json}: the outcome lands outside pacing's expectation (plan_pe,
--         step 6c), nothing written
--       | {'repace', outcome_json, message id, channel, instant, ...}: displaced messages
--         moved to paced instants pacing holds no token for (step 6c), nothing written
--
-- Members are MessagePack arrays [mid, channel, category, campaign, tags, offer_id,
-- offer_group, priority] (api/plan.py: ledger_member); members written before priorities
-- have 7 elements and the default priority plan_dp. The array header (first byte) differs
-- between the two layouts, so a message's members are matched from the second byte on.
--
-- A rule is {code, rule id, its blocks flat: s1, e1, s2, e2, ..., sorted by start}. Blocks
-- are half-open integer intervals [s, e) of epoch milliseconds. A rolling cap of
-- N per W is violated by a new send at t iff some N existing matching sends plus t fit in
-- a span shorter than W; for N consecutive entries e_a..e_{a+N-1} (span < W) that is
-- exactly t in [e_{a+N-1} - W + 1, e_a + W). So "the instant the window frees" is e_a + W.

-- the plan's top level gets its names back as locals plan_<name> (a table of them cost
-- ~0.6 µs per commit to build, docs/benchmarks.md "Fewer script arguments"; the decode
-- builds no key strings); caps [id, code, n, w, b, ch, cat, xcat, camp, tag] and blocks
-- [c, r, iv] stay positional. ARGV[1] starts with the number of candidates (uint16) and their
-- records (CAND_SIZE bytes each, api/plan.py CAND_RECORD), then the MessagePack array;
-- ``cand_at(i)`` decodes the i-th record when the script first reads it, as [ch, a, b,
-- pb, s, why]: pb and why index plan_pbs and plan_whys (0-based; why nil: none), so the
-- ranked slots of one channel share them. Most commits read the first few of a ranked
-- plan's slots. A record's last 6 bytes (its note's offset and length) are read for the
-- candidate reserved only (``note_of``).
local CAND_SIZE = 28
local ncands = struct.unpack('>H', ARGV[1])
local _, P = cmsgpack.unpack_one(ARGV[1], 2 + CAND_SIZE * ncands)
local plan_now, plan_rev, plan_lo, plan_keep, plan_ttl = P[1], P[2], P[3], P[4], P[5]
local plan_caps, plan_cw, plan_blocks, plan_chs, plan_mode = P[7], P[8], P[9], P[10], P[11]
local plan_endr, plan_dry, plan_sp, plan_pk, plan_xc = P[12], P[13], P[14], P[15], P[16]
local plan_dp, plan_pbs, plan_whys, plan_of, plan_pe = P[17], P[18], P[19], P[20], P[21]
local cands = {}
local function cand_at(i)
  local c = cands[i]
  if c == nil then
    local ch, a, b, pb, s, why = struct.unpack('>Bi8i8HBH', ARGV[1], 3 + CAND_SIZE * (i - 1))
    c = {plan_chs[ch], a, b, pb, s, why > 0 and why - 1 or nil}
    cands[i] = c
  end
  return c
end
-- the annotation of candidate i (ARGV[5]), or nil
local function note_of(i)
  local at, len = struct.unpack('>I4H', ARGV[1], 3 + CAND_SIZE * (i - 1) + 22)
  if len == 0 then return nil end
  return string.sub(ARGV[5], at + 1, at + len)
end
-- the ledger member of this message on channel ch (api/plan.py: ledger_member)
local function member_of(ch)
  return ARGV[3] .. cmsgpack.pack(ch) .. ARGV[4]
end
local function message_facts(m)
  return {cat = m[1], camp = m[2], tags = m[3], oid = m[4], og = m[5], pr = m[6]}
end
local now = plan_now
-- channel pacing's expectation (api/plan.py: PaceExpect; [pc, ch, lo, hi, dx]), nil when
-- nothing is paced
local pe = plan_pe
local function is_paced(ch)
  if pe == nil then return false end
  for _, c in ipairs(pe[1]) do if c == ch then return true end end
  return false
end

local function fmt(x) return string.format('%.0f', x) end

-- the idempotency records: field <message id> of KEYS[2] = "<expiry ms> <record>", field
-- '' = "<earliest record expiry> <the hash's expiry>" (api/keys.py); a record past its
-- expiry is not there. ``live`` returns the record and its expiry, or nil.
local function live(v)
  if not v then return nil end
  local sp = string.find(v, ' ', 1, true)
  local exp = tonumber(string.sub(v, 1, sp - 1))
  if exp > now then return string.sub(v, sp + 1), exp end
  return nil
end
-- a record in the hash, or else a previous release's key (its value and no expiry)
local function record_get(id, legacy)
  local rec, exp = live(redis.call('HGET', KEYS[2], id))
  if rec then return rec, exp end
  return redis.call('GET', legacy), nil
end
-- store a record until ``exp`` (ms). Expired fields are dropped in batches: once the
-- earliest expiry is more than ttl / 8 ago every expired field goes (a record stays at
-- most ttl / 8 past its expiry while the user keeps receiving messages). The hash expires
-- at its own expiry, which is moved ttl / 8 past the record that needs it, so most
-- writes are the one HSET of the record. ``meta``: field '' as read by step 1.
local meta
local function record_put(id, value, exp)
  local slack = math.floor(plan_ttl / 8)
  local first, last
  if meta then
    local sp = string.find(meta, ' ', 1, true)
    first, last = tonumber(string.sub(meta, 1, sp - 1)), tonumber(string.sub(meta, sp + 1))
  end
  local changed = false
  if first and first + slack <= now then
    first, changed = nil, true
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if all[i] ~= '' then
        local e = tonumber(string.match(all[i + 1], '^%d+'))
        if e <= now then redis.call('HDEL', KEYS[2], all[i])
        elseif first == nil or e < first then first = e end
      end
    end
  end
  if first == nil or exp < first then first, changed = exp, true end
  local extend = last == nil or exp > last
  if extend then last, changed = exp + slack, true end
  if changed then
    meta = fmt(first) .. ' ' .. fmt(last)
    redis.call('HSET', KEYS[2], id, fmt(exp) .. ' ' .. value, '', meta)
  else
    redis.call('HSET', KEYS[2], id, fmt(exp) .. ' ' .. value)
  end
  if extend then redis.call('PEXPIRE', KEYS[2], fmt(last - now)) end
end
local my_mid = cmsgpack.unpack(string.sub(ARGV[3], 2))

-- 1. idempotency: a record means this message was decided already
local got = redis.call('HMGET', KEYS[2], my_mid, '')
meta = got[2]
local rec = live(got[1]) or redis.call('GET', KEYS[6])
if rec then return {'dup', rec} end

-- 2. preferences changed since the read (opt-out, conversion...): caller retries
local rev = redis.call('HGET', KEYS[3], 'rev') or '0'
if rev ~= plan_rev then return {'stale', rev} end

-- 2b. the state the plan was made from, when the caller sends it (its read may be seconds
-- old: api/statecache.py): the whole preferences hash, field by field, the campaign's
-- conversion and the send-time profile. Anything else: stale, the caller re-reads.
local nargv = #ARGV
if KEYS[7] then
  local n = tonumber(ARGV[nargv])
  if (redis.call('HGET', KEYS[8], 'p') or '') ~= ARGV[nargv - 1] then return {'stale', rev} end
  nargv = nargv - 4 - 2 * n
  local flat = redis.call('HGETALL', KEYS[3])
  if #flat ~= 2 * n then return {'stale', rev} end
  local want = {}
  for i = nargv + 1, nargv + 2 * n, 2 do want[ARGV[i]] = ARGV[i + 1] end
  for i = 1, #flat, 2 do
    if want[flat[i]] ~= flat[i + 1] then return {'stale', rev} end
  end
  local camp = ARGV[#ARGV - 3]
  if camp ~= '' and (redis.call('HGET', KEYS[7], camp) or '') ~= ARGV[#ARGV - 2] then
    return {'stale', rev}
  end
end

-- 3. the ledger inside the longest window, past and future reservations alike
-- Read from -inf: members older than plan_lo are skipped (they count for nothing), but
-- seeing them tells step 7 whether the trim has anything to remove, so a commit whose
-- ledger holds nothing stale saves that ZREMRANGEBYSCORE.
local function has(list, v)
  for i = 1, #list do if list[i] == v then return true end end
  return false
end
local function excluded(list, v)
  return list ~= nil and has(list, v)
end
local msg = message_facts(P[6])
local cw = plan_cw
local raw = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'WITHSCORES')
-- A long ledger (a busy recipient's) is skimmed: when caps are all that reads the entries
-- (no conflict window to check, no preemption, whose re-decisions use other caps), an
-- entry of a category no shipped cap counts is not decoded. Such entries pile up: the
-- exempt (transactional) ones are never capped. The category is read from the member's
-- bytes (after the array header, the packed id and the channel); a member in any other
-- layout is decoded as before. Below SKIM_FROM entries reading the categories costs more
-- than it saves. docs/benchmarks.md, "commit.lua on long ledgers".
local SKIM_FROM = 8
local counted, category_of, counts = nil, nil, nil  -- counted: category -> counts(it)
local mid_body  -- the packed message id, read only when skimming
if #raw > 2 * SKIM_FROM and plan_pk == 0 and not (cw > 0 and msg.og ~= '') then
  counted = {}
  mid_body = string.sub(ARGV[3], 2)
  -- the MessagePack string at byte i of s (fixstr, str8, str16): its bytes' first and
  -- one past their last; nil for anything else
  local function str_at(s, i)
    local h = string.byte(s, i)
    if h == nil then return nil end
    if h >= 0xa0 and h <= 0xbf then return i + 1, i + 1 + h - 0xa0 end
    if h == 0xd9 then return i + 2, i + 2 + string.byte(s, i + 1) end
    if h == 0xda then
      local a, b = string.byte(s, i + 1, i + 2)
      return i + 3, i + 3 + a * 256 + b
    end
    return nil
  end
  -- the member's category, and where its id ends (nil: not that layout)
  category_of = function(member)
    local _, after_id = str_at(member, 2)
    if after_id == nil then return nil end
    local _, after_ch = str_at(member, after_id)
    if after_ch == nil then return nil end
    local first, after = str_at(member, after_ch)
    if first == nil then return nil end
    return string.sub(member, first, after - 1), after_id
  end
  -- matches' category tests, for some shipped cap
  counts = function(cat)
    for _, cap in ipairs(plan_caps) do
      local l = cap[7]
      if (l == nil or #l == 0 or has(l, cat)) and not excluded(cap[8], cat) then
        return true
      end
    end
    return false
  end
end
-- An entry is {t, facts, member}: facts is the member as decoded, [mid, channel,
-- category, campaign, tags, offer_id, offer_group(, priority)], shared rather than copied
-- into a table of named fields (that copy cost a third of the per-entry work on the long
-- ledgers of a Zipf head: docs/benchmarks.md, "commit.lua on long ledgers"). Entries
-- that preemption marks get the named fields ``gone`` and ``by``.
local entries = {}
local lo, cut, stale = plan_lo, now - plan_keep, false
for i = 1, #raw, 2 do
  local member, t = raw[i], tonumber(raw[i + 1])
  if t < lo then
    if t < cut then stale = true end
  else
    local skip = false
    if counted then
      local cat, after_id = category_of(member)
      if cat then
        local c = counted[cat]
        if c == nil then
          c = counts(cat)
          counted[cat] = c
        end
        if not c then
          if after_id - 2 == #mid_body and string.find(member, mid_body, 2, true) == 2 then
            return {'dup_ledger', member, raw[i + 1]}  -- as below
          end
          skip = true
        end
      end
    end
    if not skip then
      local d = cmsgpack.unpack(member)
      if d[1] == my_mid then
        -- its record expired but the reservation still counts: same message, counted once
        -- (by its decoded id: the test cancel.lua makes on the bytes after the header)
        return {'dup_ledger', member, raw[i + 1]}
      end
      entries[#entries + 1] = {t, d, member}
    end
  end
end
-- an entry's priority: members written before priorities have none (the default, plan_dp)
local function priority(e) return e[2][8] or plan_dp end

-- a reservation made in this call (preemption): entries stay in time order, which the cap
-- arithmetic relies on
local function add_entry(e)
  local at = #entries + 1
  while at > 1 and entries[at - 1][1] > e[1] do at = at - 1 end
  table.insert(entries, at, e)
end

-- cap: [id, code, n, w, b, ch, cat, xcat, camp, tag] (api/plan.py: _lua_cap); a missing
-- or empty scope list restricts nothing. One function without calls per list: it runs
-- once per cap and ledger entry.
local function matches(cap, ch, cat, camp, tags)
  local l = cap[6]
  if l ~= nil and #l > 0 and not has(l, ch) then return false end
  l = cap[7]
  if l ~= nil and #l > 0 and not has(l, cat) then return false end
  l = cap[8]
  if l ~= nil and has(l, cat) then return false end
  l = cap[9]
  if l ~= nil and #l > 0 and not has(l, camp) then return false end
  l = cap[10]
  if l ~= nil and #l > 0 then
    for i = 1, #tags do if has(l, tags[i]) then return true end end
    return false
  end
  return true
end

-- blocked intervals of one cap (flat, in order of start: the entries are in time order)
local function cap_blocks(cap)
  local times = {}
  for _, e in ipairs(entries) do
    local d = e[2]
    if not e.gone and matches(cap, d[2], d[3], d[4], d[5]) then
      times[#times + 1] = e[1]
    end
  end
  local out = {}
  local n, w = cap[3], cap[4]
  if w > 0 then
    for a = 1, #times - n + 1 do
      local first, last = times[a], times[a + n - 1]
      if last - first < w then
        out[#out + 1] = last - w + 1
        out[#out + 1] = first + w
      end
    end
  else
    local b = cap[5]
    local counts = {}
    local k = 1
    for _, t in ipairs(times) do
      while k < #b and b[k + 1] <= t do k = k + 1 end
      if k < #b and b[k] <= t then counts[k] = (counts[k] or 0) + 1 end
    end
    for i = 1, #b - 1 do
      if (counts[i] or 0) >= n then
        out[#out + 1] = b[i]
        out[#out + 1] = b[i + 1]
      end
    end
  end
  return out
end

-- a format-4 record's numbers for its decision, channels and reason codes: positions in
-- api/record_codes.py's lists (ReasonCode's and CHANNELS' order; tests/unit/
-- test_record_codes.py holds these functions to them); nil for a name they lack, which
-- then stays a string. Chains of comparisons (of interned strings) rather than tables: a
-- table constructor here runs on every call, ~1.4 µs per commit for these three.
local function decision_no(name)
  if name == 'send' then return 0 end
  if name == 'defer' then return 1 end
  if name == 'suppress' then return 2 end
end
local function channel_no(name)
  if name == 'email' then return 0 end
  if name == 'sms' then return 1 end
  if name == 'push' then return 2 end
  if name == 'whatsapp' then return 3 end
  if name == 'in_app' then return 4 end
  if name == 'web_push' then return 5 end
end
local function reason_no(name)
  if name == 'frequency_cap' then return 0 end
  if name == 'user_frequency_limit' then return 1 end
  if name == 'jurisdiction_cap' then return 2 end
  if name == 'quiet_hours' then return 3 end
  if name == 'user_quiet_hours' then return 4 end
  if name == 'jurisdiction_window' then return 5 end
  if name == 'not_before' then return 6 end
  if name == 'conflicting_offer' then return 7 end
  if name == 'duplicate_offer' then return 8 end
  if name == 'no_consent' then return 9 end
  if name == 'opt_in_required' then return 10 end
  if name == 'topic_opted_out' then return 11 end
  if name == 'already_converted' then return 12 end
  if name == 'deadline_exceeded' then return 13 end
  if name == 'max_defer_exceeded' then return 14 end
  if name == 'no_channel_available' then return 15 end
  if name == 'policy_store_unavailable' then return 16 end
  if name == 'better_send_time' then return 17 end
  if name == 'exploration' then return 18 end
  if name == 'holdout' then return 19 end
  if name == 'preempted' then return 20 end
  if name == 'channel_pacing' then return 21 end
  if name == 'low_expected_value' then return 22 end
end

-- a record's format from its context (api/plan.py): 6 (a MessagePack array: first byte
-- 0x90-0x9f), 4 (a JSON array starting with a number), 3 (an array starting with a
-- string) or nil (an object: formats 1 and 2)
local function format_of(ctx)
  local first = string.byte(ctx, 1)
  if first >= 0x90 and first <= 0x9f then return 6 end
  if first ~= 91 then return nil end
  local b = string.byte(ctx, 2)
  if b and b >= 48 and b <= 57 then return 4 end
  return 3
end

-- MessagePack (record format 6): the header of an array of n elements. Elements are
-- packed with one cmsgpack.pack call per array where possible: it packs each of its
-- arguments, nil included, one after the other (a defer's outcome: 1.9 µs, against 2.9 µs
-- with a call per value and 2.4 µs for format 5's JSON; docs/benchmarks.md "Record format 6").
local function mp_header(n)
  if n < 16 then return string.char(0x90 + n) end
  return struct.pack('>BH', 0xdc, n)
end
-- a record of format 6: the array header (2 elements; 3 once cancel.lua appends the
-- cancellation), the context as Python packed it, the outcome (api/render.py:
-- record_parts); a JSON record: its two lines
local function record_of(ctx, out, fm)
  if fm == 6 then return '\146' .. ctx .. out end
  return ctx .. '\n' .. out
end
-- format 6's outcome: format 5's values (below) as a MessagePack array [d, ch, t, s, r, x,
-- p] without its trailing defaults, the instants counted from ``base``; the score note
-- (JSON, as Python annotated the candidate) as [score, propensity] or [score, score now,
-- propensity]; xs packed already
local function outcome6(d, ch, t, rs, p, s, xs, base)
  local x = xs and #xs > 0
  local n = p and 7 or x and 6 or #rs > 0 and 5 or s and 4 or 3
  local out = mp_header(n) .. cmsgpack.pack(decision_no(d) or d, ch and (channel_no(ch) or ch),
                                            t and t - base)
  if n == 3 then return out end
  if s then
    local v = cjson.decode(s)
    if v[1] == v[2] then out = out .. '\146' .. cmsgpack.pack(v[1], v[3])
    else out = out .. '\147' .. cmsgpack.pack(v[1], v[2], v[3]) end
  else
    out = out .. '\192'
  end
  if n == 4 then return out end
  local parts = {}
  for i, r in ipairs(rs) do
    local c = r[4]
    parts[i] = '\148' .. cmsgpack.pack(reason_no(r[1]) or r[1], r[2], r[3] and r[3] - base,
                                       c and (channel_no(c) or c))
  end
  out = out .. mp_header(#rs) .. table.concat(parts)
  if n == 5 then return out end
  out = out .. (x and mp_header(#xs) .. table.concat(xs) or '\144')
  if n == 6 then return out end
  return out .. '\1'
end

-- the outcome line (api/render.py: Outcome): the decision d, channel, instant, reasons rs,
-- p (true: a preempted suppression), the reserved candidate's score note (JSON) and the
-- displaced decisions xs (JSON each), in the layout of the record's format ``fm``. Formats
-- 3, 4 and 5: a JSON array [d, ch, t, s, r, x, p] without its trailing defaults, s as
-- [score, propensity] when the score now is the score; format 4 writes d, the channels and
-- the reason codes as numbers; format 5 is the byte 5 and format 4's array, with t and
-- each reason's until counted from ``base`` (the instant of the record's context). Else
-- the object {"d","ch","t","r"[,"p"][,"s"][,"x"]} earlier releases read. A rule is written
-- as the plan holds it: its name, or in a format-5 plan its number (api/record_codes.py).
local function outcome(d, ch, t, rs, p, s, xs, fm, base)
  if fm == 6 then return outcome6(d, ch, t, rs, p, s, xs, base) end
  local coded = fm == 4 or fm == 5
  local shift = fm == 5 and base or 0
  local parts = {}
  for i, r in ipairs(rs) do
    local c = r[4]
    parts[i] = '[' .. (coded and reason_no(r[1]) or cjson.encode(r[1])) .. ','
      .. cjson.encode(r[2]) .. ',' .. (r[3] and fmt(r[3] - shift) or 'null') .. ','
      .. (c and (coded and channel_no(c) or cjson.encode(c)) or 'null') .. ']'
  end
  local ch_ = ch and (coded and channel_no(ch) or cjson.encode(ch)) or 'null'
  local t_ = t and fmt(t - shift) or 'null'
  if not fm then
    return '{"d":"' .. d .. '","ch":' .. ch_ .. ',"t":' .. t_ .. ',"r":['
      .. table.concat(parts, ',') .. ']' .. (p and ',"p":1' or '')
      .. (s and ',"s":' .. s or '') .. (xs and ',"x":[' .. table.concat(xs, ',') .. ']' or '')
      .. '}'
  end
  if s then  -- [score, score now, propensity], the score twice (most decisions): [score, p]
    local comma = string.find(s, ',', 1, true)
    local score = string.sub(s, 2, comma - 1)
    if string.sub(s, comma + 1, comma + #score + 1) == score .. ',' then
      s = '[' .. score .. string.sub(s, comma + #score + 1)
    end
  end
  local out = (coded and (fm == 5 and '5[' or '[') .. decision_no(d) or '["' .. d .. '"')
    .. ',' .. ch_ .. ',' .. t_
  local x = xs and #xs > 0
  if not (p or x or #rs > 0) then return s and out .. ',' .. s .. ']' or out .. ']' end
  out = out .. ',' .. (s or 'null') .. ',[' .. table.concat(parts, ',') .. ']'
  if not (p or x) then return out .. ']' end
  out = out .. ',[' .. (x and table.concat(xs, ',') or '') .. ']'
  return p and out .. ',1]' or out .. ']'
end
-- this message's record format: 5 or 6 when the plan says so (format 5's context is
-- format 4's layout), else its context line's (api/plan.py); its outcome's layout
local record_format = plan_of or format_of(ARGV[2])

-- 4. a duplicate offer suppresses the whole message, whatever the channel
if cw > 0 and msg.og ~= '' then
  for _, e in ipairs(entries) do
    local d = e[2]
    if d[7] == msg.og and d[6] == msg.oid and e[1] > now - cw then
      local out = outcome('suppress', nil, nil,
                          {{'duplicate_offer', 'conflict_group:' .. msg.og, e[1] + cw, d[2]}},
                          false, nil, nil, record_format, now)
      if plan_dry == 0 then
        record_put(my_mid, record_of(ARGV[2], out, record_format), now + plan_ttl)
      end
      return {'new', out}
    end
  end
end

-- merge flat intervals (sorted by start first when they are not: only pacing's spans
-- come from outside this script and the plan)
local function normalize(iv)
  local n = #iv
  for i = 3, n - 1, 2 do
    if iv[i] < iv[i - 2] then
      local pairs_ = {}
      for j = 1, n - 1, 2 do pairs_[#pairs_ + 1] = {iv[j], iv[j + 1]} end
      table.sort(pairs_, function(x, y) return x[1] < y[1] end)
      iv = {}
      for _, p in ipairs(pairs_) do iv[#iv + 1] = p[1] iv[#iv + 1] = p[2] end
      break
    end
  end
  local out, m = {}, 0
  for i = 1, n - 1, 2 do
    local s, e = iv[i], iv[i + 1]
    if e > s then
      if m > 0 and s <= out[m] then
        if e > out[m] then out[m] = e end
      else
        out[m + 1] = s
        out[m + 2] = e
        m = m + 2
      end
    end
  end
  return out
end

-- earliest instant in [a, b) outside every block, or nil. x only ever jumps to the end of
-- a block covering it, so [a, x) stays covered, and the sweep ends when nothing covers x:
-- the same instant as merging all blocks first, without building and sorting that list
-- (most calls stop after one or two sweeps). A rule's intervals are sorted by start, so
-- its scan stops at the first one starting after x.
local function first_free(rules, a, b)
  local x = a
  local moved = true
  while moved and x < b do
    moved = false
    for _, r in ipairs(rules) do
      local iv = r[3]
      for j = 1, #iv, 2 do
        local s = iv[j]
        if s > x then break end
        if x < iv[j + 1] then x = iv[j + 1] moved = true end
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
      local iv = r[3]
      for j = 1, #iv, 2 do
        if iv[j] > x then break end
        local e = iv[j + 1]
        if x < e then
          local key = r[1] .. '\0' .. r[2] .. '\0' .. ch
          local idx = seen[key]
          if idx == nil then
            out[#out + 1] = {r[1], r[2], e, ch}
            seen[key] = #out
          elseif out[idx][3] < e then
            out[idx][3] = e
          end
          if nx == nil or e > nx then nx = e end
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
    local d = e[2]
    if not e.gone and d[7] == m.og and d[6] ~= m.oid then
      iv[#iv + 1] = e[1] - cwin + 1
      iv[#iv + 1] = e[1] + cwin
    end
  end
  if #iv == 0 then return nil end
  return {'conflicting_offer', 'conflict_group:' .. m.og, normalize(iv)}
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
    local iv, paced = r[3], r[1] == 'channel_pacing'
    for j = 1, #iv, 2 do
      local s = iv[j]
      if paced and iv[j + 1] == t then return t end
      if s > t then  -- sorted: the first start after t is the rule's nearest
        if s < gap_end then gap_end = s end
        break
      end
    end
  end
  return math.min(t + sp, gap_end - 1)
end
local function time_rules(cand)
  local rules = {}
  for _, index in ipairs(plan_pbs[cand[4] + 1]) do
    rules[#rules + 1] = plan_blocks[index + 1]
  end
  if conflict_rule then rules[#rules + 1] = conflict_rule end
  return rules
end

local function evaluate()
  local evaluated, chosen = {}, nil
  -- a candidate's rules depend on its channel and time blocks only: the ranked slots of a
  -- channel share them (read only from here on)
  local by_pb = {}
  for i = 1, ncands do
    local cand = cand_at(i)
    local same = by_pb[cand[4]]
    if same == nil then
      same = {}
      by_pb[cand[4]] = same
    end
    local rules = same[cand[1]]
    if rules == nil then
      rules = time_rules(cand)
      for ci, cap in ipairs(plan_caps) do
        if matches(cap, cand[1], msg.cat, msg.camp, msg.tags) then
          local rule = cap_cache[ci]
          if rule == nil then
            rule = {cap[2], cap[1], normalize(cap_blocks(cap))}
            cap_cache[ci] = rule
          end
          if #rule[3] > 0 then rules[#rules + 1] = rule end
        end
      end
      same[cand[1]] = rules
    end
    local t = first_free(rules, cand[2], cand[3])
    evaluated[i] = {cand = cand, rules = rules, t = t}
    if t ~= nil then
      if plan_mode == 'first' then chosen = i break end
      if plan_mode == 'ranked' and cand[5] == 1 then chosen = i break end
      if chosen == nil or t < evaluated[chosen].t then chosen = i end
    end
  end
  return evaluated, chosen
end
local evaluated, chosen = evaluate()

-- 5b. preemption (policy.preemption): when caps keep the message from its best instant T
-- (the one its time rules and conflicts allow), displace up to plan_pk future reservations
-- of strictly lower priority counted by a cap blocking T (lowest priority first, then the
-- latest), if that frees T; otherwise displace nothing. Exempt categories are never
-- displaced. Each displaced message is re-decided in step 6b.
local displaced = {}
if plan_pk > 0 and ncands > 0 then
  local ti, target = nil, nil
  for i = 1, ncands do
    local cand = cand_at(i)
    local t = first_free(time_rules(cand), cand[2], cand[3])
    if t ~= nil then
      if plan_mode ~= 'earliest' then ti, target = i, t break end
      if target == nil or t < target then ti, target = i, t end
    end
  end
  local needed = target ~= nil and (chosen == nil or evaluated[chosen].t > target
                                    or (plan_mode ~= 'earliest' and chosen ~= ti))
  if needed then
    local cand = cand_at(ti)
    local function blocking()
      local hit = {}
      for _, cap in ipairs(plan_caps) do
        if matches(cap, cand[1], msg.cat, msg.camp, msg.tags) then
          local iv = cap_blocks(cap)
          for j = 1, #iv, 2 do
            if iv[j] <= target and target < iv[j + 1] then hit[#hit + 1] = cap break end
          end
        end
      end
      return hit
    end
    -- an entry counts toward the cap's block at T only inside its window (or bucket)
    local function near(cap, t)
      if cap[4] > 0 then return math.abs(t - target) < cap[4] end
      local b = cap[5]
      for i = 1, #b - 1 do
        if b[i] <= target and target < b[i + 1] then return b[i] <= t and t < b[i + 1] end
      end
      return false
    end
    local hit = blocking()
    while #hit > 0 and #displaced < plan_pk do
      local victim = nil
      for _, e in ipairs(entries) do
        local d, pr = e[2], priority(e)
        if not e.gone and e[1] > now and pr < msg.pr and not excluded(plan_xc, d[3]) then
          for _, cap in ipairs(hit) do
            if matches(cap, d[2], d[3], d[4], d[5]) and near(cap, e[1]) then
              local vp = victim and priority(victim)
              if victim == nil or pr < vp or (pr == vp and e[1] > victim[1]) then
                victim = e
                e.by = cap[1]
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
  out_ch, out_t = ev.cand[1], t
  decision = (t <= now) and 'send' or 'defer'
  out_t = spread(t, ev.cand[3], ev.rules, plan_sp)
  -- channels preferred over the chosen one: why they lost, at the instant it was chosen
  for i = 1, chosen - 1 do
    local other = evaluated[i]
    if other.t == nil or other.t > t then
      local oc = other.cand
      chain(other.rules, oc[2], math.min(t + 1, oc[3]), oc[1], reasons, seen)
    end
  end
  -- the chain stops at t, where the last rule stops blocking: reasons keep true instants
  chain(ev.rules, ev.cand[2], t, out_ch, reasons, seen)
  local why = ev.cand[6] and plan_whys[ev.cand[6] + 1]
  if why ~= nil and #why == 2 and out_t > now then
    reasons[#reasons + 1] = {why[1], why[2], nil, out_ch}
  end
else
  decision = 'suppress'
  for _, ev in ipairs(evaluated) do
    chain(ev.rules, ev.cand[2], ev.cand[3], ev.cand[1], reasons, seen)
  end
  if ncands > 0 then
    reasons[#reasons + 1] = {plan_endr[1], plan_endr[2], nil, nil}
  end
end

local note = chosen and note_of(chosen)

-- 6b. re-decide each displaced message inside this call, against the ledger as it is now
-- (this message's reservation included, the displaced ones gone): the earliest instant at
-- or after its old one that its own stored plan (KEYS[5] .. id: its window candidates,
-- time blocks, caps compiled for its priority, conflict window, spread) allows, spread
-- like any deferral; none before its horizon (or no stored plan): suppressed. Either way
-- the first reason is 'preempted'. No cascade: a re-decided message displaces nobody.
-- A stored re-decision plan (step 7) is {2, cands [ch, a, b, pb], blocks, caps, conflict
-- window, msg, end reason, spread, members}, the layouts of the plan (api/plan.py). Plans
-- stored before that layout (a map: {c = cands, b = blocks with [s, e] pairs, k = caps,
-- w, m = msg, e = end reason, s, mem}, all structs maps) outlive a deploy: they are read
-- into the new layout.
local function stored_plan(raw_plan)
  local R = cmsgpack.unpack(raw_plan)
  if R[1] == 2 then return R end
  local c, b, k = {}, {}, {}
  for i, x in ipairs(R.c) do c[i] = {x.ch, x.a, x.b, x.pb} end
  for i, blk in ipairs(R.b) do
    local iv = {}
    for _, pair in ipairs(blk.iv) do
      iv[#iv + 1] = pair[1]
      iv[#iv + 1] = pair[2]
    end
    b[i] = {blk.c, blk.r, iv}
  end
  for i, cap in ipairs(R.k) do
    k[i] = {cap.id, cap.code, cap.n, cap.w, cap.b, cap.ch, cap.cat, cap.xcat, cap.camp,
            cap.tag}
  end
  local m = R.m
  return {2, c, b, k, R.w, {m.cat, m.camp, m.tags, m.oid, m.og, m.pr}, {R.e.c, R.e.r}, R.s,
          R.mem}
end

local function redecide(v)
  local raw_plan = redis.call('GET', KEYS[5] .. v.mid)
  local first = {'preempted', v.by, nil, v.ch}
  if not raw_plan then return {d = 'suppress', r = {first}} end
  local R = stored_plan(raw_plan)
  local m = message_facts(R[6])
  local conflict = conflict_for(m, R[5])
  -- the full pacing spans the caller found for this message's new instant (step 6c):
  -- pe.dx[id] is [ch, lo, hi, {channel: block}]
  local dx = pe ~= nil and pe[5] ~= nil and pe[5][v.mid]
  local paced_blocks = dx and dx[4] or {}
  local best, bt, brules
  for i, cand in ipairs(R[2]) do
    local rules = {}
    for _, index in ipairs(cand[4]) do rules[#rules + 1] = R[3][index + 1] end
    local pb = paced_blocks[cand[1]]
    if pb ~= nil then rules[#rules + 1] = {pb[1], pb[2], normalize(pb[3])} end
    for _, cap in ipairs(R[4]) do
      if matches(cap, cand[1], m.cat, m.camp, m.tags) then
        local iv = normalize(cap_blocks(cap))
        if #iv > 0 then rules[#rules + 1] = {cap[2], cap[1], iv} end
      end
    end
    if conflict then rules[#rules + 1] = conflict end
    local t = first_free(rules, math.max(cand[2], v.t), cand[3])
    if t ~= nil and (bt == nil or t < bt) then best, bt, brules = i, t, rules end
  end
  if best == nil then
    return {d = 'suppress', r = {first, {R[7][1], R[7][2], nil, nil}}}
  end
  local cand = R[2][best]
  local rs, seen2 = {first}, {}
  chain(brules, v.t, bt, cand[1], rs, seen2)
  return {d = 'defer', ch = cand[1], t = spread(bt, cand[3], brules, R[8]), r = rs,
          member = R[9][best], plan = raw_plan}
end

local moved, xs = {}, nil
if #displaced > 0 then
  -- the displaced entries by name from here on (they stay marked gone in the ledger)
  for i, e in ipairs(displaced) do
    displaced[i] = {t = e[1], ch = e[2][2], mid = e[2][1], member = e[3], by = e.by}
  end
  -- from here on this message's reservation counts for the re-decisions
  if out_t and plan_dry == 0 then
    add_entry({out_t, {my_mid, out_ch, msg.cat, msg.camp, msg.tags, msg.oid, msg.og,
                       msg.pr}})
  end
  local ids = {}
  for _, e in ipairs(displaced) do
    local key = KEYS[4] .. e.mid
    local old, exp = record_get(e.mid, key)
    -- its context: a format-6 record's first element (MessagePack, after the array
    -- header), else its first line (JSON); decoded as c, its format fm
    -- a context that does not parse (a damaged record: api/render.py
    -- UnreadableRecordError) is left as it is, like an expired one: the entry is still
    -- displaced, and its record names nothing new
    local ctx, c, fm
    if old and format_of(old) == 6 then
      local ok, at, v = pcall(cmsgpack.unpack_one, old, 1)
      if ok and at ~= -1 and type(v) == 'table' then
        ctx, c, fm = string.sub(old, 2, at), v, 6
      end
    elseif old then
      local line = string.match(old, '^[^\n]*')
      local ok, v = pcall(cjson.decode, line)
      if ok and type(v) == 'table' then ctx, c, fm = line, v, format_of(line) end
    end
    -- its decision id (context formats 1, 2: objects), or what re-seals it (formats 3
    -- to 6, arrays, api/plan.py: the message id, the key tag (1st in format 3, 2nd in
    -- 4 and 6) and, when the record is not this user's own, its user (8th);
    -- api/render.py), in this commit's outcome format (MessagePack in format 6)
    -- a format-5 or 6 commit writes the new outcome relative to the instant of the
    -- displaced record's context (1st in formats 4 and 6, 4th in 3, "n" or "now" in
    -- objects): in format 6 when the record is, else in format 5
    local t0 = c and ((fm == 4 or fm == 6) and c[1] or fm == 3 and c[4] or c.n or c.now)
    if type(t0) ~= 'number' then ctx, c, fm = nil, nil, nil end  -- damaged, as above
    local base = c and (plan_of or fm == 6) and t0
    local id
    if c and c.did then id = c.did
    elseif fm then
      local u = c[8]
      if u == cjson.null then u = nil end
      id = {e.mid, fm == 3 and c[1] or c[2], u}
    end
    if id and record_format == 6 then
      ids[#ids + 1] = type(id) == 'string' and cmsgpack.pack(id)
        or id[3] and '\147' .. cmsgpack.pack(id[1], id[2], id[3])
        or '\146' .. cmsgpack.pack(id[1], id[2])
    elseif id then
      ids[#ids + 1] = cjson.encode(id)
    end
    local m = {e = e, key = key, exp = exp}
    if plan_dry == 0 then
      local r = redecide(e)
      if r.t then  -- moved: counted for the next re-decision
        add_entry({r.t, cmsgpack.unpack(r.member), r.member})
      end
      m.r = r
      local fm_out = fm == 6 and 6 or base and 5 or fm
      m.rec = ctx and record_of(ctx, outcome(r.d, r.ch, r.t, r.r, r.t == nil, nil, nil,
                                             fm_out, base), fm_out)
    end
    moved[#moved + 1] = m
  end
  xs = ids
end
local out = outcome(decision, out_ch, out_t, reasons, false, note, xs, record_format, now)

-- 6c. channel pacing's expectation (plan_pe, api/pacing.py): a send or deferral on a paced
-- channel is written only inside the span of the token pacing holds for it. The ledger can
-- change between the dry commit pacing planned with and this one (a concurrent decision for
-- the same recipient); then nothing is written and the caller gets where the message would
-- land, to reserve there and commit again. A displaced message moved to a paced channel
-- likewise needs a token held for its new instant (pe.dx[its id]); the ones without are
-- returned ('repace', with id, channel, instant each) and nothing is written. So no paced
-- send is ever written uncounted.
if plan_dry == 0 and pe ~= nil then
  if out_t and is_paced(out_ch) and (out_ch ~= pe[2] or out_t < pe[3] or out_t >= pe[4]) then
    return {'moved', out}
  end
  local repace = {'repace', out}
  for _, m in ipairs(moved) do
    local r = m.r
    if r.t and is_paced(r.ch) then
      local dx = pe[5] ~= nil and pe[5][m.e.mid] or nil
      if dx == nil or dx[1] ~= r.ch or r.t < dx[2] or r.t >= dx[3] then
        repace[#repace + 1] = m.e.mid
        repace[#repace + 1] = r.ch
        repace[#repace + 1] = fmt(r.t)
      end
    end
  end
  if #repace > 2 then return repace end
end

-- 7. write: the reservation, the trim, the TTLs, the idempotency record
if plan_dry == 0 then
  local ttl = plan_ttl
  if out_t then
    redis.call('ZADD', KEYS[1], fmt(out_t), member_of(out_ch))
    if stale then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(cut)) end
    local want = out_t - now + plan_keep
    if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], fmt(want)) end
    ttl = math.max(ttl, out_t - now + plan_ttl)
  end
  record_put(my_mid, record_of(ARGV[2], out, record_format), now + ttl)
  -- a deferral that preemption may displace keeps its compact plan until it is due
  if plan_pk > 0 and out_t and out_t > now then
    local c, mem, last = {}, {}, out_t
    for i = 1, ncands do
      local cand = cand_at(i)
      if cand[5] ~= 1 then
        c[#c + 1] = {cand[1], cand[2], cand[3], plan_pbs[cand[4] + 1]}
        mem[#mem + 1] = member_of(cand[1])
        if cand[3] > last then last = cand[3] end
      end
    end
    -- only the intervals its re-decision can meet: after this reservation, before the end
    local blocks = {}
    for i, blk in ipairs(plan_blocks) do
      local iv, all = {}, blk[3]
      for j = 1, #all, 2 do
        local s, e = all[j], all[j + 1]
        if s >= last then break end
        if e > out_t then
          iv[#iv + 1] = s
          iv[#iv + 1] = e
        end
      end
      blocks[i] = {blk[1], blk[2], iv}
    end
    -- the layout stored_plan reads (version 2); caps as shipped (an empty scope list nil)
    -- ARGV[3] is the member prefix: the array header, then the packed message id
    redis.call('SET', KEYS[5] .. cmsgpack.unpack(string.sub(ARGV[3], 2)), cmsgpack.pack(
      {2, c, blocks, plan_caps, cw, P[6], plan_endr, plan_sp, mem}), 'PX',
      fmt(out_t - now + 1))
  end
  for _, m in ipairs(moved) do
    redis.call('ZREM', KEYS[1], m.e.member)
    local r = m.r
    if r.t then
      redis.call('ZADD', KEYS[1], fmt(r.t), r.member)
      redis.call('SET', KEYS[5] .. m.e.mid, r.plan, 'PX', fmt(r.t - now + 1))
      local want = r.t - now + plan_keep
      if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], fmt(want)) end
    else
      redis.call('DEL', KEYS[5] .. m.e.mid)
    end
    if m.rec and m.exp then  -- in the hash: same expiry, or later if it moved later
      record_put(m.e.mid, m.rec, r.t and math.max(m.exp, r.t + plan_ttl) or m.exp)
    elseif m.rec then  -- a previous release's key: updated in place
      redis.call('SET', m.key, m.rec, 'KEEPTTL')
      if r.t then
        local want = r.t - now + plan_ttl
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
