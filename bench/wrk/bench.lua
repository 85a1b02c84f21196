-- One wrk script for every scenario, driven by environment variables set by bench/run.py:
--   BENCH_MODE   get | put | naive_put | cas | incr | bulk
--   BENCH_OPS    set operations per bulk request (bulk mode), ~200-byte values
--   BENCH_PATH   path prefix, e.g. /api/v1/state/  (a key is appended for get/put)
--   BENCH_TOKEN  API token sent as "Authorization: Bearer ..." (empty: no header)
--   BENCH_KEYS   how many seeded keys k0..k<N-1> to spread reads/writes over
-- Run it with as many threads as connections (-t N -c N): each thread then owns exactly
-- one connection, so the per-thread CAS state below is per-connection and CAS never races.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local mode, path, token, nkeys, bulk_body
local counter = 0
local cas_version = 1
ok_count, fail_count = 0, 0

function init(args)
  mode = os.getenv("BENCH_MODE") or "get"
  path = os.getenv("BENCH_PATH") or "/"
  token = os.getenv("BENCH_TOKEN") or ""
  nkeys = tonumber(os.getenv("BENCH_KEYS") or "100")
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  if mode == "bulk" then
    local ops = {}
    local pad = string.rep("x", 160)
    for i = 1, tonumber(os.getenv("BENCH_OPS") or "1000") do
      ops[i] = '{"op":"set","key":"bulk:' .. tid .. ':' .. i .. '","value":{"n":' .. i ..
        ',"pad":"' .. pad .. '","ok":true}}'
    end
    bulk_body = '{"operations":[' .. table.concat(ops, ",") .. ']}'
  end
end

local function key()
  counter = counter + 1
  return "k" .. ((tid * 37 + counter) % nkeys)
end

local function value()
  return '{"n":' .. counter .. ',"name":"bench","tags":["a","b"],"ok":true}'
end

function request()
  if mode == "get" then
    return wrk.format("GET", path .. key())
  elseif mode == "put" then
    local k = key()
    return wrk.format("PUT", path .. k, nil, '{"value":' .. value() .. '}')
  elseif mode == "naive_put" then
    local k = key()
    return wrk.format("PUT", path .. k, nil, '{"key":"' .. k .. '","value":' .. value() .. '}')
  elseif mode == "cas" then
    counter = counter + 1
    return wrk.format("POST", path, nil,
      '{"key":"cas' .. tid .. '","expected_version":' .. cas_version .. ',"new_value":' .. value() .. '}')
  elseif mode == "bulk" then
    return wrk.format("POST", path, nil, bulk_body)
  elseif mode == "incr" then
    return wrk.format("POST", path, nil, '{"key":"counter","by":1}')
  end
end

-- Only CAS needs to read responses (to learn the next version); defining response()
-- for the other modes would make wrk parse every body for nothing.
if (os.getenv("BENCH_MODE") or "") == "cas" then
  function response(status, headers, body)
    if status == 200 then
      ok_count = ok_count + 1
      cas_version = tonumber(string.match(body, '"version":(%d+)')) or cas_version
    else
      fail_count = fail_count + 1
      local current = string.match(body, '"version":(%d+)')
      if current then cas_version = tonumber(current) end
    end
  end
end

function done(summary, latency, requests)
  local ok, fail = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + (thread:get("ok_count") or 0)
    fail = fail + (thread:get("fail_count") or 0)
  end
  io.write(string.format("BENCH_COUNTS ok=%d fail=%d\n", ok, fail))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("BENCH_P%d_US %d\n", p, latency:percentile(p)))
  end
end
