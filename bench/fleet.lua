-- wrk script for fleet-scale loads: many distinct systems, an offered rate or a wave.
--
--   wrk -tTHREADS -s bench/fleet.lua URL -- AUTH_FILE MODE RATE THREADS [BODY_FILE PLACEHOLDER]
--
-- AUTH_FILE holds one "Basic <base64>" value per line, one per system.
-- MODE "rate": the systems in turn, at RATE requests/s in all (open loop as far as the
--   connections allow: each thread keeps its own schedule, and a connection whose answer
--   came late sends at once, so a slow server does not lower what is offered).
-- MODE "once": every system exactly once, as fast as the connections go (RATE ignored);
--   a thread that has sent its share sleeps until wrk stops.
-- Every request carries X-Request-Start (t=<unix ms> when it was sent), the stamp a proxy
-- in front of the service adds, so queueing in the server's backlog is measured.
-- With BODY_FILE the body is its bytes (application/json) with PLACEHOLDER replaced by a
-- counter. Answers are counted per status; done() prints "status <code> <count>" lines.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } fleet_timespec;
int clock_gettime(int clock, fleet_timespec *out);
]]
local now_spec = ffi.new("fleet_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, now_spec) -- CLOCK_REALTIME: the stamp is wall-clock time
  return tonumber(now_spec.tv_sec) * 1000 + tonumber(now_spec.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local auths = {}
local mode, interval, body, placeholder
local next_due, cursor, done_sending
local counter = 0
statuses = {}

function init(args)
  local all = {}
  for line in io.lines(args[1]) do
    if line ~= "" then all[#all + 1] = line end
  end
  assert(#all > 0, "no credentials in " .. args[1])
  mode = args[2]
  local threads_total = tonumber(args[4])
  -- Each thread takes every Nth system: no two threads send for the same system.
  for i = (index or 0) + 1, #all, threads_total do
    auths[#auths + 1] = all[i]
  end
  interval = 1000 * threads_total / tonumber(args[3])
  if args[5] then
    local f = assert(io.open(args[5], "rb"))
    body = f:read("*a")
    f:close()
    placeholder = args[6]
  end
  next_due = now_ms()
  cursor = 0
  done_sending = false
end

function delay()
  if mode == "once" then
    if done_sending then return 3600000 end
    return 0
  end
  local wait = next_due - now_ms()
  next_due = next_due + interval
  if wait < 0 then
    -- Late (the answer took longer than the schedule allowed): send now, and do not let
    -- the schedule run ahead of the clock by more than one interval.
    if next_due < now_ms() then next_due = now_ms() end
    return 0
  end
  return wait
end

function request()
  cursor = cursor + 1
  if cursor > #auths then
    -- "once": a connection that was already due when the last system was sent repeats
    -- it (recorded once all the same); "rate": round again.
    cursor = mode == "once" and #auths or 1
  end
  if mode == "once" and cursor == #auths then done_sending = true end
  local headers = {
    ["Authorization"] = auths[cursor],
    ["X-Request-Start"] = string.format("t=%d", now_ms()),
  }
  if body then
    counter = counter + 1
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", nil, headers, (string.gsub(body, placeholder, tostring(counter))))
  end
  return wrk.format("POST", nil, headers)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for code, n in pairs(counts) do
      all[code] = (all[code] or 0) + n
    end
  end
  for code, n in pairs(all) do
    io.write(string.format("status %d %d\n", code, n))
  end
end
