"""Backplanes: how several wshub processes act as one hub.

A :class:`Backplane` routes what one process cannot do alone: ``send`` to a
client connected to another node, ``broadcast`` to every node's clients, the
cluster-wide registry of client IDs (for unique IDs, ``cluster_clients()`` and
cluster-wide ``limit_by_ip``).

- :class:`LocalBackplane` is the default: one process is the whole cluster,
  nothing is routed, nothing is installed.
- :class:`RedisBackplane` uses Redis pub/sub (redis-py's asyncio client,
  ``pip install wshub[redis]``, imported only when one is created).

How the Redis backplane works (``docs/scaling.md`` has the long version):

- Channels: ``<prefix>:all`` carries broadcasts, ``<prefix>:to:<node>`` the
  direct sends to one node, ``<prefix>:ctl`` the registry changes (join,
  leave) and heartbeats.  Every node publishes through one ordered writer, so
  the messages of one node reach another node in the order they were sent.
- Registry: each node owns the hash ``<prefix>:clients:<node>`` (client ID →
  IP key and path), which expires ``ttl`` seconds after the node's last
  heartbeat — a node killed with ``kill -9`` disappears by itself.  Every node
  keeps a cached copy of the whole registry, updated by the join/leave events
  and reloaded from Redis every few heartbeats, so that ``send`` (which never
  blocks) can say at once whether an ID exists anywhere, the session cookie's
  ID is reused only when it is connected nowhere, and per-IP counts can be
  summed over live nodes.
- Delivery is at most once: Redis pub/sub stores nothing, so a message
  published while a node is disconnected is lost (and counted in the log).
- Redis is a trust boundary: every message and every registry entry carries
  an HMAC-SHA256 under a key derived from the cluster secret (the hub's
  ``secret`` / ``WSHUB_SECRET``, or ``RedisBackplane(secret=...)``); a
  message also carries its sender's node ID, a timestamp and a per-sender
  counter.  A forged, altered, stale or replayed one is dropped, counted
  (``stats().rejected``) and logged (one line per reason at most every ten
  seconds), never acted on.  A Redis backplane without a secret refuses to
  start.
"""

from .base import (
    REJECT_REASONS,
    Backplane,
    BackplaneHub,
    BackplaneStats,
    HistoryRead,
    KeptDone,
    KeptEntry,
    LocalBackplane,
    TopicHub,
    make_backplane,
)
from .envelope import (
    CLUSTER_KEY_LABEL,
    ClusterKey,
    ClusterSecretMissing,
    Seal,
    cluster_key,
    pack,
    unpack,
)
from .redis import RedisBackplane

__all__ = [
    "CLUSTER_KEY_LABEL",
    "REJECT_REASONS",
    "Backplane",
    "BackplaneHub",
    "BackplaneStats",
    "ClusterKey",
    "ClusterSecretMissing",
    "HistoryRead",
    "KeptDone",
    "KeptEntry",
    "LocalBackplane",
    "RedisBackplane",
    "Seal",
    "TopicHub",
    "cluster_key",
    "make_backplane",
    "pack",
    "unpack",
]

# The names these had when the backplane was one module (tests import them).
_ClusterKey = ClusterKey
_Seal = Seal
_pack = pack
_unpack = unpack
