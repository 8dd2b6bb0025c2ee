-- What benches/ingest.lua and benches/soak.lua share (loaded with dofile from
-- the directory of the script that wrk runs): the healthy metric values every
-- line carries, and the summary printed in done().

local M = {}

-- One metric per line, round-robin: name and a healthy value taken from a
-- simulated healthy window.
M.METRICS = {
  { "glue.driver.aggregate.numFailedTasks", "0" },
  { "glue.ALL.jvm.heap.usage", "0.4753" },
  { "glue.ALL.system.cpuSystemLoad", "0.5189" },
  { "glue.driver.aggregate.elapsedTime", "46672" },
  { "glue.driver.aggregate.recordsRead", "1000" },
  { "glue.driver.ExecutorAllocationManager.executors.numberAllExecutors", "10" },
  { "glue.driver.skewness.job", "1.3649" },
  { "glue.error.ALL", "0" },
  { "glue.error.OUT_OF_MEMORY_ERROR", "0" },
  { "pipeline.latency.p95", "59.22" },
  { "pipeline.errors.upstream5xx", "1" },
  { "pipeline.errors.timeout", "0" },
  { "pipeline.errors.schemaMismatch", "0" },
  { "pipeline.errors.dataQuality", "0" },
  { "pipeline.errors.sink", "0" },
  { "pipeline.records.in", "1000" },
  { "pipeline.records.delivered", "1000" },
  { "pipeline.records.deadLettered", "0" },
  { "pipeline.records.expired", "0" },
  { "pipeline.backlog.records", "0" },
  { "pipeline.ingest.throttled", "0" },
}
M.WINDOW_MS = 60000
M.START_MS = 1795000020000 -- a whole minute (2026-11-18), in the past of the wall clock

-- The run's totals over every thread (each keeps `counts` and `lines` as
-- globals): status counts `total`, their text `statuses` ("200: 5, 422: 1"),
-- `bad` (answers other than 200), `socket_errors`, `lines` per request,
-- `secs` of wall time and `rps` requests/s.
function M.totals(threads, summary)
  local total = {}
  for _, th in ipairs(threads) do
    for status, n in pairs(th:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  local bad = 0
  for status, n in pairs(total) do
    parts[#parts + 1] = string.format("%d: %d", status, n)
    if status ~= 200 then
      bad = bad + n
    end
  end
  table.sort(parts)
  local secs = summary.duration / 1e6
  return {
    total = total,
    statuses = table.concat(parts, ", "),
    bad = bad,
    socket_errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    lines = tonumber(threads[1]:get("lines")),
    secs = secs,
    rps = summary.requests / secs,
  }
end

-- "TAG: N requests of L lines in S s: R requests/s = X samples/s".
function M.print_rate(tag, summary, t)
  io.write(string.format("%s: %d requests of %d lines in %.2f s: %.0f requests/s = %.0f samples/s\n",
    tag, summary.requests, t.lines, t.secs, t.rps, t.rps * t.lines))
end

-- "TAG: latency p50 .. us, p99 .. us, max .. us".
function M.print_latency(tag, latency)
  io.write(string.format("%s: latency p50 %.0f us, p99 %.0f us, max %.0f us\n",
    tag, latency:percentile(50), latency:percentile(99), latency.max))
end

return M
