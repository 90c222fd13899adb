"""The Lua script that owns a breaker's shared state in Redis (one hash per upstream instance).

Every operation is one atomic script call: compare the generation, change the state, publish the new state on
the breakers channel. Redis's own clock (`TIME`) stamps the open period, so replicas on hosts with skewed clocks
still agree on when it ends; the published message carries the remaining milliseconds, not an absolute time.

Ops (ARGV[1]) and their arguments (ARGV[4..]):
  set       expected_gen, new_state, open_ms, trips, reason: a replica's own transition; accepted when the
            replica's generation is not older than the stored one (first writer wins a race)
  acquire   probes, probe_timeout_ms: open period over -> half-open; hand out one of N probe slots
  result    gen, ok, probes, base_ms, multiplier, cap_ms: a probe's outcome; N successes close, a failure reopens
  release   gen: a probe slot given back (the probe never reached the upstream)
  expedite  (none): end the open period now (the health check sees the instance healthy again)
Reply: {state, gen, remaining_ms, trips, granted}.
"""

from __future__ import annotations

BREAKER_LUA = r"""
-- Redis < 5 needs effects replication to write after TIME; a no-op on newer servers
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local op = ARGV[1]
local channel = ARGV[2]
local name = ARGV[3]
local ttl = 86400000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', key, 'state', 'gen', 'until', 'trips', 'probes', 'ok', 'since')
local state = h[1] or 'closed'
local gen = tonumber(h[2]) or 0
local untl = tonumber(h[3]) or 0
local trips = tonumber(h[4]) or 0
local probes = tonumber(h[5]) or 0
local okc = tonumber(h[6]) or 0
local since = tonumber(h[7]) or 0

local function remaining()
  if state == 'open' then return math.max(0, untl - now) end
  return 0
end

local function save(reason)
  redis.call('HSET', key, 'state', state, 'gen', gen, 'until', untl, 'trips', trips,
             'probes', probes, 'ok', okc, 'since', since)
  redis.call('PEXPIRE', key, ttl)
  redis.call('PUBLISH', channel, cjson.encode({k = name, s = state, g = gen, r = remaining(), t = trips,
                                                why = reason}))
end

local function reply(granted)
  return {state, gen, remaining(), trips, granted}
end

local function enter(new_state, open_ms)
  state = new_state
  gen = gen + 1
  probes = 0
  okc = 0
  if new_state == 'open' then untl = now + open_ms else untl = 0 end
  if new_state == 'half_open' then since = now else since = 0 end
end

if op == 'set' then
  local expected = tonumber(ARGV[4])
  if gen > expected then return reply(0) end
  gen = expected
  enter(ARGV[5], tonumber(ARGV[6]))
  trips = tonumber(ARGV[7])
  save(ARGV[8])
  return reply(1)
elseif op == 'acquire' then
  local n = tonumber(ARGV[4])
  local probe_timeout = tonumber(ARGV[5])
  if state == 'closed' then return reply(0) end
  if state == 'open' then
    if now < untl then return reply(0) end
    enter('half_open', 0)
    save('open_elapsed')
  elseif now - since >= probe_timeout then
    enter('half_open', 0)
    save('probe_timeout')
  end
  if probes < n then
    probes = probes + 1
    redis.call('HSET', key, 'probes', probes)
    return reply(1)
  end
  return reply(0)
elseif op == 'result' then
  if tonumber(ARGV[4]) ~= gen or state ~= 'half_open' then return reply(0) end
  if ARGV[5] == '1' then
    okc = okc + 1
    if okc >= tonumber(ARGV[6]) then
      enter('closed', 0)
      trips = 0
      save('probes_succeeded')
    else
      redis.call('HSET', key, 'ok', okc)
    end
  else
    trips = trips + 1
    local period = tonumber(ARGV[7]) * (tonumber(ARGV[8]) ^ math.min(trips - 1, 64))
    enter('open', math.min(period, tonumber(ARGV[9])))
    save('probe_failed')
  end
  return reply(1)
elseif op == 'release' then
  if tonumber(ARGV[4]) == gen and state == 'half_open' and probes > 0 then
    probes = probes - 1
    redis.call('HSET', key, 'probes', probes)
  end
  return reply(1)
elseif op == 'expedite' then
  if state == 'open' and untl > now then
    gen = gen + 1
    untl = now
    save('health_recovered')
  end
  return reply(1)
end
return redis.error_reply('unknown op ' .. tostring(op))
"""
