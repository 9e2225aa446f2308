-- POST to the paths and bodies listed (one "path<TAB>body" per line) in the file named by WRK_BODIES,
-- in order and round-robin: the bench writes them already drawn from its distribution (Zipf over many
-- endpoints). Prints the same WRKJSON summary as post.lua.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local paths, bodies = {}, {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  local tab = string.find(line, "\t", 1, true)
  paths[#paths + 1] = string.sub(line, 1, tab - 1)
  bodies[#bodies + 1] = string.sub(line, tab + 1)
end
local counter = 0

setup = function(thread)
  thread:set("counter", math.random(#paths))  -- each wrk thread starts elsewhere in the sequence
end

request = function()
  counter = counter + 1
  local i = (counter % #paths) + 1
  return wrk.format(nil, paths[i], nil, bodies[i])
end

local CDF = {1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 100}

done = function(summary, latency, requests)
  local e = summary.errors
  local cdf = {}
  for i, p in ipairs(CDF) do cdf[i] = string.format("[%g, %d]", p, latency:percentile(p)) end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "cdf_us": [%s]}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), table.concat(cdf, ", ")))
end
