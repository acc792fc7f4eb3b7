-- bench_write.lua -- wrk script for bench_write.sh: POST /api/write batches
--
-- One connection per wrk thread (run with -t N -c N), each thread its own client_id and rising
-- op ids, so every op is new. Environment: BW_TOKEN (bearer token), BW_OPS (ops per batch),
-- BW_MODE ("insert": PUT of new rows; "patch": PATCH of rows p<thread>-<k> made by setup;
-- "patch_lww": PATCH of rows q<thread>-<k> of a table merging both columns with lww, each op
-- with "old" and a "metadata" timestamp, as a PowerSync client with trackPrevious and
-- trackMetadata sends them).
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  ops = tonumber(os.getenv("BW_OPS") or "100")
  mode = os.getenv("BW_MODE") or "insert"
  run = os.getenv("BW_RUN") or "r"
  token = os.getenv("BW_TOKEN")
  next_op = 1
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  applied = 0
end

function request()
  local parts = {}
  for i = 1, ops do
    local op = next_op
    next_op = next_op + 1
    if mode == "patch_lww" then
      -- old: what this thread wrote to the row 1000 ops before (each thread owns its rows)
      local prev_label, prev_n = "seed", 0
      if op > 1000 then prev_label, prev_n = "v" .. (op - 1000), op - 1000 end
      parts[i] = string.format(
        '{"op_id":%d,"op":"PATCH","type":"bench_lww","id":"q%d-%d","data":{"label":"v%d","n":%d},"old":{"label":"%s","n":%d},"metadata":"{\\"ts\\":\\"2026-01-01T00:00:00.%06dZ\\"}"}',
        op, tid, op % 1000, op, op, prev_label, prev_n, op % 1000000)
    elseif mode == "patch" then
      parts[i] = string.format(
        '{"op_id":%d,"op":"PATCH","type":"bench","id":"p%d-%d","data":{"label":"v%d","n":%d}}',
        op, tid, op % 1000, op, op)
    else
      parts[i] = string.format(
        '{"op_id":%d,"op":"PUT","type":"bench","id":"%s-%d-%d","data":{"label":"item %d","owner":"bench","n":%d}}',
        op, run, tid, op, op, op)
    end
  end
  local body = '{"client_id":"' .. run .. '-' .. tid .. '","batch":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format(nil, "/api/write", nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. string.sub(body, 1, 200) .. "\n")
  end
end
