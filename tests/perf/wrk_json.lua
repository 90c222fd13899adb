-- wrk script of the bench's JSON scenario (tests/perf/loadgen.py, mode json-wrk): keep-alive POSTs of tools/call
-- in one initialized MCP session, each with a JSON-RPC id of its own (thread number + counter: wrk's threads have
-- separate Lua states). Headers come as script arguments ("Name: value"). An answer is good only with status 200
-- and a `"result"` in its body: a refusal may come as 200 with a JSON-RPC error (compat_status_200), which wrk's
-- own status count misses. `done` prints one JSON line for the Python side: counts, errors and latency
-- percentiles in microseconds.

local thread_no = 0
local threads = {}

function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
  table.insert(threads, thread)
end

local counter = 0
local prefix = ""

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([^:]+):%s*(.*)$")
    if k then
      wrk.headers[k] = v
    end
  end
  wrk.method = "POST"
  prefix = '{"jsonrpc":"2.0","id":"' .. tostring(tid) .. "-"
end

local suffix = '","method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'

function request()
  counter = counter + 1
  return wrk.format("POST", nil, nil, prefix .. counter .. suffix)
end

bad = 0

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"result"', 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local answers_bad = 0
  for _, t in ipairs(threads) do
    answers_bad = answers_bad + t:get("bad")
  end
  io.write(string.format(
    '\nWRK-JSON {"requests":%d,"duration_us":%d,"errors_answer":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, answers_bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
