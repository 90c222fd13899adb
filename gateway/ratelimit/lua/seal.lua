-- After a replica decided limits in process and Redis is back: carry the fallback's buckets over. Each key's TAT
-- becomes at least now + the time its in-process bucket needs to be full again, unless Redis already holds a later
-- TAT. Redis's TATs are from before the outage (or gone, after a restart) and would otherwise admit a whole burst
-- again on top of what the fallback admitted.
-- KEYS: GCRA keys; ARGV: per key, microseconds until its bucket is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local ahead = tonumber(ARGV[i])
  local new = now + ahead
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if cur < new then
    redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX', math.ceil(ahead / 1000) + 1000)
  end
end
return 1
