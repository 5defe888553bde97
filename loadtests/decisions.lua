-- wrk script for loadtests/bench_decisions.py (placeholders @...@ are filled in by it).
--
-- Builds one decision request per call with a unique message id (prefix, thread, counter)
-- and a recipient drawn uniformly from the population, with the same shape as
-- loadtests/population.py RequestFactory: several channel lists, 10% transactional,
-- 15% lifecycle, 50 campaigns, tags, offers, deadlines. Counts the decision mix from the
-- bodies, and prints one JSON line the Python side parses.

local path = "@PATH@"
local users = @USERS@
local prefix = "@PREFIX@"
local deadline = "@DEADLINE@"
local seed = @SEED@
-- the model_version every decision answer must carry ("" = not checked)
local model = "@MODEL@"
local model_field = '"model_version":"' .. model .. '"'

local channel_sets = {
  '["email","push"]', '["push","email"]', '["email"]', '["push","email","sms"]',
  '["sms","email"]', '["whatsapp","email"]', '["in_app","push"]',
}
local tags = { "sale", "newsletter", "product", "reminder", "recommendation" }
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(seed * 7919 + tid)
  counter = 0
  n_send, n_defer, n_suppress, n_other, n_bad, n_other_model = 0, 0, 0, 0, 0, 0
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  local r = math.random()
  local cat = ""
  if r < 0.10 then
    cat = ',"category":"transactional"'
  elseif r < 0.25 then
    cat = ',"category":"lifecycle"'
  end
  local extra = ""
  if math.random() < 0.3 then
    extra = extra .. ',"tags":["' .. tags[math.random(#tags)] .. '"]'
  end
  if math.random() < 0.15 then
    local group
    if math.random() < 0.3 then group = "winback" else group = "g" .. math.random(0, 9) end
    extra = extra .. ',"offer":{"id":"o' .. math.random(0, 199) .. '","group":"' .. group .. '"}'
  end
  if math.random() < 0.2 then
    extra = extra .. ',"deadline":"' .. deadline .. '"'
  end
  local body = string.format(
    '{"message_id":"%s-%d-%d","user_id":"u%07d","channels":%s%s,"campaign_id":"c%d"%s}',
    prefix, tid, counter, math.random(0, users - 1),
    channel_sets[math.random(#channel_sets)], cat, math.random(0, 49), extra)
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status ~= 200 then
    n_bad = n_bad + 1
    return
  end
  local d = string.match(body, '"decision":"(%a+)"')
  if d and model ~= "" and not string.find(body, model_field, 1, true) then
    n_other_model = n_other_model + 1
  end
  if d == "send" then
    n_send = n_send + 1
  elseif d == "defer" then
    n_defer = n_defer + 1
  elseif d == "suppress" then
    n_suppress = n_suppress + 1
  else
    n_other = n_other + 1
  end
end

function done(summary, latency, requests)
  local t = { send = 0, defer = 0, suppress = 0, other = 0, bad = 0, other_model = 0 }
  for _, thread in ipairs(threads) do
    t.send = t.send + thread:get("n_send")
    t.defer = t.defer + thread:get("n_defer")
    t.suppress = t.suppress + thread:get("n_suppress")
    t.other = t.other + thread:get("n_other")
    t.bad = t.bad + thread:get("n_bad")
    t.other_model = t.other_model + thread:get("n_other_model")
  end
  local e = summary.errors
  io.write(string.format(
    'SENDWISE_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"send":%d,"defer":%d,"suppress":%d,"other":%d,"non200":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,"other_model":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, t.send, t.defer, t.suppress, t.other,
    t.bad, e.connect, e.read, e.write, e.timeout, t.other_model))
end
