-- wrk script: HTTP/1.1 pipelining.  Each connection writes DEPTH requests
-- in one go and waits for all their responses before the next batch; wrk
-- counts (and times) every response, so requests/s stays comparable with
-- unpipelined runs.
--   wrk -s bench/pipeline.lua http://127.0.0.1:PORT/plaintext -- DEPTH
local batch

function init(args)
  local depth = tonumber(args[1]) or 16
  if depth < 1 then depth = 1 end
  local one = wrk.format(nil, wrk.path)
  batch = string.rep(one, depth)
end

function request()
  return batch
end
