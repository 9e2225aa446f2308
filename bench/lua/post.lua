-- POST the JSON bodies listed (one per line) in the file named by WRK_BODIES,
-- round-robin, and print a machine-readable summary at the end. WRK_STICKY=1 adds an
-- X-Routing-Key header from 1,000 simulated users.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local sticky = os.getenv("WRK_STICKY") == "1"
local counter = 0

request = function()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  if sticky then
    return wrk.format(nil, nil, {["Content-Type"] = "application/json",
                                 ["X-Routing-Key"] = "user-" .. (counter % 1000)}, body)
  end
  return wrk.format(nil, nil, nil, body)
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
