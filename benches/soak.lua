-- wrk script of the soak (issue 16): an hour of telemetry for NAMES pipeline
-- names that rotate through; benches/soak.sh runs it.
--
--   wrk -t2 -c2 -d30m -s benches/soak.lua http://127.0.0.1:PORT/ingest -- LINES NAMES LIFE_S SAMPLES THREADS DIR
--
-- Name j (0 <= j < NAMES, "soak-n<j>") enters at j x HOUR / NAMES and is live
-- for LIFE_S seconds of sample time (default 360), then silent for good, so
-- that the daemon must evict it; at any moment about NAMES x LIFE_S / 3600
-- names are live. wrk thread w (of T) owns the names j with j mod T = w, so
-- each name's samples arrive in time order (one connection per thread, -tN -cN).
-- Every request is LINES JSON lines (default 1000) at the thread's clock, one
-- metric per line, round-robin over the thread's live names, with healthy
-- values; the clock then moves on so that every live name gets about SAMPLES
-- samples per 60 s window. A thread stops once its clock has covered the hour
-- and two more windows (so the last names' windows close too), and writes
-- DIR/done.<thread> (wrk itself runs until -d or SIGINT).
--
-- At the end it prints the status counts (anything but 200 fails the soak),
-- the sample time covered and samples/s = requests/s x LINES.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "wrk_common.lua")
local METRICS = common.METRICS
local NMETRICS = #METRICS
local WINDOW_MS = common.WINDOW_MS
local HOUR_MS = 3600000
local START_MS = common.START_MS

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- Per thread (globals, so that done() can read them through thread:get).
lines = 1000
counts = {}
covered_ms = 0
local names, life_ms, step_ms, nthreads
local k = 0 -- requests made by this thread
local g = 0 -- lines made by this thread
local t = 0 -- sample time since START_MS
local metric_part = {}
local name_part = {}

function init(args)
  lines = tonumber(args[1]) or 1000
  names = tonumber(args[2]) or 10000
  life_ms = (tonumber(args[3]) or 360) * 1000
  local samples = tonumber(args[4]) or 1000
  nthreads = tonumber(args[5]) or 1
  done_dir = args[6] or "."
  -- About NAMES x LIFE / HOUR names live, LIVE / T per thread; each gets
  -- LINES / (LIVE / T) samples per request and SAMPLES per window.
  local live = names * life_ms / HOUR_MS / nthreads
  step_ms = WINDOW_MS * lines / (samples * live)
  for i = 1, NMETRICS do
    metric_part[i] = string.format('"%s":%s}}\n', METRICS[i][1], METRICS[i][2])
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-ndjson"
end

local function name_of(j)
  local s = name_part[j]
  if not s then
    s = string.format(',"pipeline":"soak-n%d","metrics":{', j)
    name_part[j] = s
  end
  return s
end

function request()
  -- The thread's live names at t: entered (j x HOUR / NAMES <= t) and not yet
  -- gone silent (t < j x HOUR / NAMES + LIFE), and j mod T = this thread.
  local lo = math.max(0, math.ceil((t - life_ms) * names / HOUR_MS))
  local hi = math.min(names - 1, math.floor(t * names / HOUR_MS))
  lo = lo + ((id - lo) % nthreads)
  local count = 0
  if hi >= lo then
    count = math.floor((hi - lo) / nthreads) + 1
  end
  local ts = string.format('{"ts":%.0f', START_MS + t)
  local parts = {}
  for l = 1, lines do
    local j, m
    if count > 0 then
      j = lo + (g % count) * nthreads
      m = math.floor(g / count) % NMETRICS + 1
    else
      j = id % names
      m = 1
    end
    parts[#parts + 1] = ts
    parts[#parts + 1] = name_of(j)
    parts[#parts + 1] = metric_part[m]
    g = g + 1
  end
  k = k + 1
  t = t + step_ms
  covered_ms = t
  return wrk.format(nil, nil, nil, table.concat(parts))
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if t > HOUR_MS + 2 * WINDOW_MS and not finished then
    -- wrk runs for its -d whatever its threads do: tell soak.sh, which
    -- then stops wrk with SIGINT (wrk prints its summary on SIGINT).
    finished = true
    local f = io.open(string.format("%s/done.%d", done_dir, id), "w")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local tot = common.totals(threads, summary)
  local covered = HOUR_MS * 10
  for _, th in ipairs(threads) do
    covered = math.min(covered, th:get("covered_ms"))
  end
  common.print_rate("soak", summary, tot)
  io.write(string.format("soak: sample time covered %.1f min (every thread)\n", covered / 60000))
  io.write(string.format("soak: status counts {%s}; not 200: %d; socket errors: %d\n",
    tot.statuses, tot.bad, tot.socket_errors))
  common.print_latency("soak", latency)
end
