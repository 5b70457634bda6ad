-- wrk script: POST pre-generated signed webhooks, cycling through them, and print a JSON summary.
-- Usage: wrk -t1 -c32 -d10s -s bench/wrk/webhooks.lua http://127.0.0.1:PORT -- CORPUS_FILE [PATH]
-- CORPUS_FILE: one webhook per line, "<X-Hub-Signature-256>\t<body>" (bench/webhooks.py).

local sigs, bodies = {}, {}
local n, i = 0, 0
local path = "/webhooks/meta"

function init(args)
  local file = args[1]
  if args[2] then path = args[2] end
  for line in io.lines(file) do
    local tab = line:find("\t", 1, true)
    n = n + 1
    sigs[n] = line:sub(1, tab - 1)
    bodies[n] = line:sub(tab + 1)
  end
  -- each thread starts at a different point of the corpus
  i = (tonumber(index) or 0) * 997 % n  -- `index` is set by setup() in this thread's globals
end

function setup(thread)
  thread:set("index", tostring(setup_count or 0))
  setup_count = (setup_count or 0) + 1
end

function request()
  i = i % n + 1
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "facebookexternalua",
    ["X-Hub-Signature-256"] = sigs[i],
  }, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
