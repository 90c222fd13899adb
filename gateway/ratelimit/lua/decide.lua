-- Decide every rate tier and take every concurrency slot of one request, atomically, on Redis's clock.
-- A port of gateway/ratelimit/gcra.py `decide` (keep them in step; tests/integration/test_ratelimit_redis.py
-- compares them answer by answer).
--
-- KEYS: n GCRA keys (value: TAT in microseconds), then m slot keys (sorted set: member -> expiry in microseconds)
-- ARGV: n, m, slot ttl (microseconds), slot member,
--       then 4 per GCRA key: emission interval T (us), burst (units), cost (units), shadow ("1"/"0"),
--       then 1 per slot key: cap
-- Returns: {admitted, index of the refusing slot key (0 = none), then 4 per GCRA key:
--           allowed, remaining, retry after (us), reset (us)}
-- Nothing is written unless the request is admitted.
local EPS = 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local member = ARGV[4]
local admitted = 1
local out = {0, 0}
local news = {}
local a = 5
-- one MGET instead of n GETs: each redis.call from Lua costs about as much as the command itself
local tats = {}
if n > 0 then tats = redis.call('MGET', unpack(KEYS, 1, n)) end
for i = 1, n do
  local interval = tonumber(ARGV[a])
  local burst = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 2])
  local shadow = ARGV[a + 3] == '1'
  a = a + 4
  local tau = burst * interval
  local tat = tonumber(tats[i] or '0')
  local base = now
  if tat ~= nil and tat > now then base = tat end
  local new = base + cost * interval
  local diff = new - now
  local o = 3 + (i - 1) * 4
  -- EPS (1 us) absorbs rounding: times near 1.8e15 us are doubles with a 0.25 us resolution
  if diff <= tau + EPS then
    news[i] = new
    out[o] = 1
    out[o + 1] = math.floor((tau - diff + EPS) / interval)
    out[o + 2] = 0
    out[o + 3] = math.ceil(diff)
  else
    news[i] = false
    local rem = math.floor((tau - (base - now) + EPS) / interval)
    if rem < 0 then rem = 0 end
    out[o] = 0
    out[o + 1] = rem
    out[o + 2] = math.ceil(diff - tau)
    out[o + 3] = math.ceil(base - now)
    if not shadow then admitted = 0 end
  end
end
if admitted == 1 then
  for j = 1, m do
    local key = KEYS[n + j]
    local cap = tonumber(ARGV[a + j - 1])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= cap then
      admitted = 0
      out[2] = j
      break
    end
  end
end
out[1] = admitted
if admitted == 1 then
  for i = 1, n do
    if news[i] then
      -- keep the key only while it still remembers something (an expired TAT equals a missing one)
      local px = math.ceil((news[i] - now) / 1000) + 1000
      -- %.17g round-trips the double exactly: no rounding drift from one request to the next
      redis.call('SET', KEYS[i], string.format('%.17g', news[i]), 'PX', px)
    end
  end
  local pttl = math.ceil(ttl / 1000) + 1000
  for j = 1, m do
    local key = KEYS[n + j]
    redis.call('ZADD', key, string.format('%.0f', now + ttl), member)
    redis.call('PEXPIRE', key, pttl)
  end
end
return out
