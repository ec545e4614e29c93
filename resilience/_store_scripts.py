"""The Lua scripts a shared store runs on the Redis server (``resilience.redis``).

Every shared decision is one of these scripts, run atomically by the server: no
GET-modify-SET from a client (two writers would lose each other's update), and every time is
the *server's* clock (``redis.call('TIME')``), never a writer's wall clock. Times are
microseconds since the epoch as Lua numbers (doubles: exact below 2**53, i.e. until the year
2255) and are stored with ``%.0f``, never ``tostring`` (which keeps 14 digits).

A circuit is the hash ``{prefix}:circuit:{name}``:

``state``   ``open`` or ``closed`` (a missing key reads as closed, version ``0``)
``opened``  server time the circuit opened (or its last trial failed), microseconds
``window``  the sleep window of the writer that opened it, microseconds (informational)
``version`` bumped by every write; a writer names the version its decision was based on and
            loses if it is not current any more (a stale writer never overwrites news)
``owner``   the process (and circuit) holding the half-open trial lease, and
``until``   when that lease expires (server time, microseconds)

Versions come from the server: ``HINCRBY`` of the field, seeded from the server's clock when
the key does not exist, so that after the store lost its data (a restart without
persistence) every new version is larger than any version handed out before.

A rate limiter's budget is the string ``{prefix}:limiter:{name}[:{key}]``: GCRA's theoretical
arrival time (server microseconds), with a ``PEXPIRE`` at the moment it stops mattering.
"""

from __future__ import annotations

__all__ = ["GCRA", "LEASE", "PING", "REFUND", "SYNC"]

# Helpers every circuit script starts with.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seed = t[1] .. string.format('%06d', tonumber(t[2]))
local function bump(key)
  if redis.call('HEXISTS', key, 'version') == 0 then
    redis.call('HSET', key, 'version', seed)
  end
  return redis.call('HINCRBY', key, 'version', 1)
end
local function fmt(x) return string.format('%.0f', x) end
local function view(key, won)
  local h = redis.call('HMGET', key, 'state', 'opened', 'version', 'owner', 'until')
  return {h[1] or 'closed', h[2] or '0', h[3] or '0', h[4] or '', h[5] or '0', won}
end
"""

#: The store thread's one round trip per ``poll_interval``: for every attached circuit, one
#: operation (five ARGV each: op, seen version, owner, a, b), then its shared view.
#:
#: ``r``  read only
#: ``o``  a local trip (``a`` = sleep window us): open with the server's time if ``seen`` is
#:        current and the circuit is not open already (an open circuit is never re-stamped)
#: ``s``  the trial this owner holds the lease for (``seen`` = the lease's version) succeeded:
#:        closed everywhere
#: ``f``  that trial failed (``a`` = sleep window us): open again from the server's time now
#: ``p``  re-publish a local open state (``a`` = sleep window us, ``b`` = its age in us), only
#:        if the key does not exist: the store lost its data
#:
#: KEYS: the circuits' keys.
#: Returns {seconds, microseconds, {state, opened, version, owner, until, won}...}
SYNC = _COMMON + """
local out = {t[1], t[2]}
for i, key in ipairs(KEYS) do
  local j = (i - 1) * 5
  local op, seen, owner = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local a, b = tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local won = 0
  if op ~= 'r' then
    local h = redis.call('HMGET', key, 'state', 'version', 'owner')
    local state, version = h[1] or 'closed', h[2] or '0'
    if op == 'o' then
      if version == seen and state ~= 'open' then
        redis.call('HSET', key, 'state', 'open', 'opened', fmt(now), 'window', fmt(a))
        redis.call('HDEL', key, 'owner', 'until')
        bump(key)
        won = 1
      end
    elseif op == 's' or op == 'f' then
      if version == seen and h[3] == owner then
        if op == 's' then
          redis.call('HSET', key, 'state', 'closed')
          redis.call('HDEL', key, 'opened', 'window', 'owner', 'until')
        else
          redis.call('HSET', key, 'state', 'open', 'opened', fmt(now), 'window', fmt(a))
          redis.call('HDEL', key, 'owner', 'until')
        end
        bump(key)
        won = 1
      end
    elseif op == 'p' then
      if redis.call('EXISTS', key) == 0 then
        redis.call('HSET', key, 'state', 'open', 'opened', fmt(now - b), 'window', fmt(a))
        bump(key)
        won = 1
      end
    end
  end
  out[#out + 1] = view(key, won)
end
return out
"""

#: Take the half-open trial lease of one circuit: the rare admission path of a process whose
#: sleep window is over. Granted when the circuit is open, ``seen`` is its current version
#: (or the lease is already this owner's), the sleep window is over by the server's clock
#: and nobody else holds an unexpired lease. The lease is not a lock on calls: a refusal is
#: answered at once, and the lease expires by itself.
#:
#: KEYS[1]: the circuit; ARGV: owner, seen version, lease duration us, sleep window us
#: Returns {seconds, microseconds, granted (1, 0; 2: the circuit is closed), state, opened,
#: version, owner, until}
LEASE = _COMMON + """
local key, owner, seen = KEYS[1], ARGV[1], ARGV[2]
local ttl, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', key, 'state', 'opened', 'version', 'owner', 'until')
local state, opened, version = h[1] or 'closed', tonumber(h[2] or '0'), h[3] or '0'
local holder, untilv = h[4] or '', tonumber(h[5] or '0')
local granted = 0
if state ~= 'open' then
  granted = 2
elseif (version == seen or holder == owner) and now >= opened + window
    and (holder == '' or holder == owner or untilv <= now) then
  redis.call('HSET', key, 'owner', owner, 'until', fmt(now + ttl))
  bump(key)
  granted = 1
end
local v = view(key, granted)
return {t[1], t[2], granted, v[1], v[2], v[3], v[4], v[5]}
"""

#: One GCRA decision on the server's clock. ARGV: interval us, tolerance us (burst - 1
#: intervals), max wait us (< 0: never reserve). Returns {0, 0} granted now, {1, wait us}
#: reserved (due in that long), {2, wait us} refused (its turn is that far away).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tau, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local eps = interval * 1e-6
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tau - now
local code = 0
if wait > eps then
  if max_wait < 0 or wait - max_wait > eps then
    return {2, math.ceil(wait)}
  end
  code = 1
end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1)
if code == 0 then return {0, 0} end
return {1, math.ceil(wait)}
"""

#: Give one reserved permit back (a waiter cancelled before its turn): best effort, the
#: theoretical arrival time moves back by one interval (never before now). ARGV: interval us.
REFUND = """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = tat - tonumber(ARGV[1])
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
return 1
"""

#: A health probe that needs no key (used while no circuit is attached).
PING = "return redis.call('PING')"
