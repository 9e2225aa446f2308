-- POST OIP requests in the binary tensor extension: WRK_BODIES is a file of fixed-size records of
-- WRK_BODY_BYTES each (a JSON header of WRK_HEADER_BYTES, then the raw tensor), sent round-robin.
-- Prints the same WRKJSON summary as post.lua.
wrk.method = "POST"
local f = assert(io.open(os.getenv("WRK_BODIES"), "rb"))
local all = f:read("*a")
f:close()
local size = tonumber(os.getenv("WRK_BODY_BYTES"))
local headers = {["Content-Type"] = "application/octet-stream",
                 ["Inference-Header-Content-Length"] = os.getenv("WRK_HEADER_BYTES")}
local bodies = {}
for i = 1, #all, size do bodies[#bodies + 1] = all:sub(i, i + size - 1) end
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, headers, bodies[(counter % #bodies) + 1])
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
