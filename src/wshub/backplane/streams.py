"""Topic histories in Redis Streams: the script that publishes, and its trailer.

Used by :class:`~wshub.backplane.RedisBackplane` when the hub keeps a
history (``docs/scaling.md``, History in Redis Streams).  A publication to
topic ``T`` is one script run, atomic in Redis:

- ``<prefix>:history-meta:T`` is a hash with the stream's ``epoch``, its
  last ``seq`` and ``run``, the ``run_id`` of the Redis server that made
  the epoch.  A missing hash (never written, expired, or lost with a Redis
  that kept no data) or another ``run`` (Redis restarted: its data may
  have lost its tail) starts a new epoch: the stream is deleted and the
  sequence starts again at 1.
- ``XADD <prefix>:history:T 0-<seq>`` keeps the sealed publication (field
  ``m``) and Redis's clock in milliseconds (field ``t``), trimmed to the
  size (``MAXLEN ~`` or ``=``) and the age (``XTRIM MINID``, a few entries
  per run, and readers skip what is older); both keys expire ``ttl`` after
  the last publication.
- ``PUBLISH <prefix>:topic:T`` sends the same sealed message followed by the
  position: ``"<epoch> <seq>"`` and one byte with that trailer's length.
  Every node, the publishing one included, delivers it from there, so all of
  them deliver a topic's publications in the stream's order.

A ``wshub.v1`` client's direct messages are kept the same way in
``<prefix>:direct:<ID>`` (meta ``<prefix>:direct-meta:<ID>``) and published
on the channel of that name (:data:`DIRECT_SCRIPT`, which routes the message
as a raw send instead when the ID has no direct stream).

The seal (MAC) covers the message, not the trailer: the position is Redis's
to give.  The sealed message says it is a kept one (version 2 in its seal),
so a trailer cannot be cut off or added without breaking the MAC.
"""

from __future__ import annotations

import base64
import os
import re

__all__ = [
    "DIRECT_SCRIPT",
    "ENSURE_SCRIPT",
    "PUBLISH_SCRIPT",
    "entry_seq",
    "entry_time",
    "kept_trailer",
    "new_epoch",
    "split_kept",
]

#: The epoch test both scripts start with: a missing hash or another
#: ``run_id`` starts a new epoch (ARGV[3], ARGV[4]: run_id, candidate epoch).
_EPOCH = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
local run = redis.call('HGET', meta, 'run')
if (not epoch) or run ~= ARGV[3] then
  epoch = ARGV[4]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'run', ARGV[3], 'seq', 0)
end
"""

#: A topic's position, its epoch made if it has none (a subscriber without
#: ``since`` gets a position to resume from before any publication).
#: ARGV[1], ARGV[2] unused (the publish script's channel and message); ARGV[5]: ttl ms;
#: ARGV[6] '1': the ttl starts again now (a direct stream, at its client's connection).
ENSURE_SCRIPT = (
    _EPOCH
    + """
local ttl = tonumber(ARGV[5])
if ttl > 0 and (ARGV[6] == '1' or redis.call('PTTL', meta) < 0) then
  redis.call('PEXPIRE', meta, ttl)
  if ARGV[6] == '1' then redis.call('PEXPIRE', stream, ttl) end
end
return {epoch, tonumber(redis.call('HGET', meta, 'seq'))}
"""
)

#: Keep the sealed message ARGV[2] (its epoch made by _EPOCH) and publish
#: it on ARGV[1] with its position; ARGV[5..7]: size, exact trim, ttl ms.
_KEEP = """
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local how = '~'
if ARGV[6] == '1' then how = '=' end
redis.call('XADD', stream, 'MAXLEN', how, ARGV[5], '0-' .. seq, 'm', ARGV[2], 't', ms)
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  local limit = ms - ttl
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 16)
  local keep = nil
  for _, entry in ipairs(head) do
    local fields = entry[2]
    local t = 0
    for i = 1, #fields, 2 do
      if fields[i] == 't' then t = tonumber(fields[i + 1]) end
    end
    if t >= limit then keep = entry[1] break end
  end
  if keep == nil then
    local last = head[#head][1]
    keep = '0-' .. (tonumber(string.match(last, '%-(%d+)$')) + 1)
  end
  redis.call('XTRIM', stream, 'MINID', keep)
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', meta, ttl)
end
local trailer = epoch .. ' ' .. seq
redis.call('PUBLISH', ARGV[1], ARGV[2] .. trailer .. string.char(#trailer))
return {epoch, seq}
"""

PUBLISH_SCRIPT = _EPOCH + _KEEP

#: A direct message to a ``wshub.v1`` client's stream (``<prefix>:direct:<ID>``).
#: ARGV[8] says what to do when the stream has no meta hash (the ID has no
#: direct stream: a raw client, an unknown ID, or one expired):
#: ``create`` (the client is connected to the sending node: make it), ``route``
#: (PUBLISH the sealed routed message ARGV[10] to the owner node's channel
#: ARGV[9], as a raw client's send; returns 1) or ``exists`` (returns 0: no
#: such client).  With a stream: kept and published like a publication.
DIRECT_SCRIPT = (
    """
if ARGV[8] ~= 'create' and redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[8] == 'route' then
    redis.call('PUBLISH', ARGV[9], ARGV[10])
    return 1
  end
  return 0
end
"""
    + _EPOCH
    + _KEEP
)

#: What a trailer holds: an epoch (the characters of :func:`new_epoch`) and a sequence number.
_TRAILER = re.compile(rb"([A-Za-z0-9_-]{1,64}) ([1-9][0-9]{0,18})")


def new_epoch() -> str:
    """A random epoch: 12 characters of URL-safe base64 (72 bits)."""
    return base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")


def kept_trailer(epoch: str, seq: int) -> bytes:
    """The trailer the script appends (for tests and for forging in tests)."""
    raw = f"{epoch} {seq}".encode("ascii")
    return raw + bytes((len(raw),))


def split_kept(data: bytes) -> tuple[bytes, str, int]:
    """``(sealed message, epoch, seq)`` of a kept publication as published;
    ValueError if its trailer is not one."""
    if not data:
        raise ValueError("empty")
    size = data[-1]
    end = len(data) - 1
    start = end - size
    if start <= 0:
        raise ValueError("trailer longer than the message")
    match = _TRAILER.fullmatch(data, start, end)
    if match is None:
        raise ValueError("no position trailer")
    return data[:start], match.group(1).decode("ascii"), int(match.group(2))


def entry_seq(entry_id: bytes) -> int:
    """The sequence number of a history entry's ID ``0-<seq>``."""
    return int(entry_id.partition(b"-")[2])


def entry_time(fields: dict[bytes, bytes]) -> int:
    """When Redis kept a history entry (ms, its clock)."""
    return int(fields.get(b"t", b"0"))
