-- Push the expiry of held concurrency slots forward (the owner is alive), on Redis's clock.
-- KEYS: slot keys; ARGV: ttl (microseconds), then one member per key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.0f', now + ttl)
local pttl = math.ceil(ttl / 1000) + 1000
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', expiry, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', KEYS[i], pttl)
  end
end
return 1
