-- wrk script for bench/httpd_peers.py: send at most MAX requests (the first
-- argument after the URL; wrk alone bounds only the time), and print the
-- run's summary as one JSON line, latencies in microseconds.
--
-- The count is kept in request(), which costs less than a response() hook
-- (that makes wrk hand every response's headers and body to Lua).

local max, sent, req = math.huge, 0, nil

init = function(args)
   max = tonumber(args[1]) or math.huge
   req = wrk.format()      -- method, path and -H headers as given to wrk
end

request = function()
   sent = sent + 1
   if sent > max then
      wrk.thread:stop()
   end
   return req
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %.1f, "p90": %.1f, "p99": %.1f, "max": %.1f, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
