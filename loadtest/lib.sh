# lib.sh: what bench.sh and cluster.sh share. Source it; it needs DEVICES.

# wrk scripts: requests are formatted once in init, so wrk's Lua costs
# little per request. Two rounds of values per device so windows move.
lua() { # $1 = samples per request, $2 = 1 for devices in random order; uses DEVICES, and LUA_METRICS (two names, default "temp hum")
	local m0 m1
	read -r m0 m1 <<<"${LUA_METRICS:-temp hum}"
	cat <<LUA
local reqs, n, i = {}, 0, 0
local devices, per, random = $DEVICES, $1, ${2:-0} == 1
function init(args)
  math.randomseed(42)
  for round = 0, 1 do
    for first = 0, devices - 1, per do
      local parts = {}
      for k = first, math.min(first + per, devices) - 1 do
        local d = k
        if random then d = math.random(0, devices - 1) end
        parts[#parts + 1] = string.format('{"device":"sensor-%d","ts":1732560000123,"metrics":{"$m0":%.2f,"$m1":%.2f}}',
          d, 20 + ((d + round) % 7) * 0.5, 40 + (d * 3 + round) % 11)
      end
      local body = table.concat(parts, ",")
      if per > 1 then body = "[" .. body .. "]" end
      n = n + 1
      reqs[n] = wrk.format("POST", "/api/v1/ingest", {["Content-Type"] = "application/json"}, body)
    end
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50us=%d p99us=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
LUA
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
