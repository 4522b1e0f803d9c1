"""The Lua scripts that keep the replicas' shared state in Redis, each atomic on the server.

Keys of one deployment (`<prefix><kind>:<deployment label>`):

| kind | type | holds |
|---|---|---|
| `win` | sorted set | admissions of the last 60 s: admission id -> time (RPM, TPM) |
| `tok` | hash | admission id -> tokens it counts for, and `_sum`, their total (TPM) |
| `slots` | sorted set | concurrency leases: lease id -> expiry (a lease not renewed is reclaimed) |
| `open` | string | until when a replica's breaker holds the deployment open |
| `paused` | string | until when an upstream 429's Retry-After pauses the deployment |

And one per API key with an RPM (`<prefix>caller:<key id>`): a sorted set of its requests of the last
60 s, admission id -> time.

Every script takes the time as its first argument, or '' for the server's clock (`TIME`): replicas
on several hosts then share one clock, and tests pass their own. A script that writes after `TIME`
needs effects replication, the default since Redis 5. Numbers go back as strings: Redis would cut a Lua
number to an integer.

Several deployments are touched by one `acquire`, so their keys must live on one server: a single
Redis (with replicas or Sentinel for failover), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

#: The kinds of one deployment's keys, in the order scripts take them.
KEY_KINDS: Final = ("win", "tok", "slots", "open", "paused")

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

#: The sliding 60-second window of admissions (a sorted set: id -> time), and the seconds until one of
#: `rpm` a minute has room in it (0: now).
_RPM_WINDOW = """
local WINDOW = 60

local function rpm_wait(win, rpm)
  local count = redis.call('ZCARD', win)
  if count < rpm then return 0 end
  -- the count drops below rpm when the admission at this position leaves the window
  local at = redis.call('ZRANGE', win, count - rpm, count - rpm, 'WITHSCORES')
  return tonumber(at[2]) + WINDOW - now
end
"""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


#: Admit one request on the first of several deployments with room.
#: KEYS: five per deployment (KEY_KINDS). ARGV: now, tokens, admission id (also the lease id), lease
#: seconds, then three per deployment: max concurrency, rpm, tpm (0: no limit).
#: Reply: {position taken (1-based; 0: none), now, then for each deployment looked at and not taken:
#: seconds its breaker stays open, seconds until its limits have room (-1: only a release can help)}.
ACQUIRE = Script(
    "acquire",
    _NOW
    + _RPM_WINDOW
    + """
local tokens, id, lease = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local reply = {0, tostring(now)}

local function till(key)
  return tonumber(redis.call('GET', key) or '') or 0
end

local function prune(win, tok)
  local gone = redis.call('ZRANGEBYSCORE', win, '-inf', now - WINDOW)
  if #gone == 0 then return end
  local freed = 0
  for first = 1, #gone, 500 do
    local part = {unpack(gone, first, math.min(first + 499, #gone))}
    for _, value in ipairs(redis.call('HMGET', tok, unpack(part))) do freed = freed + (tonumber(value) or 0) end
    redis.call('HDEL', tok, unpack(part))
  end
  redis.call('ZREMRANGEBYSCORE', win, '-inf', now - WINDOW)
  redis.call('HINCRBY', tok, '_sum', -freed)
end

local function tpm_wait(win, tok, tpm)
  if tokens > tpm then return -1 end
  local excess = (tonumber(redis.call('HGET', tok, '_sum') or '') or 0) + tokens - tpm
  local first = 0
  while excess > 0 do
    local batch = redis.call('ZRANGE', win, first, first + 199, 'WITHSCORES')
    if #batch == 0 then return -1 end
    local ids = {}
    for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
    for i, value in ipairs(redis.call('HMGET', tok, unpack(ids))) do
      excess = excess - (tonumber(value) or 0)
      if excess <= 0 then return tonumber(batch[2 * i]) + WINDOW - now end
    end
    first = first + 200
  end
  return 0
end

for d = 0, #KEYS / 5 - 1 do
  local win, tok, slots = KEYS[d * 5 + 1], KEYS[d * 5 + 2], KEYS[d * 5 + 3]
  local open, paused = KEYS[d * 5 + 4], KEYS[d * 5 + 5]
  local conc, rpm, tpm = tonumber(ARGV[d * 3 + 5]), tonumber(ARGV[d * 3 + 6]), tonumber(ARGV[d * 3 + 7])
  local open_for = math.max(till(open) - now, 0)
  local room = math.max(till(paused) - now, 0)
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    if redis.call('ZCARD', slots) >= conc then room = -1 end
  end
  local counted = rpm > 0 or tpm > 0
  if room >= 0 and counted then
    prune(win, tok)
    if rpm > 0 then room = math.max(room, rpm_wait(win, rpm)) end
    if tpm > 0 then
      local wait = tpm_wait(win, tok, tpm)
      if wait < 0 then room = -1 else room = math.max(room, wait) end
    end
  end
  if open_for == 0 and room == 0 then
    if conc > 0 then
      redis.call('ZADD', slots, now + lease, id)
      redis.call('PEXPIRE', slots, math.ceil(lease * 1000) + 1000)
    end
    if counted then
      redis.call('ZADD', win, now, id)
      redis.call('HSET', tok, id, tokens)
      redis.call('HINCRBY', tok, '_sum', tokens)
      redis.call('PEXPIRE', win, (WINDOW + 1) * 1000)
      redis.call('PEXPIRE', tok, (WINDOW + 1) * 1000)
    end
    reply[1] = d + 1
    return reply
  end
  reply[#reply + 1] = tostring(open_for)
  reply[#reply + 1] = tostring(room)
end
return reply
""",
)

#: The end of an admission: free its lease, and/or count the tokens it used instead of the estimate
#: (while the admission is still in the window).
#: KEYS: slots, tok. ARGV: admission id, '1' to free the lease, tokens used ('' to keep the estimate).
SETTLE = Script(
    "settle",
    """
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local used = tonumber(ARGV[3])
if used then
  local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '')
  if old then
    redis.call('HSET', KEYS[2], ARGV[1], used)
    redis.call('HINCRBY', KEYS[2], '_sum', used - old)
  end
end
return 0
""",
)

#: Hold a deployment (open breaker, 429 pause) until now + seconds, never shortening a longer hold.
#: KEYS: the open or paused key. ARGV: now, seconds.
HOLD = Script(
    "hold",
    _NOW
    + """
local seconds = tonumber(ARGV[2])
if seconds <= 0 then return 0 end
local current = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if now + seconds > current then
  redis.call('SET', KEYS[1], tostring(now + seconds), 'PX', math.ceil(seconds * 1000))
end
return 0
""",
)

#: Renew this replica's leases (a lease reclaimed meanwhile, after an outage or a restart, comes back:
#: its request is still running). KEYS: one slots key per lease. ARGV: now, lease seconds, the lease ids.
RENEW = Script(
    "renew",
    _NOW
    + """
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 2])
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end
return #KEYS
""",
)

#: Admit one request of an API key within its RPM, counted by every replica in one window.
#: KEYS: the key's window. ARGV: now, rpm, admission id.
#: Reply: {1, now} when admitted; {0, seconds until the window has room} when not.
CALLER = Script(
    "caller",
    _NOW
    + _RPM_WINDOW
    + """
local rpm, id = tonumber(ARGV[2]), ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
local wait = rpm_wait(KEYS[1], rpm)
if wait > 0 then return {0, tostring(wait)} end
redis.call('ZADD', KEYS[1], now, id)
redis.call('PEXPIRE', KEYS[1], (WINDOW + 1) * 1000)
return {1, tostring(now)}
""",
)

SCRIPTS: Final = {script.sha: script for script in (ACQUIRE, SETTLE, HOLD, RENEW, CALLER)}
