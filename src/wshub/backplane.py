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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
import uuid
from collections import deque
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import ClientNotFound, WsHubError

__all__ = [
    "Backplane",
    "BackplaneHub",
    "LocalBackplane",
    "RedisBackplane",
    "TopicHub",
    "make_backplane",
]

log = logging.getLogger("wshub.backplane")


class BackplaneHub(Protocol):
    """What a backplane calls on the hub it serves.

    Implemented by a small object the hub hands to :meth:`Backplane.bind`
    (``wshub.hub.registry.BackplanePort``), not by ``WebSocket`` itself.
    """

    def deliver_send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        """Deliver a routed ``send`` to a local client; False if it is not here."""
        ...

    def deliver_broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> int:
        """Deliver a routed broadcast to the local clients; return how many."""
        ...

    def local_clients(self) -> list[tuple[str, str, str]]:
        """``(client_id, ip_key, event)`` of every local client."""
        ...

    def client_missing(self, client_id: str) -> None:
        """A routed ``send`` found no client with this ID on its node."""
        ...

    def close_duplicate(self, client_id: str) -> bool:
        """Another node admitted this ID at the same moment: close ours; False if none."""
        ...


class TopicHub(Protocol):
    """What a backplane calls on the topics of the hub it serves.

    Implemented by ``wshub.hub.topics.TopicsPort``, handed to
    :meth:`Backplane.bind_topics`.
    """

    def follows(self, name: str) -> bool:
        """Whether a local client follows topic ``name``."""
        ...

    def followed_topics(self) -> list[str]:
        """Every topic that a local client follows."""
        ...

    def subscriptions(self, name: str) -> dict[str, str]:
        """The local subscribers of ``name``: client ID → URL path."""
        ...

    def deliver_publication(
        self, name: str, payload: bytes, text: bool, exclude: frozenset[str]
    ) -> int:
        """Deliver a publication of another node to the local subscribers; return how many."""
        ...

    def remote_joined(self, client_id: str, name: str) -> None:
        """A client of another node subscribed to ``name`` (the ``"join"`` event)."""
        ...

    def remote_left(self, client_id: str, name: str) -> None:
        """A client of another node left ``name`` (the ``"leave"`` event)."""
        ...


class Backplane:
    """The interface between a hub and the rest of its cluster.

    The hub calls :meth:`bind` once, :meth:`start` when its server starts
    serving and :meth:`stop` when it shuts down; in between it reports every
    client that opens or closes, and hands over what it cannot deliver
    locally.  All methods but ``start``/``stop``/``cluster_clients`` are
    synchronous and never block: a backplane buffers and sends in the
    background.
    """

    #: True when there is no other node (the hub then skips the routing work).
    is_local: bool = False

    def __init__(self) -> None:
        self.node_id = uuid.uuid4().hex[:16]
        self._hub: BackplaneHub | None = None
        self._topic_hub: TopicHub | None = None

    def bind(self, hub: BackplaneHub) -> None:
        """Called once by the hub: ``hub`` is where routed work is delivered."""
        if self._hub is not None and self._hub is not hub:
            raise RuntimeError("this backplane already serves another hub")
        self._hub = hub

    def bind_topics(self, topics: TopicHub) -> None:
        """Called once by the hub: where publications of other nodes are delivered."""
        self._topic_hub = topics

    @property
    def connected(self) -> bool:
        """Whether this node is joined to its cluster right now (a local one always is)."""
        return True

    async def start(self) -> None:
        """Connect; return once the registry is loaded (or the first attempt failed)."""

    async def stop(self) -> None:
        """Leave the cluster: withdraw this node's registrations, disconnect."""

    def client_added(self, client_id: str, ip_key: str, event: str) -> None:
        """A client opened on this node."""

    def client_removed(self, client_id: str, ip_key: str, event: str) -> None:
        """A client of this node closed."""

    def owner(self, client_id: str) -> str | None:
        """The other node that has ``client_id`` connected (per the registry), or None."""
        return None

    def ip_count(self, key: str) -> int:
        """Connections from IP key ``key`` on the other live nodes."""
        return 0

    def send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        """Route a message to a client of another node.

        ``data`` is a ``str`` to be encoded with the client's encoding on its
        node, or payload bytes with ``text`` saying which frame type.  Raises
        :class:`ClientNotFound` when no live node has that ID; returns False
        when the outgoing buffer is above its high-water mark (slow down) or
        the message had to be dropped.
        """
        raise ClientNotFound(client_id)

    def broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> None:
        """Hand a broadcast to every other node (this node has already delivered it).

        ``exclude`` holds only the excluded IDs that are not connected here.
        """

    async def cluster_clients(self) -> list[str]:
        """Every live node's client IDs."""
        hub = self._hub
        return [c[0] for c in hub.local_clients()] if hub is not None else []

    # Topics: this node's part of every topic, told as it changes.

    def topic_followed(self, name: str) -> None:
        """A local client now follows ``name``, and none did before."""

    def topic_unfollowed(self, name: str) -> None:
        """The last local subscriber of ``name`` left."""

    def topic_joined(self, client_id: str, name: str, path: str) -> None:
        """Local client ``client_id`` (connected to ``path``) subscribed to ``name``."""

    def topic_left(self, client_id: str, name: str) -> None:
        """Local client ``client_id`` left ``name`` (unsubscribed or closed)."""

    def publish_topic(self, name: str, payload: bytes, text: bool, exclude: frozenset[str]) -> None:
        """Hand a publication to the other nodes that follow ``name`` (this node
        has already delivered it); ``exclude`` holds only IDs not connected here."""

    async def topic_presence(self, name: str) -> dict[str, tuple[str, str]]:
        """The subscribers of ``name`` on the other live nodes: client ID → (node, path)."""
        return {}


class LocalBackplane(Backplane):
    """The default: this process is the whole cluster."""

    is_local = True


def make_backplane(value: object) -> Backplane:
    """``None`` → :class:`LocalBackplane`; ``"redis://…"`` → :class:`RedisBackplane`."""
    if value is None:
        return LocalBackplane()
    if isinstance(value, Backplane):
        return value
    if isinstance(value, str):
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("redis", "rediss", "unix"):
            return RedisBackplane(value)
        raise ValueError(f"unsupported backplane URL {value!r}: use redis://host:port/db")
    raise TypeError(f"backplane must be None, a redis:// URL or a Backplane, not {type(value)}")


# ---------------------------------------------------------------- wire format
#
# Data messages (channels :all and :to:<node>) are bytes:
#   kind (1) | len(origin) (1) | origin | len(meta) (2, big-endian) | meta | payload
# kind: B/b broadcast text/binary (meta: JSON {"e": event, "x": [excluded ids]}
#       or empty), T send a str (encoded on the receiving node with the
#       client's encoding), t/y send text/binary payload bytes (meta: the ID),
#       M "no such client" answered to the sender of a direct send (meta: ID).
# Control messages (channel :ctl) are JSON objects with "t" (hb, join, leave,
# bye) and "n" (the node).

_HEAD = struct.Struct("!cB")
_META = struct.Struct("!H")


def _pack(kind: bytes, origin: bytes, meta: bytes, payload: bytes = b"") -> bytes:
    return b"".join((_HEAD.pack(kind, len(origin)), origin, _META.pack(len(meta)), meta, payload))


def _unpack(data: bytes) -> tuple[bytes, str, bytes, bytes]:
    kind, olen = _HEAD.unpack_from(data)
    pos = _HEAD.size
    origin = data[pos : pos + olen].decode("ascii")
    pos += olen
    (mlen,) = _META.unpack_from(data, pos)
    pos += _META.size
    meta = data[pos : pos + mlen]
    if len(meta) != mlen:
        raise ValueError("truncated backplane message")
    return kind, origin, meta, data[pos + mlen :]


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("redis backplane: background task failed: %s", task.exception())


class _SessionLost(WsHubError):
    """The Redis session stopped working (raised inside the session tasks)."""


class RedisBackplane(Backplane):
    """A cluster of wshub nodes over Redis pub/sub.

    ``url``: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
    ``prefix``: namespace of keys and channels (several clusters can share one
    Redis).  ``heartbeat``: seconds between a node's heartbeats; ``ttl``:
    seconds after which a silent node's registrations expire (in Redis and in
    every node's cache) — the bound on how long a dead node's clients stay
    listed.  ``resync_every``: heartbeats between full reloads of the registry
    cache (repairs anything a lost pub/sub message left stale).
    ``queue_limit`` / ``queue_bytes``: the most messages / bytes waiting for
    Redis; past either, new cross-node messages are dropped and counted.
    ``connect_timeout``: how long ``start()`` waits for the first connection
    before serving without the cluster (it keeps retrying in the background).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "wshub",
        heartbeat: float = 2.0,
        ttl: float = 10.0,
        resync_every: int = 5,
        queue_limit: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        connect_timeout: float = 5.0,
        backoff_max: float = 5.0,
    ) -> None:
        super().__init__()
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise ImportError(
                "the Redis backplane needs redis-py: pip install 'wshub[redis]'"
            ) from None
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ValueError(f"not a Redis URL: {url!r}")
        if not 0 < heartbeat < ttl:
            raise ValueError("need 0 < heartbeat < ttl")
        if resync_every < 1 or queue_limit < 1 or queue_bytes < 1 or backoff_max <= 0:
            raise ValueError("resync_every, queue_limit, queue_bytes, backoff_max must be > 0")
        if not prefix or any(c in prefix for c in " \r\n"):
            raise ValueError("prefix must be a non-empty token")
        self.url = url
        self.prefix = prefix
        self.heartbeat = float(heartbeat)
        self.ttl = float(ttl)
        self.resync_every = int(resync_every)
        self.queue_limit = int(queue_limit)
        self.queue_bytes = int(queue_bytes)
        self.connect_timeout = float(connect_timeout)
        self.backoff_max = float(backoff_max)
        self._node_b = self.node_id.encode("ascii")
        self._ch_all = f"{prefix}:all"
        self._ch_ctl = f"{prefix}:ctl"
        self._my_key = self._clients_key(self.node_id)
        # Cached registry of the other nodes.
        self._remote: dict[str, dict[str, tuple[str, str]]] = {}
        self._owner: dict[str, str] = {}
        self._ip_counts: dict[str, int] = {}
        self._seen: dict[str, float] = {}
        self._replay: list[dict[str, Any]] | None = None
        # Outgoing: (command, args, is_message, size); one writer keeps them in order.
        self._queue: deque[tuple[str, tuple[Any, ...], bool, int]] = deque()
        self._queued_messages = 0
        self._queued_bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._registry_dirty = False
        # Session state.
        self._client: Any = None
        self._pubsub: Any = None
        self._resync_lock: asyncio.Lock | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._up = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._autostart_task: asyncio.Future[None] | None = None
        self._own_hb_seen = 0.0
        # What was lost while Redis was unreachable (reported when it is back).
        self._down_since: float | None = None
        self._lost_sends = 0
        self._lost_broadcasts = 0
        self._lost_bytes = 0
        self._warned_drop = False

    def __repr__(self) -> str:
        return f"RedisBackplane({self.url!r}, node={self.node_id}, up={self._up})"

    def _clients_key(self, node: str) -> str:
        return f"{self.prefix}:clients:{node}"

    def _node_channel(self, node: str) -> str:
        return f"{self.prefix}:to:{node}"

    @property
    def connected(self) -> bool:
        """Whether the node is connected to Redis right now."""
        return self._up

    # ============================================================ lifecycle

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._resync_lock = asyncio.Lock()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.ensure_future(self._supervise(first))
        try:
            await asyncio.wait_for(asyncio.shield(first), self.connect_timeout)
        except asyncio.TimeoutError:
            log.warning(
                "redis backplane: %s not reachable within %.1fs; serving local clients "
                "and retrying in the background",
                self._safe_url(),
                self.connect_timeout,
            )

    def _autostart(self) -> None:
        """Start on the first client when nobody called :meth:`start`.

        ``HttpServer`` starts the backplane before it listens; a host that does
        not (an ASGI server whose lifespan does not start it) gets it started
        here, in the background, when the first client opens.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        log.info("redis backplane: started by the first client (no server start hook ran)")
        task = asyncio.ensure_future(self.start())
        task.add_done_callback(_log_failure)
        self._autostart_task = task

    async def stop(self) -> None:
        self._stopping = True
        task, self._supervisor = self._supervisor, None
        client = self._client
        if client is not None and self._up:
            try:
                pipe = client.pipeline(transaction=False)
                pipe.delete(self._my_key)
                pipe.publish(self._ch_ctl, self._ctl("bye"))
                await asyncio.wait_for(pipe.execute(), 2.0)
            except Exception as exc:
                log.warning("redis backplane: could not withdraw node %s: %s", self.node_id, exc)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._up = False
        self._queue.clear()
        self._queued_messages = self._queued_bytes = 0

    def _safe_url(self) -> str:
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.rsplit("@", 1)[-1]
            return parts._replace(netloc=f"***@{netloc}").geturl()
        return self.url

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._open_session()
            except asyncio.CancelledError:
                await self._close_session()
                raise
            except Exception as exc:
                await self._close_session()
                if not first.done():
                    first.set_result(None)
                    log.warning(
                        "redis backplane: cannot reach %s (%s); serving local clients, "
                        "retrying with backoff",
                        self._safe_url(),
                        exc,
                    )
                else:
                    log.info("redis backplane: reconnect failed (%s); retry in %.1fs", exc, delay)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._sweep(time.monotonic())
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = 0.1
            self._up = True
            self._report_recovery()
            if not first.done():
                first.set_result(None)
                log.info(
                    "redis backplane: node %s joined %s (%d clients on %d other nodes)",
                    self.node_id,
                    self._safe_url(),
                    len(self._owner),
                    len(self._remote),
                )
            try:
                await self._run_session()
            except asyncio.CancelledError:
                self._up = False
                await self._close_session()
                raise
            except Exception as exc:
                if not self._stopping:
                    log.error(
                        "redis backplane: lost Redis (%s: %s); local clients keep being "
                        "served, cross-node messages are dropped until it is back",
                        type(exc).__name__,
                        exc,
                    )
            self._up = False
            if self._down_since is None:
                self._down_since = time.monotonic()
            await self._close_session()

    async def _open_session(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a retried PUBLISH could deliver twice,
        # and we want to see the failure to reconnect and resync ourselves.
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(self.ttl, 5.0),
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._client = client
        pubsub = client.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._ch_all, self._ch_ctl, self._node_channel(self.node_id))
        await self._register_all(client)
        # Anything queued while down was counted as lost; start clean.
        self._drop_queue()
        await self._resync(client)
        self._own_hb_seen = time.monotonic()

    async def _close_session(self) -> None:
        task, self._resync_task = self._resync_task, None
        if task is not None:
            task.cancel()
        pubsub = self._pubsub
        client, self._client = self._client, None
        self._pubsub = None
        for obj in (pubsub, client):
            if obj is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(obj.aclose(), 1.0)

    async def _run_session(self) -> None:
        tasks = [
            asyncio.ensure_future(self._reader()),
            asyncio.ensure_future(self._writer()),
            asyncio.ensure_future(self._heartbeats()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            raise _SessionLost("a backplane task ended")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _report_recovery(self) -> None:
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        self._down_since = None
        log.warning(
            "redis backplane: connected to %s again after %.1fs; lost while disconnected: "
            "%d direct sends and %d broadcasts from this node (%d bytes), plus whatever "
            "other nodes published meanwhile (Redis pub/sub keeps nothing); "
            "%d local clients re-registered, registry reloaded (%d clients on %d other nodes)",
            self._safe_url(),
            down,
            self._lost_sends,
            self._lost_broadcasts,
            self._lost_bytes,
            len(self._local()),
            len(self._owner),
            len(self._remote),
        )
        self._lost_sends = self._lost_broadcasts = self._lost_bytes = 0
        self._warned_drop = False

    # ============================================================ registry

    def _local(self) -> list[tuple[str, str, str]]:
        hub = self._hub
        return hub.local_clients() if hub is not None else []

    @staticmethod
    def _entry(ip_key: str, event: str) -> bytes:
        return f"{ip_key}\t{event}".encode()

    async def _register_all(self, client: Any) -> None:
        """Write this node's whole registry (after a (re)connect or a dropped update)."""
        self._registry_dirty = False
        pipe = client.pipeline(transaction=True)
        pipe.delete(self._my_key)
        local = self._local()
        if local:
            pipe.hset(self._my_key, mapping={cid: self._entry(ip, ev) for cid, ip, ev in local})
            pipe.pexpire(self._my_key, int(self.ttl * 1000))
        pipe.publish(self._ch_ctl, self._ctl("hello"))
        await pipe.execute()

    def _ctl(self, kind: str, **fields: str) -> bytes:
        return json.dumps({"t": kind, "n": self.node_id, **fields}).encode()

    def client_added(self, client_id: str, ip_key: str, event: str) -> None:
        if self._supervisor is None and self._autostart_task is None and not self._stopping:
            self._autostart()
        if not self._up:
            # Rewritten whole once Redis is back (a client that opens while
            # a session is being set up is caught by the next heartbeat).
            self._registry_dirty = True
            return
        ttl_ms = int(self.ttl * 1000)
        self._enqueue("hset", (self._my_key, client_id, self._entry(ip_key, event)), False, 0)
        self._enqueue("pexpire", (self._my_key, ttl_ms), False, 0)
        msg = self._ctl("join", c=client_id, ip=ip_key, e=event)
        self._enqueue("publish", (self._ch_ctl, msg), False, 0)

    def client_removed(self, client_id: str, ip_key: str, event: str) -> None:
        if not self._up:
            self._registry_dirty = True
            return
        self._enqueue("hdel", (self._my_key, client_id), False, 0)
        msg = self._ctl("leave", c=client_id, ip=ip_key)
        self._enqueue("publish", (self._ch_ctl, msg), False, 0)

    def owner(self, client_id: str) -> str | None:
        return self._owner.get(client_id)

    def ip_count(self, key: str) -> int:
        return self._ip_counts.get(key, 0)

    def _cache_add(self, node: str, client_id: str, ip_key: str, event: str) -> None:
        clients = self._remote.setdefault(node, {})
        old = clients.get(client_id)
        if old is not None:
            self._ip_dec(old[0])
        else:
            prev = self._owner.get(client_id)
            if prev is not None and prev != node:
                # The ID moved between nodes and the leave is still in flight.
                self._cache_remove(prev, client_id)
        clients[client_id] = (ip_key, event)
        self._owner[client_id] = node
        self._ip_counts[ip_key] = self._ip_counts.get(ip_key, 0) + 1

    def _cache_remove(self, node: str, client_id: str) -> None:
        clients = self._remote.get(node)
        if not clients:
            return
        entry = clients.pop(client_id, None)
        if entry is None:
            return
        self._ip_dec(entry[0])
        if self._owner.get(client_id) == node:
            del self._owner[client_id]

    def _ip_dec(self, key: str) -> None:
        n = self._ip_counts.get(key, 0) - 1
        if n <= 0:
            self._ip_counts.pop(key, None)
        else:
            self._ip_counts[key] = n

    def _cache_drop_node(self, node: str) -> None:
        self._seen.pop(node, None)
        clients = self._remote.pop(node, None)
        if not clients:
            return
        for client_id, (ip_key, _event) in clients.items():
            self._ip_dec(ip_key)
            if self._owner.get(client_id) == node:
                del self._owner[client_id]

    def _cache_replace_node(self, node: str, entries: dict[bytes, bytes]) -> None:
        self._cache_drop_node(node)
        self._seen[node] = time.monotonic()
        for raw_id, raw_entry in entries.items():
            ip_key, _, event = raw_entry.decode("utf-8", "replace").partition("\t")
            self._cache_add(node, raw_id.decode("utf-8", "replace"), ip_key, event)

    def _request_resync(self) -> None:
        """Reload the registry soon (a node announced itself with its whole registry)."""
        if self._resync_task is not None and not self._resync_task.done():
            return
        client = self._client
        if client is not None:
            self._resync_task = asyncio.ensure_future(self._resync(client))
            self._resync_task.add_done_callback(_log_failure)

    async def _resync(self, client: Any) -> None:
        assert self._resync_lock is not None
        async with self._resync_lock:
            await self._resync_locked(client)

    async def _resync_locked(self, client: Any) -> None:
        """Reload the cached registry of every other node from Redis.

        Control events that arrive while the reload is in flight are applied
        at once *and* replayed on top of the reloaded state, so an answer that
        is already stale when it arrives cannot resurrect a client that left.
        """
        self._replay = []
        try:
            keys: list[bytes] = []
            pattern = self._clients_key("*")
            async for key in client.scan_iter(match=pattern, count=500):
                keys.append(key)
            prefix_len = len(self._clients_key(""))
            nodes = [k.decode("utf-8", "replace")[prefix_len:] for k in keys]
            nodes = [n for n in nodes if n and n != self.node_id]
            pipe = client.pipeline(transaction=False)
            for node in nodes:
                pipe.hgetall(self._clients_key(node))
            results = await pipe.execute() if nodes else []
            found = dict(zip(nodes, results, strict=True))
            for node in list(self._remote):
                if node not in found:
                    self._cache_drop_node(node)
            for node, entries in found.items():
                self._cache_replace_node(node, entries)
            replay = self._replay
            self._replay = None
            for msg in replay:
                self._apply_ctl(msg, live=False)
        finally:
            self._replay = None

    async def cluster_clients(self) -> list[str]:
        local = [c[0] for c in self._local()]
        client = self._client
        if client is None or not self._up:
            log.warning(
                "redis backplane: Redis unreachable, cluster_clients() answers from the cache"
            )
            return local + list(self._owner)
        try:
            keys = [k async for k in client.scan_iter(match=self._clients_key("*"), count=500)]
            mine = self._my_key.encode()
            keys = [k for k in keys if k != mine]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hkeys(key)
            results = await pipe.execute() if keys else []
        except Exception as exc:
            log.warning("redis backplane: cluster_clients() answers from the cache (%s)", exc)
            return local + list(self._owner)
        seen = set(local)
        out = list(local)
        for ids in results:
            for raw in ids:
                cid = raw.decode("utf-8", "replace")
                if cid not in seen:
                    seen.add(cid)
                    out.append(cid)
        return out

    # ============================================================ outgoing

    def _enqueue(self, command: str, args: tuple[Any, ...], is_message: bool, size: int) -> bool:
        """Queue one command for the writer; False if it was dropped."""
        if (
            self._queued_messages >= self.queue_limit
            or self._queued_bytes + size > self.queue_bytes
        ) and len(self._queue) > 0:
            if is_message:
                self._count_lost(args, size, "the outgoing queue is full")
            else:
                self._registry_dirty = True
            return False
        self._queue.append((command, args, is_message, size))
        self._queued_messages += 1
        self._queued_bytes += size
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.is_set():
            wakeup.set()
        return True

    def _count_lost(self, args: tuple[Any, ...], size: int, why: str) -> None:
        if args and args[0] == self._ch_all:
            self._lost_broadcasts += 1
        else:
            self._lost_sends += 1
        self._lost_bytes += size
        if not self._warned_drop:
            self._warned_drop = True
            log.warning("redis backplane: dropping cross-node messages: %s", why)

    def _drop_queue(self) -> None:
        for _command, args, is_message, size in self._queue:
            if is_message:
                self._count_lost(args, size, "Redis is unreachable")
        self._queue.clear()
        self._queued_messages = self._queued_bytes = 0

    def _publish(self, channel: str, message: bytes) -> bool:
        if not self._up:
            self._count_lost((channel,), len(message), "Redis is unreachable")
            return False
        if not self._enqueue("publish", (channel, message), True, len(message)):
            return False
        return self._queued_bytes < self.queue_bytes // 2

    def send(self, client_id: str, data: str | bytes, text: bool) -> bool:
        node = self._owner.get(client_id)
        if node is None:
            raise ClientNotFound(client_id)
        meta = client_id.encode("utf-8")
        if isinstance(data, str):
            msg = _pack(b"T", self._node_b, meta, data.encode("utf-8", "surrogatepass"))
        else:
            msg = _pack(b"t" if text else b"y", self._node_b, meta, data)
        return self._publish(self._node_channel(node), msg)

    def broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> None:
        meta = b""
        if event is not None or exclude:
            meta = json.dumps({"e": event, "x": sorted(exclude)}).encode()
        self._publish(self._ch_all, _pack(b"B" if text else b"b", self._node_b, meta, payload))

    async def _writer(self) -> None:
        assert self._wakeup is not None
        client = self._client
        queue = self._queue
        while True:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[tuple[str, tuple[Any, ...], bool, int]] = []
            while queue and len(batch) < 1000:
                batch.append(queue.popleft())
            pipe = client.pipeline(transaction=False)
            for command, args, _is_message, _size in batch:
                pipe.execute_command(command, *args)
            try:
                await pipe.execute()
            except BaseException:
                # In flight when Redis went away: count as lost (at-most-once).
                for _command, args, is_message, size in batch:
                    if is_message:
                        self._count_lost(args, size, "Redis is unreachable")
                self._drop_queue()
                raise
            finally:
                for _command, _args, _is_message, size in batch:
                    self._queued_messages -= 1
                    self._queued_bytes -= size
                self._queued_messages = max(0, self._queued_messages)
                self._queued_bytes = max(0, self._queued_bytes)

    async def _heartbeats(self) -> None:
        client = self._client
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            now = time.monotonic()
            if now - self._own_hb_seen > self.ttl:
                raise _SessionLost("no heartbeat came back through Redis within the ttl")
            if self._registry_dirty:
                await self._register_all(client)
            pipe = client.pipeline(transaction=False)
            pipe.pexpire(self._my_key, int(self.ttl * 1000))
            pipe.publish(self._ch_ctl, self._ctl("hb"))
            await pipe.execute()
            self._sweep(now)
            beats += 1
            if beats % self.resync_every == 0:
                await self._resync(client)

    def _sweep(self, now: float) -> None:
        """Forget the nodes not heard from within the ttl (their Redis keys expire too)."""
        for node, seen in list(self._seen.items()):
            if now - seen > self.ttl:
                log.warning(
                    "redis backplane: node %s silent for %.1fs: dropping its %d clients",
                    node,
                    now - seen,
                    len(self._remote.get(node, ())),
                )
                self._cache_drop_node(node)

    # ============================================================ incoming

    async def _reader(self) -> None:
        pubsub = self._pubsub
        ch_all = self._ch_all.encode()
        ch_ctl = self._ch_ctl.encode()
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.heartbeat)
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            data = msg["data"]
            try:
                if channel == ch_ctl:
                    self._on_ctl(data)
                elif channel == ch_all:
                    self._on_broadcast(data)
                else:
                    self._on_direct(data)
            except Exception:
                log.exception("redis backplane: bad message on %r ignored", channel)

    def _on_ctl(self, data: bytes) -> None:
        msg = json.loads(data)
        if not isinstance(msg, dict) or not isinstance(msg.get("n"), str):
            raise ValueError("control message without a node")
        if msg["n"] == self.node_id:
            if msg.get("t") == "hb":
                self._own_hb_seen = time.monotonic()
            return
        if self._replay is not None:
            self._replay.append(msg)
        self._apply_ctl(msg, live=True)

    def _apply_ctl(self, msg: dict[str, Any], live: bool) -> None:
        node: str = msg["n"]
        kind = msg.get("t")
        if kind == "bye":
            self._cache_drop_node(node)
            return
        self._seen[node] = time.monotonic()
        self._remote.setdefault(node, {})
        if kind == "hello" and live:
            self._request_resync()
        elif kind == "join":
            client_id, ip_key, event = str(msg["c"]), str(msg["ip"]), str(msg.get("e", ""))
            self._cache_add(node, client_id, ip_key, event)
            if live:
                self._check_duplicate(node, client_id)
        elif kind == "leave":
            self._cache_remove(node, str(msg["c"]))

    def _check_duplicate(self, node: str, client_id: str) -> None:
        # Two nodes admitted the same session ID at the same moment (each
        # before hearing of the other).  The node with the greater node ID
        # gives way, so exactly one copy stays.
        hub = self._hub
        if hub is not None and self.node_id > node and hub.close_duplicate(client_id):
            log.warning(
                "redis backplane: client %s also opened on node %s: closed our copy",
                client_id,
                node,
            )

    def _on_broadcast(self, data: bytes) -> None:
        kind, origin, meta, payload = _unpack(data)
        if origin == self.node_id or self._hub is None:
            return  # delivered locally when it was sent
        event: str | None = None
        exclude: frozenset[str] = frozenset()
        if meta:
            info = json.loads(meta)
            event = info.get("e")
            exclude = frozenset(info.get("x") or ())
        self._hub.deliver_broadcast(payload, kind == b"B", event, exclude)

    def _on_direct(self, data: bytes) -> None:
        kind, origin, meta, payload = _unpack(data)
        hub = self._hub
        if hub is None:
            return
        client_id = meta.decode("utf-8", "replace")
        if kind == b"M":
            hub.client_missing(client_id)
            return
        body: str | bytes = payload.decode("utf-8", "surrogatepass") if kind == b"T" else payload
        if not hub.deliver_send(client_id, body, kind != b"y"):
            log.info(
                "redis backplane: send from node %s to %s: not connected here", origin, client_id
            )
            if origin != self.node_id and self._up:
                self._enqueue(
                    "publish",
                    (self._node_channel(origin), _pack(b"M", self._node_b, meta)),
                    False,
                    0,
                )
