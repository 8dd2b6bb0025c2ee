-- wrk script for `POST /ingest` of the sidecar (issue 7); benches/ingest.sh runs it.
--
--   wrk -t4 -c4 -d15s -s benches/ingest.lua http://127.0.0.1:PORT/ingest -- LINES PIPELINES SAMPLES RUN
--
-- Every request is a body of LINES JSON lines (default 1000), one sample of one
-- metric per line, as a CloudWatch-style pusher sends them:
--   {"ts":1795000000000,"pipeline":"r1-w2-p17","metrics":{"pipeline.latency.p95":59.22}}
-- Every wrk thread has its own PIPELINES pipelines (default 100), named after the
-- run and the thread, and its own clock: all lines of a request carry the
-- thread's current time, which then moves on so that each pipeline gets about
-- SAMPLES samples (default 100) per 60 s window. Windows therefore keep closing
-- (one per SAMPLES samples) and the daemon keeps deciding. The metric of line g
-- of a thread (counting from its first request) is metric (g / PIPELINES) mod 21,
-- so every window sees every metric, with healthy values taken from a simulated
-- healthy window.
--
-- Why nothing is ever late (422): run one connection per thread (-t N -c N).
-- wrk then sends a thread's next request only after the answer to the last one,
-- and no other thread writes to its pipelines, so every pipeline's samples
-- arrive in time order.
--
-- At the end it prints the status counts (any status other than 200 is a
-- failure of the run) and samples/s = requests/s x LINES.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "wrk_common.lua")
local METRICS = common.METRICS
local NMETRICS = #METRICS
local WINDOW_MS = common.WINDOW_MS
local START_MS = common.START_MS

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

-- Per thread (globals, so that done() can read them through thread:get).
lines = 1000
counts = {}
local pipelines, step_ms, run
local variants = {}
local k = 0 -- requests made by this thread
local ts = START_MS

function init(args)
  lines = tonumber(args[1]) or 1000
  pipelines = tonumber(args[2]) or 100
  local samples = tonumber(args[3]) or 100
  run = args[4] or "r1"
  -- LINES lines per request over PIPELINES pipelines: LINES / PIPELINES samples of
  -- each per request; SAMPLES of them per window.
  step_ms = WINDOW_MS * lines / (samples * pipelines)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-ndjson"
end

-- The body of request k without its timestamp: fragments to be joined with it.
-- The pattern of (pipeline, metric) repeats every PIPELINES x 21 lines, so
-- there are at most that many distinct bodies; each is built once.
local function fragments(first)
  local key = first % (pipelines * NMETRICS)
  local f = variants[key]
  if f then
    return f
  end
  f = { '{"ts":' }
  for l = 0, lines - 1 do
    local g = first + l
    local p = g % pipelines
    local m = METRICS[math.floor(g / pipelines) % NMETRICS + 1]
    local next_line = (l < lines - 1) and '\n{"ts":' or "\n"
    f[#f + 1] = string.format(',"pipeline":"%s-w%d-p%d","metrics":{"%s":%s}}%s', run, id, p, m[1], m[2], next_line)
  end
  variants[key] = f
  return f
end

function request()
  local f = fragments(k * lines)
  local body = table.concat(f, string.format("%.0f", math.floor(ts)))
  k = k + 1
  ts = ts + step_ms
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local t = common.totals(threads, summary)
  common.print_rate("ingest", summary, t)
  io.write(string.format("ingest: status counts {%s}; 422: %d; not 200: %d; socket errors: %d\n",
    t.statuses, t.total[422] or 0, t.bad, t.socket_errors))
  common.print_latency("ingest", latency)
end
