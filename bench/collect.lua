-- wrk script for the collect API: POST to the URL's path, rotating HTTP Basic credentials
-- over many systems so that concurrent requests update different rows, as a fleet does.
--
--   wrk -s bench/collect.lua URL -- AUTH_FILE [BODY_FILE [PLACEHOLDER]]
--
-- AUTH_FILE holds one "Basic <base64>" value per line. Without BODY_FILE the body is empty
-- and there is no Content-Type (the heartbeat, as curl sends it). With BODY_FILE its bytes
-- are sent as application/json (the inventory); every occurrence of PLACEHOLDER in it is
-- replaced by a counter, so each inventory differs a little from the previous one.

local started = 0

function setup(thread)
  thread:set("offset", started)
  started = started + 1
end

local auths = {}
local prepared = {}
local body = nil
local placeholder = nil
local n = 0

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      auths[#auths + 1] = line
    end
  end
  assert(#auths > 0, "no credentials in " .. args[1])
  if args[2] then
    local f = assert(io.open(args[2], "rb"))
    body = f:read("*a")
    f:close()
    placeholder = args[3]
  else
    -- Heartbeats are tiny: format them once, send them as they are.
    for i, auth in ipairs(auths) do
      prepared[i] = wrk.format("POST", nil, { ["Authorization"] = auth })
    end
  end
  -- Threads start far apart in the list so they do not hit the same systems in step.
  n = ((offset or 0) * 7919) % #auths
end

function request()
  n = n + 1
  local i = n % #auths + 1
  if not body then
    return prepared[i]
  end
  local payload = body
  if placeholder then
    payload = body:gsub(placeholder, tostring(1000000 + n))
  end
  return wrk.format("POST", nil, {
    ["Authorization"] = auths[i],
    ["Content-Type"] = "application/json",
  }, payload)
end
