-- wrk script for a sign-in storm: wrong passwords POSTed to /admin/login/ as a botnet
-- would, each request naming another account and coming from another address (the
-- server trusts one proxy, so X-Forwarded-For is the client). No account or address
-- fails twice, so the sign-in lockout never stops one: every request costs a password
-- check unless the hashing bound refuses it.
--
--   wrk -s bench/login_storm.lua URL
--
-- The CSRF cookie and form field carry the same unmasked secret, which Django accepts.

local started = 0

function setup(thread)
  thread:set("tid", started)
  started = started + 1
end

local token = "stormstormstormstormstormstorm12"
local n = 0

function request()
  n = n + 1
  local body = "csrfmiddlewaretoken=" .. token
    .. "&username=storm-" .. tid .. "-" .. n .. "%40example.com"
    .. "&password=wrong-" .. n .. "&next=%2Fadmin%2F"
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = "csrftoken=" .. token,
    ["X-Forwarded-For"] = string.format("10.%d.%d.%d", tid, math.floor(n / 250) % 250, n % 250),
  }
  return wrk.format("POST", "/admin/login/", headers, body)
end
