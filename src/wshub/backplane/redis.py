"""The Redis backplane: a cluster of wshub nodes over Redis pub/sub.

:class:`RedisBackplane` runs the session (connect, reconnect, the ordered
writer, the reader, heartbeats), keeps its copy of the cluster registry
(:class:`~wshub.backplane.registry.ClusterRegistry`) up to date, and
carries topics, presence, the Redis Streams histories
(:mod:`wshub.backplane.streams`) and wshub.v1 direct streams.  Every message
is sealed and opened by :mod:`wshub.backplane.envelope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ..errors import ClientNotFound, HistoryUnavailable, WsHubError
from .base import (
    REJECT_REASONS,
    Backplane,
    BackplaneStats,
    HistoryRead,
    KeptDone,
    KeptEntry,
)
from .batches import Ask, AskBatch, Question
from .envelope import (
    CLUSTER_KEY_LABEL,
    PRESENCE_TAG,
    VERSION_AT,
    VERSION_KEPT,
    ClusterSecretMissing,
    Rejected,
    Seal,
    as_text,
    cluster_key,
    control_message,
    excluded_ids,
    pack,
    split_topic_meta,
    topic_meta,
    unpack_sealed,
)
from .registry import ClusterRegistry
from .streams import (
    DIRECT_SCRIPT,
    ENSURE_SCRIPT,
    PUBLISH_SCRIPT,
    entry_seq,
    entry_time,
    new_epoch,
    split_kept,
)

__all__ = ["RedisBackplane"]

log = logging.getLogger("wshub.backplane")

#: The shortest interval between two log lines about one reason of rejection.
_REJECT_LOG_EVERY = 10.0
#: The longest stop() waits for the queue to be written, then for the session to end.
_FLUSH_TIMEOUT = 5.0
#: Connections a node opens to Redis for commands (history reads, scripts,
#: registry writes), besides its pub/sub connection; more commands at once
#: wait for a free one.
REDIS_POOL_SIZE = 64
# History reads in one MULTI/EXEC (see _send_reads): a reconnect storm's
# reads take a few round trips, and no one reply grows without bound.
_READS_PER_TRANSACTION = 64


def _kept_answer(args: tuple[Any, ...], result: tuple[str, int] | BaseException) -> bool:
    """Tell a kept publication's ``done`` (args[4], a one-item box) its fate,
    once; False if it was told before."""
    box: list[KeptDone | None] = args[4]
    if not box:
        return False
    done = box.pop()
    if done is not None:
        try:
            done(result)
        except Exception:
            log.exception("redis backplane: a kept publication's callback failed")
    return True


def _flushed(args: tuple[Any, ...]) -> None:
    """Wake the :meth:`RedisBackplane._flush` waiting on ``args[0]``."""
    written: asyncio.Future[None] = args[0]
    if not written.done():
        written.set_result(None)


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

    ``secret``: the cluster secret that authenticates every message and
    registry entry between nodes (the same on every node).  Without it, the
    hub's ``secret`` (or ``WSHUB_SECRET``) is used; with neither, ``start()``
    raises :class:`ClusterSecretMissing`.  ``also_accept``: other secrets
    whose messages are accepted (never used to sign): for a rotation.
    ``replay_window``: seconds a message's timestamp may differ from this
    node's clock (older ones are dropped as stale).

    ``history_trim``: with a hub that keeps a history (``history_size``),
    each topic's history is a Redis Stream cut to that size ``"approximate"``
    (``XADD MAXLEN ~``, whole stream nodes of up to 100 entries) or
    ``"exact"`` (``MAXLEN =``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        secret: bytes | str | None = None,
        also_accept: Iterable[bytes | str] = (),
        replay_window: float = 30.0,
        prefix: str = "wshub",
        heartbeat: float = 2.0,
        ttl: float = 10.0,
        resync_every: int = 5,
        queue_limit: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        connect_timeout: float = 5.0,
        backoff_max: float = 5.0,
        history_trim: str = "approximate",
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
        if not replay_window > 0:
            raise ValueError("replay_window must be > 0")
        if history_trim not in ("approximate", "exact"):
            raise ValueError('history_trim must be "approximate" or "exact"')
        #: How a topic's history is cut to its size: ``XADD MAXLEN ~`` (whole
        #: stream nodes, so a few more are kept; cheaper) or ``=`` (exactly).
        self.history_trim = history_trim
        # Only the derived keys are kept (cluster_key checks each secret).
        self._own_key = cluster_key(secret) if secret is not None else None
        self._other_keys = [cluster_key(s) for s in also_accept]
        self.replay_window = float(replay_window)
        self._sealer: Seal | None = None
        self._accepted = 0
        self._rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._reject_logged: dict[str, float] = {}
        self._reject_quiet: dict[str, int] = {}
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
        self._topic_prefix = f"{prefix}:topic:"
        # Topic names whose channel this session is subscribed to, and those
        # whose subscription may have to change (see _follow_topics).
        self._topics_subscribed: set[str] = set()
        self._topic_changes: set[str] = set()
        self._topic_wakeup: asyncio.Event | None = None
        # Topic and direct channels whose SUBSCRIBE Redis confirmed in this
        # session, and who waits for one (topic_ready, direct_ready).
        self._channels_ready: set[bytes] = set()
        self._ready_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        # The direct streams of the local wshub.v1 clients (follow_direct):
        # the IDs wanted, those whose channel is subscribed, those changed.
        self._direct_prefix = f"{prefix}:direct:"
        self._direct_wanted: set[str] = set()
        self._direct_subscribed: set[str] = set()
        self._direct_changes: set[str] = set()
        self._direct_sha = ""
        # Topic histories in Redis Streams (keep_history): (size, ttl in ms,
        # exact trim), the publish script's SHA1 and the Redis server's run_id.
        self._history: tuple[int, int, bool] | None = None
        self._script_sha = ""
        self._ensure_sha = ""
        self._run_id = ""
        # Stream positions (_ensure_stream) and history reads (_read_stream)
        # asked in one loop iteration go to Redis together (wshub.backplane.batches).
        self._ensures: AskBatch[tuple[str, str, int, bool]] = AskBatch(self._send_ensures)
        self._reads: AskBatch[tuple[str, str, int]] = AskBatch(
            self._send_reads, _READS_PER_TRANSACTION
        )
        # Cached registry of the other nodes.
        self._registry = ClusterRegistry()
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
        self._pool: Any = None  # the client's connection pool (closed with it)
        self._pubsub: Any = None
        self._resync_lock: asyncio.Lock | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._up = False
        self._stopping = False
        # Set by stop() when it ends the session: the writer returns once its
        # queue is empty even if a cancellation was lost inside redis-py.
        self._session_ending = False
        self._supervisor: asyncio.Task[None] | None = None
        self._autostart_task: asyncio.Future[None] | None = None
        self._own_hb_seen = 0.0
        # What was lost while Redis was unreachable (reported when it is back).
        self._down_since: float | None = None
        self._lost_sends = 0
        self._lost_broadcasts = 0
        self._lost_bytes = 0
        self._warned_drop = False
        # Never reset (the _lost_* figures above are, once reported).
        self._dropped_total = 0
        self._reconnects = 0

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

    def stats(self) -> BackplaneStats:
        return BackplaneStats(
            self._up,
            self._queued_messages,
            self._queued_bytes,
            self._dropped_total,
            self._reconnects,
            self._accepted,
            MappingProxyType(dict(self._rejected)),
        )

    # ============================================================ lifecycle

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        if self._sealer is None:
            self._sealer = self._make_sealer()
        self._stopping = self._session_ending = False
        self._wakeup = asyncio.Event()
        self._topic_wakeup = asyncio.Event()
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

    def _make_sealer(self) -> Seal:
        """The keys of this node, or :class:`ClusterSecretMissing` (loud, at start)."""
        own = self._own_key
        source = "RedisBackplane(secret=...)"
        if own is None:
            hub = self._hub
            own = hub.cluster_key(CLUSTER_KEY_LABEL) if hub is not None else None
            source = "the hub's secret"
        if own is None:
            raise ClusterSecretMissing(
                "redis backplane: no cluster secret. Every node must share one to "
                "authenticate the others' messages: give the hub a secret "
                "(WebSocket(secret=...) or WSHUB_SECRET in the environment) or "
                "RedisBackplane(secret=...). A random secret per process would make "
                "every node reject every other's messages."
            )
        sealer = Seal(self.node_id, [own, *self._other_keys], self.replay_window)
        log.info(
            "redis backplane: node %s signs with cluster key %s (from %s)%s",
            self.node_id,
            sealer.key_id,
            source,
            f", also accepts {len(self._other_keys)} other key(s)" if self._other_keys else "",
        )
        return sealer

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
        # New publications into a history are refused from now on; those
        # accepted before are written and answered before the node leaves,
        # so that a publisher told "unavailable", or cut off by its close
        # after this, knows the publication was not kept (docs/deploy.md).
        self._stopping = True
        if self._up and self._client is not None:
            await self._flush(_FLUSH_TIMEOUT)
        task, self._supervisor = self._supervisor, None
        client = self._client
        if client is not None and self._up:
            try:
                pipe = client.pipeline(transaction=False)
                pipe.delete(self._my_key)
                for name in self._followed():
                    pipe.delete(self._presence_key(self.node_id, name))
                pipe.publish(self._ch_ctl, self._sealed(self._ch_ctl, self._ctl("bye")))
                await asyncio.wait_for(pipe.execute(), 2.0)
            except Exception as exc:
                log.warning("redis backplane: could not withdraw node %s: %s", self.node_id, exc)
        if task is not None:
            self._session_ending = True
            if self._wakeup is not None:
                self._wakeup.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_FLUSH_TIMEOUT)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
            else:
                log.warning("redis backplane: the session did not end when stopped")
        self._up = False
        for command, args, _is_message, _size in self._queue:
            if command == "kept":
                _kept_answer(args, HistoryUnavailable("the node is shutting down"))
            elif command == "flush":
                _flushed(args)
        self._queue.clear()
        self._queued_messages = self._queued_bytes = 0

    async def _flush(self, timeout: float) -> None:
        """Until every command queued before now was written to Redis and
        answered (or failed), at most ``timeout`` seconds."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(("flush", (written,), False, 0))
        if self._wakeup is not None:
            self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(written), timeout)
        except asyncio.TimeoutError:
            log.warning("redis backplane: the outgoing queue was not written within %.0fs", timeout)

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
            if first.done():
                self._reconnects += 1
            self._report_recovery()
            if not first.done():
                first.set_result(None)
                log.info(
                    "redis backplane: node %s joined %s (%d clients on %d other nodes)",
                    self.node_id,
                    self._safe_url(),
                    self._registry.client_count(),
                    self._registry.node_count(),
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
        # A bounded pool that waits for a free connection: a burst of history
        # reads (thousands of subscribes at once) queues for one instead of
        # failing (redis-py 8's plain pool raises past 100 connections).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=REDIS_POOL_SIZE,
            timeout=max(self.ttl, 5.0),
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(self.ttl, 5.0),
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        client = aioredis.Redis(connection_pool=pool)
        self._client = client
        self._pool = pool
        if self._history is not None:
            # A new run_id (Redis restarted) starts new epochs: see streams.py.
            info = await client.info("server")
            self._run_id = str(info.get("run_id", ""))
            self._script_sha = as_text(await client.script_load(PUBLISH_SCRIPT))
            self._ensure_sha = as_text(await client.script_load(ENSURE_SCRIPT))
            self._direct_sha = as_text(await client.script_load(DIRECT_SCRIPT))
        pubsub = client.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._ch_all, self._ch_ctl, self._node_channel(self.node_id))
        self._topics_subscribed = set()
        self._channels_ready = set()
        self._topic_changes = set(self._followed())
        self._direct_subscribed = set()
        self._direct_changes = set(self._direct_wanted)
        await self._follow_topics(pubsub)
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
        pool, self._pool = self._pool, None
        for obj in (pubsub, client, pool):
            if obj is None:
                continue
            with contextlib.suppress(Exception):
                # (A client built on a given pool leaves the pool open.)
                close = obj.disconnect() if obj is pool else obj.aclose()
                await asyncio.wait_for(close, 1.0)

    async def _run_session(self) -> None:
        tasks = [
            asyncio.ensure_future(self._reader()),
            asyncio.ensure_future(self._writer()),
            asyncio.ensure_future(self._heartbeats()),
            asyncio.ensure_future(self._topic_subscriber()),
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
            "%d direct sends and %d broadcasts or publications from this node (%d bytes), "
            "plus whatever other nodes published meanwhile (Redis pub/sub keeps nothing); "
            "%d local clients re-registered, registry reloaded (%d clients on %d other nodes)",
            self._safe_url(),
            down,
            self._lost_sends,
            self._lost_broadcasts,
            self._lost_bytes,
            len(self._local()),
            self._registry.client_count(),
            self._registry.node_count(),
        )
        self._lost_sends = self._lost_broadcasts = self._lost_bytes = 0
        self._warned_drop = False

    # ============================================================ registry

    def _local(self) -> list[tuple[str, str, str]]:
        hub = self._hub
        return hub.local_clients() if hub is not None else []

    def _entry(self, client_id: str, ip_key: str, event: str) -> bytes:
        """This node's signed registry entry for a client (see Seal.sign_entry)."""
        sealer = self._sealer
        assert sealer is not None, "the backplane is not started"
        return sealer.sign_entry(self.node_id, client_id, ip_key, event)

    async def _register_all(self, client: Any) -> None:
        """Write this node's whole registry (after a (re)connect or a dropped update)."""
        self._registry_dirty = False
        pipe = client.pipeline(transaction=True)
        pipe.delete(self._my_key)
        local = self._local()
        if local:
            entries = {cid: self._entry(cid, ip, ev) for cid, ip, ev in local}
            pipe.hset(self._my_key, mapping=entries)
            pipe.pexpire(self._my_key, int(self.ttl * 1000))
        self._register_presence(pipe)
        pipe.publish(self._ch_ctl, self._sealed(self._ch_ctl, self._ctl("hello")))
        await pipe.execute()

    def _ctl(self, kind: str, **fields: str) -> bytes:
        """A control message for the ``:ctl`` channel (sealed when published)."""
        return json.dumps({"t": kind, "n": self.node_id, **fields}).encode()

    def _sealed(self, channel: str, message: bytes) -> bytes:
        """``message`` sealed for ``channel``.  Everything queued with
        ``_enqueue("publish", ...)`` is sealed by the writer; a PUBLISH made
        outside the writer (heartbeat, hello, bye) goes through this."""
        sealer = self._sealer
        assert sealer is not None, "the backplane is not started"
        return sealer.seal(channel.encode(), message)

    def client_added(self, client_id: str, ip_key: str, event: str) -> None:
        if self._supervisor is None and self._autostart_task is None and not self._stopping:
            self._autostart()
        if not self._up:
            # Rewritten whole once Redis is back (a client that opens while
            # a session is being set up is caught by the next heartbeat).
            self._registry_dirty = True
            return
        ttl_ms = int(self.ttl * 1000)
        entry = self._entry(client_id, ip_key, event)
        self._enqueue("hset", (self._my_key, client_id, entry), False, 0)
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
        return self._registry.owner(client_id)

    def ip_count(self, key: str) -> int:
        return self._registry.ip_count(key)

    def _drop_node(self, node: str) -> None:
        self._seen.pop(node, None)
        self._registry.drop_node(node)

    def _open_entries(
        self, node: str, entries: dict[bytes, bytes], where: str | None = None
    ) -> list[tuple[str, str, str]]:
        """The entries of a hash of ``node`` (its registry, or ``where``) that
        carry its MAC; the others (forged, altered, or moved from another node's
        hash) are dropped and counted."""
        sealer = self._sealer
        assert sealer is not None, "the backplane is not started"
        valid: list[tuple[str, str, str]] = []
        for raw_id, raw_entry in entries.items():
            try:
                valid.append(sealer.open_entry(node, raw_id, raw_entry))
            except Rejected as exc:
                self._reject(exc.reason, where or self._clients_key(node), exc.detail)
        return valid

    def _replace_node(self, node: str, entries: dict[bytes, bytes]) -> None:
        valid = self._open_entries(node, entries)
        if not valid and not self._registry.knows(node):
            return  # nothing signed: no node (a hash anyone could have written)
        self._seen.pop(node, None)  # then last, as the node heard from most recently
        self._seen[node] = time.monotonic()
        self._registry.replace_node(node, valid)

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
            for node in self._registry.nodes():
                if node not in found:
                    self._drop_node(node)
            for node, entries in found.items():
                self._replace_node(node, entries)
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
            return local + self._registry.client_ids()
        try:
            keys = [k async for k in client.scan_iter(match=self._clients_key("*"), count=500)]
            mine = self._my_key.encode()
            keys = [k for k in keys if k != mine]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            results = await pipe.execute() if keys else []
        except Exception as exc:
            log.warning("redis backplane: cluster_clients() answers from the cache (%s)", exc)
            return local + self._registry.client_ids()
        seen = set(local)
        out = list(local)
        prefix_len = len(self._clients_key(""))
        for key, entries in zip(keys, results, strict=True):
            node = key.decode("utf-8", "replace")[prefix_len:]
            for cid, _ip_key, _event in self._open_entries(node, entries):
                if cid not in seen:
                    seen.add(cid)
                    out.append(cid)
        return out

    # ============================================================ topics
    #
    # A node is subscribed to <prefix>:topic:<name> while a local client
    # follows <name>, and only then.  A topic's publications, joins and
    # leaves travel on its channel, so a node without subscribers to a topic
    # receives nothing of it.  Presence: for each topic it follows, a node
    # keeps the hash <prefix>:presence:<node>:<name> (client ID -> path),
    # which expires with its registry hash (ttl after its last heartbeat).

    def _topic_channel(self, name: str) -> str:
        return self._topic_prefix + name

    def _presence_key(self, node: str, name: str) -> str:
        return f"{self.prefix}:presence:{node}:{name}"

    def _followed(self) -> list[str]:
        hub = self._topic_hub
        return hub.followed_topics() if hub is not None else []

    def topic_followed(self, name: str) -> None:
        self._topic_changed(name)

    def topic_unfollowed(self, name: str) -> None:
        self._topic_changed(name)

    def _topic_changed(self, name: str) -> None:
        # Before start() nothing is subscribed: the session's start takes
        # every followed topic then.
        self._channel_changed(self._topic_changes, name)

    def _channel_changed(self, changes: set[str], name: str) -> None:
        """Note that ``name``'s channel may have to be (un)subscribed."""
        changes.add(name)
        wakeup = self._topic_wakeup
        if wakeup is not None:
            wakeup.set()

    async def _topic_subscriber(self) -> None:
        pubsub = self._pubsub
        wakeup = self._topic_wakeup
        assert wakeup is not None
        while True:
            await wakeup.wait()
            wakeup.clear()
            await self._follow_topics(pubsub)

    async def _follow_topics(self, pubsub: Any) -> None:
        """(Un)subscribe the channels of the topics whose local following changed.

        Changes are collected while a command is in flight and applied
        together, so a topic followed and dropped at once costs nothing.
        """
        await self._follow_direct(pubsub)
        changes, self._topic_changes = self._topic_changes, set()
        hub = self._topic_hub
        if not changes or hub is None:
            return
        subscribed = self._topics_subscribed
        add = [n for n in changes if n not in subscribed and hub.follows(n)]
        drop = [n for n in changes if n in subscribed and not hub.follows(n)]
        await self._change_channels(pubsub, subscribed, add, drop, self._topic_channel)

    @staticmethod
    async def _change_channels(
        pubsub: Any,
        subscribed: set[str],
        add: list[str],
        drop: list[str],
        channel: Callable[[str], str],
    ) -> None:
        """SUBSCRIBE the channels of ``add``, UNSUBSCRIBE those of ``drop``
        (a thousand a command), and keep ``subscribed`` up to date."""
        for i in range(0, len(add), 1000):
            chunk = add[i : i + 1000]
            await pubsub.subscribe(*[channel(n) for n in chunk])
            subscribed.update(chunk)
        for i in range(0, len(drop), 1000):
            chunk = drop[i : i + 1000]
            await pubsub.unsubscribe(*[channel(n) for n in chunk])
            subscribed.difference_update(chunk)

    def _register_presence(self, pipe: Any) -> None:
        """Rewrite this node's presence hashes (part of :meth:`_register_all`)."""
        hub = self._topic_hub
        if hub is None:
            return
        ttl_ms = int(self.ttl * 1000)
        for name in hub.followed_topics():
            key = self._presence_key(self.node_id, name)
            pipe.delete(key)
            members = hub.subscriptions(name)
            if members:
                signed = {c: self._presence_entry(c, name, path) for c, path in members.items()}
                pipe.hset(key, mapping=signed)
                pipe.pexpire(key, ttl_ms)

    def _presence_entry(self, client_id: str, name: str, path: str) -> bytes:
        """A signed presence entry: the topic and the path under this node's MAC
        (the same as a registry entry's, with ``"topic " + name`` where the IP
        key is: no IP key has a space, so neither kind passes for the other)."""
        sealer = self._sealer
        assert sealer is not None, "the backplane is not started"
        return sealer.sign_entry(self.node_id, client_id, PRESENCE_TAG + name, path)

    def topic_joined(self, client_id: str, name: str, path: str) -> None:
        if not self._up:
            self._registry_dirty = True  # presence is rewritten with the registry
            return
        key = self._presence_key(self.node_id, name)
        entry = self._presence_entry(client_id, name, path)
        self._enqueue("hset", (key, client_id, entry), False, 0)
        self._enqueue("pexpire", (key, int(self.ttl * 1000)), False, 0)
        msg = pack(b"J", self._node_b, topic_meta(name, client_id.encode("utf-8")))
        self._enqueue("publish", (self._topic_channel(name), msg), False, 0)

    def topic_left(self, client_id: str, name: str) -> None:
        if not self._up:
            self._registry_dirty = True
            return
        self._enqueue("hdel", (self._presence_key(self.node_id, name), client_id), False, 0)
        msg = pack(b"L", self._node_b, topic_meta(name, client_id.encode("utf-8")))
        self._enqueue("publish", (self._topic_channel(name), msg), False, 0)

    def _publication(self, name: str, payload: bytes, text: bool, exclude: frozenset[str]) -> bytes:
        rest = json.dumps(sorted(exclude)).encode() if exclude else b""
        return pack(b"P" if text else b"p", self._node_b, topic_meta(name, rest), payload)

    def publish_topic(self, name: str, payload: bytes, text: bool, exclude: frozenset[str]) -> None:
        self._publish(self._topic_channel(name), self._publication(name, payload, text, exclude))

    # ============================================================ histories
    #
    # With keep_history(), every publication is one script run in Redis
    # (streams.PUBLISH_SCRIPT): XADD to <prefix>:history:<name>,
    # then PUBLISH on the topic's channel with the position after the sealed
    # message.  Every node, the publisher included, delivers from the channel.

    def keep_history(self, size: int, ttl: float) -> bool:
        if size < 1 or ttl < 0:
            raise ValueError("a history keeps at least one message, for ttl >= 0 seconds")
        self._history = (int(size), int(ttl * 1000), self.history_trim == "exact")
        return True

    def _history_keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}:history-meta:{name}", f"{self.prefix}:history:{name}"

    def publish_kept(
        self,
        name: str,
        payload: bytes,
        text: bool,
        exclude: frozenset[str],
        done: KeptDone | None = None,
    ) -> None:
        if self._history is None:
            raise HistoryUnavailable("keep_history() was not called: no history to keep it in")
        if self._stopping:
            raise HistoryUnavailable("the node is leaving the cluster (shutting down)")
        if not self._up:
            raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
        meta_key, stream_key = self._history_keys(name)
        msg = self._publication(name, payload, text, exclude)
        args = (self._topic_channel(name), meta_key, stream_key, msg, [done])
        if not self._enqueue("kept", args, True, len(msg)):
            raise HistoryUnavailable("the outgoing queue to Redis is full")

    def _queue_kept(self, pipe: Any, sealer: Seal, args: tuple[Any, ...]) -> None:
        channel, meta_key, stream_key, message, _box = args
        assert self._history is not None
        sha = self._script_sha
        pipe.execute_command(
            *self._keep_call(sha, sealer, channel, meta_key, stream_key, message, self._history[1])
        )

    def _keep_call(
        self,
        sha: str,
        sealer: Seal,
        channel: str,
        meta_key: str,
        stream_key: str,
        message: bytes,
        ttl_ms: int,
    ) -> list[Any]:
        """The EVALSHA of a script that keeps ``message`` in a stream
        (``streams``: its KEYS and ARGV[1..7])."""
        assert self._history is not None
        size, _ttl_ms, exact = self._history
        return [
            "EVALSHA",
            sha,
            2,
            meta_key,
            stream_key,
            channel,
            sealer.seal(channel.encode(), message, VERSION_KEPT),
            self._run_id,
            new_epoch(),
            size,
            "1" if exact else "0",
            ttl_ms,
        ]

    def _kept_result(self, args: tuple[Any, ...], size: int, result: Any) -> None:
        if isinstance(result, BaseException):
            if _kept_answer(args, HistoryUnavailable(f"Redis refused it: {result}")):
                self._count_lost(args, size, f"Redis refused a kept publication: {result}")
            if "NOSCRIPT" in str(result):
                raise _SessionLost("the publish script is gone from Redis (SCRIPT FLUSH?)")
            return
        try:
            position = (bytes(result[0]).decode("ascii"), int(result[1]))
        except (TypeError, ValueError, IndexError) as exc:
            _kept_answer(args, HistoryUnavailable(f"unexpected answer from Redis: {exc}"))
            return
        _kept_answer(args, position)

    def _on_kept(
        self, origin: str, channel_name: bytes, data: bytes, position: tuple[str, int]
    ) -> None:
        kind, meta, payload = unpack_sealed(origin, data, b"Pp")
        hub = self._topic_hub
        if hub is None:
            return
        name, rest = split_topic_meta(meta)
        if name.encode("utf-8") != channel_name:
            raise Rejected("bad_content", f"names topic {name[:60]!r}, not its channel's")
        hub.deliver_publication(name, payload, kind == b"P", excluded_ids(rest), position)

    def _subscription_confirmed(self, msg: dict[str, Any], prefixes: tuple[bytes, ...]) -> None:
        """Redis confirmed a (un)subscription: a topic's (or a client's direct)
        channel is (no longer) heard."""
        channel = msg.get("channel")
        if not isinstance(channel, bytes) or not channel.startswith(prefixes):
            return
        if msg.get("type") == "unsubscribe":
            self._channels_ready.discard(channel)
            return
        self._channels_ready.add(channel)
        for waiter in self._ready_waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def topic_ready(self, name: str) -> None:
        await self._channel_ready(self._topic_channel(name).encode())

    async def _channel_ready(self, channel: bytes) -> None:
        if channel in self._channels_ready:
            return
        if not self._up:
            raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._ready_waiters.setdefault(channel, [])
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    async def read_history(self, name: str, after: int) -> HistoryRead:
        history = self._history
        if history is None:
            raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
        meta_key, stream_key = self._history_keys(name)
        channel = self._topic_channel(name).encode()

        def entry(entry_id: bytes, fields: dict[bytes, bytes], limit: int) -> KeptEntry | None:
            return self._open_kept_entry(name, channel, stream_key, entry_id, fields, limit)

        return await self._read_stream(meta_key, stream_key, after, history[1], entry)

    async def _read_stream(
        self,
        meta_key: str,
        stream_key: str,
        after: int,
        ttl_ms: int,
        entry: Callable[[bytes, dict[bytes, bytes], int], KeptEntry | None],
    ) -> HistoryRead:
        """A history stream's position and its entries after ``after`` that
        ``entry`` opens (those it cannot are dropped and counted)."""
        reply = await self._ask(self._reads, (meta_key, stream_key, after))
        (raw_epoch, raw_seq), found, first, (secs, micros) = reply
        if raw_epoch is None:
            return HistoryRead(None, 0, [], 1)
        seq = int(raw_seq or 0)
        limit = secs * 1000 + micros // 1000 - ttl_ms if ttl_ms else 0
        entries: list[KeptEntry] = []
        for entry_id, fields in found:
            opened = entry(entry_id, fields, limit)
            if opened is not None:
                entries.append(opened)
        if first and entry_time(first[0][1]) >= limit:
            oldest = entry_seq(first[0][0])
        else:
            oldest = entries[0].seq if entries else seq + 1
        return HistoryRead(raw_epoch.decode("ascii", "replace"), seq, entries, oldest)

    async def _send_reads(self, client: Any, asks: list[Ask[tuple[str, str, int]]]) -> None:
        """Read the streams of ``asks`` in one transaction (each read sees
        its stream's position and entries as of one moment) and answer each
        with (position, entries after, first entry, Redis's clock), or the
        error of one of its commands."""
        pipe = client.pipeline(transaction=True)
        for (meta_key, stream_key, after), _ in asks:
            pipe.hmget(meta_key, "epoch", "seq")
            pipe.xrange(stream_key, f"(0-{after}", "+")
            pipe.xrange(stream_key, "-", "+", count=1)
        pipe.time()
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            replies = [exc] * (3 * len(asks) + 1)
        clock = replies[-1]
        for i, (_, answer) in enumerate(asks):
            if answer.done():  # (an ask given up on is cancelled)
                continue
            reply = [*replies[3 * i : 3 * i + 3], clock]
            failed = [part for part in reply if isinstance(part, BaseException)]
            answer.set_result(failed[0] if failed else reply)

    async def history_position(self, name: str) -> tuple[str, int]:
        history = self._history
        if history is None:
            raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
        return await self._ensure_stream(*self._history_keys(name), history[1])

    async def _ensure_stream(
        self, meta_key: str, stream_key: str, ttl_ms: int, refresh: bool = False
    ) -> tuple[str, int]:
        """A history stream's position, its epoch made (seq 0) if it has none;
        ``refresh``: its keys expire ``ttl_ms`` from now.

        The asks of one loop iteration go to Redis in one pipeline: a burst
        of subscribes (thousands of clients reconnecting at once) would
        otherwise queue for the pool one round trip each, the last ones
        past the reader's timeout.
        """
        epoch, seq = await self._ask(self._ensures, (meta_key, stream_key, ttl_ms, refresh))
        return as_text(epoch), int(seq)

    async def _ask(self, batch: AskBatch[Question], question: Question) -> Any:
        """Redis's reply to ``question``, sent with the rest of ``batch``;
        :class:`HistoryUnavailable` when Redis is out of reach or refused it."""
        client = self._client
        if client is None or not self._up:
            raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
        reply = await batch.ask(client, question)
        if isinstance(reply, BaseException):
            raise HistoryUnavailable(f"Redis: {type(reply).__name__}: {reply}") from reply
        return reply

    async def _send_ensures(self, client: Any, asks: list[Ask[tuple[str, str, int, bool]]]) -> None:
        """Send ``asks`` in one pipeline (not a transaction: each script is
        atomic on its own) and answer each with its reply or its error."""
        pipe = client.pipeline(transaction=False)
        for (meta_key, stream_key, ttl_ms, refresh), _ in asks:
            pipe.evalsha(
                self._ensure_sha,
                2,
                meta_key,
                stream_key,
                "",
                "",
                self._run_id,
                new_epoch(),
                ttl_ms,
                "1" if refresh else "0",
            )
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            replies = [exc] * len(asks)
        for (_, answer), reply in zip(asks, replies, strict=True):
            if not answer.done():  # (an ask given up on is cancelled)
                answer.set_result(reply)

    # ------------------------------------------------------ direct streams
    #
    # A wshub.v1 client's direct messages are kept like a topic's
    # publications, in <prefix>:direct:<ID> (meta <prefix>:direct-meta:<ID>),
    # and published on the channel <prefix>:direct:<ID>, which the node the
    # client is connected to subscribes to (follow_direct).  The sending node
    # need not know where the client is, nor whether it is a wshub.v1 client:
    # streams.DIRECT_SCRIPT keeps the message if the ID has a
    # direct stream and routes it as a raw send otherwise.

    def _direct_keys(self, client_id: str) -> tuple[str, str]:
        return f"{self.prefix}:direct-meta:{client_id}", self._direct_prefix + client_id

    def _direct_channel(self, client_id: str) -> str:
        return self._direct_prefix + client_id

    def follow_direct(self, client_id: str) -> None:
        self._direct_wanted.add(client_id)
        self._channel_changed(self._direct_changes, client_id)

    def unfollow_direct(self, client_id: str) -> None:
        self._direct_wanted.discard(client_id)
        self._channel_changed(self._direct_changes, client_id)

    async def _follow_direct(self, pubsub: Any) -> None:
        """(Un)subscribe the direct channels of the clients that came or went."""
        changes, self._direct_changes = self._direct_changes, set()
        if not changes:
            return
        wanted, subscribed = self._direct_wanted, self._direct_subscribed
        add = [c for c in changes if c in wanted and c not in subscribed]
        drop = [c for c in changes if c not in wanted and c in subscribed]
        await self._change_channels(pubsub, subscribed, add, drop, self._direct_channel)

    async def direct_ready(self, client_id: str) -> None:
        await self._channel_ready(self._direct_channel(client_id).encode())

    def send_direct(
        self, client_id: str, payload: bytes, text: bool, ttl: float, routed: bytes | str | None
    ) -> bool:
        history = self._history
        if history is None:
            raise HistoryUnavailable("keep_history() was not called: no history to keep it in")
        owner = None if routed is None else self._registry.owner(client_id)
        if not self._up:
            if routed is None:
                raise HistoryUnavailable(f"Redis ({self._safe_url()}) is unreachable")
            if owner is None:
                raise ClientNotFound(client_id)
            self._count_lost((self._direct_channel(client_id),), len(payload), "Redis is down")
            return False
        meta = client_id.encode("utf-8")
        message = pack(b"D" if text else b"d", self._node_b, meta, payload)
        mode, route_channel, route_message = "create", "", b""
        if routed is not None:
            mode = "exists"
            if owner is not None:
                mode, route_channel = "route", self._node_channel(owner)
                if isinstance(routed, str):
                    raw = routed.encode("utf-8", "surrogatepass")
                    route_message = pack(b"T", self._node_b, meta, raw)
                else:
                    route_message = pack(b"t" if text else b"y", self._node_b, meta, routed)
        meta_key, stream_key = self._direct_keys(client_id)
        args = (
            self._direct_channel(client_id),
            meta_key,
            stream_key,
            message,
            int(ttl * 1000),
            mode,
            route_channel,
            route_message,
            client_id,
        )
        if not self._enqueue("direct", args, True, len(message)):
            return False
        # An ID no node lists: at best kept for its resume, not sent now.
        return mode != "exists" and self._queued_bytes < self.queue_bytes // 2

    def _queue_direct(self, pipe: Any, sealer: Seal, args: tuple[Any, ...]) -> None:
        channel, meta_key, stream_key, message, ttl_ms, mode, route_channel, routed, _id = args
        sha = self._direct_sha
        pipe.execute_command(
            *self._keep_call(sha, sealer, channel, meta_key, stream_key, message, ttl_ms),
            mode,
            route_channel,
            sealer.seal(route_channel.encode(), routed) if routed else b"",
        )

    def _direct_result(self, args: tuple[Any, ...], size: int, result: Any) -> None:
        if isinstance(result, BaseException):
            self._count_lost(args, size, f"Redis refused a direct message: {result}")
            if "NOSCRIPT" in str(result):
                raise _SessionLost("the direct script is gone from Redis (SCRIPT FLUSH?)")
        elif result == 0 and self._hub is not None:
            self._hub.client_missing(args[-1])  # no node has it, nor a direct stream

    def _on_direct_kept(
        self, origin: str, client_id: bytes, data: bytes, position: tuple[str, int]
    ) -> None:
        kind, meta, payload = unpack_sealed(origin, data, b"Dd")
        if meta != client_id:
            raise Rejected("bad_content", "a direct message for another client than its channel's")
        hub = self._hub
        if hub is not None:
            hub.deliver_direct(meta.decode("utf-8"), payload, kind == b"D", position)

    async def read_direct(self, client_id: str, after: int, ttl: float) -> HistoryRead:
        meta_key, stream_key = self._direct_keys(client_id)
        channel = self._direct_channel(client_id).encode()

        def entry(entry_id: bytes, fields: dict[bytes, bytes], limit: int) -> KeptEntry | None:
            return self._open_kept_entry(
                client_id, channel, stream_key, entry_id, fields, limit, direct=True
            )

        return await self._read_stream(meta_key, stream_key, after, int(ttl * 1000), entry)

    async def direct_position(self, client_id: str, ttl: float) -> tuple[str, int]:
        meta_key, stream_key = self._direct_keys(client_id)
        return await self._ensure_stream(meta_key, stream_key, int(ttl * 1000), refresh=True)

    def _open_kept_entry(
        self,
        name: str,
        channel: bytes,
        stream_key: str,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        limit: int,
        direct: bool = False,
    ) -> KeptEntry | None:
        """One stream entry, if its MAC holds (and it is not older than the ttl).
        ``direct``: of client ``name``'s direct stream, not of topic ``name``."""
        sealer = self._sealer
        assert sealer is not None
        try:
            if entry_time(fields) < limit:
                return None  # past the age limit, not trimmed yet
            origin, inner = sealer.open(channel, fields[b"m"], None, VERSION_KEPT)
            kind, meta, payload = unpack_sealed(origin, inner, b"Dd" if direct else b"Pp")
            if direct:
                if meta != name.encode("utf-8"):
                    raise Rejected("bad_content", "for another client than its stream's")
                return KeptEntry(entry_seq(entry_id), payload, kind == b"D", frozenset())
            topic, rest = split_topic_meta(meta)
            if topic != name:
                raise Rejected("bad_content", f"names topic {topic[:60]!r}, not its stream's")
            return KeptEntry(entry_seq(entry_id), payload, kind == b"P", excluded_ids(rest))
        except Rejected as exc:
            self._reject(exc.reason, stream_key, f"entry {entry_id[:40]!r}: {exc.detail}")
        except (ValueError, TypeError, KeyError, struct.error) as exc:
            self._reject("bad_content", stream_key, f"entry {entry_id[:40]!r}: {exc}")
        return None

    async def topic_presence(self, name: str) -> dict[str, tuple[str, str]]:
        client = self._client
        # The live nodes, as the cached registry knows them.
        nodes = [n for n in self._registry.nodes() if n != self.node_id]
        if client is None or not self._up:
            log.warning("redis backplane: Redis unreachable, presence() lists this node only")
            return {}
        if not nodes:
            return {}
        try:
            pipe = client.pipeline(transaction=False)
            for node in nodes:
                pipe.hgetall(self._presence_key(node, name))
            results = await pipe.execute()
        except Exception as exc:
            log.warning("redis backplane: presence() lists this node only (%s)", exc)
            return {}
        found: dict[str, tuple[str, str]] = {}
        for node, entries in zip(nodes, results, strict=True):
            # Signed like registry entries: a forged or moved one is dropped.
            where = self._presence_key(node, name)
            for client_id, tagged, path in self._open_entries(node, entries, where):
                if tagged == PRESENCE_TAG + name:
                    found[client_id] = (node, path)
                else:  # signed, but for another topic (or a registry entry): moved here
                    self._reject("bad_entry", where, f"entry {client_id[:64]!r} is not for it")
        return found

    def _on_topic(self, origin: str, channel_name: bytes, data: bytes) -> None:
        kind, meta, payload = unpack_sealed(origin, data, b"PpJL")
        hub = self._topic_hub
        if origin == self.node_id or hub is None:
            return  # delivered locally when it was sent
        try:
            name, rest = split_topic_meta(meta)
        except (ValueError, struct.error) as exc:
            raise Rejected("bad_content", f"topic metadata: {exc}") from None
        if name.encode("utf-8") != channel_name:
            raise Rejected("bad_content", f"names topic {name[:60]!r}, not its channel's")
        if kind == b"P" or kind == b"p":
            hub.deliver_publication(name, payload, kind == b"P", excluded_ids(rest))
        elif kind == b"J":
            hub.remote_joined(rest.decode("utf-8"), name)
        else:
            hub.remote_left(rest.decode("utf-8"), name)

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
        if args and (args[0] == self._ch_all or args[0].startswith(self._topic_prefix)):
            self._lost_broadcasts += 1
        else:
            self._lost_sends += 1
        self._lost_bytes += size
        self._dropped_total += 1
        if not self._warned_drop:
            self._warned_drop = True
            log.warning("redis backplane: dropping cross-node messages: %s", why)

    def _drop_queue(self) -> None:
        for command, args, is_message, size in self._queue:
            if command == "kept":
                _kept_answer(args, HistoryUnavailable("Redis became unreachable"))
            elif command == "flush":
                _flushed(args)
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
        node = self._registry.owner(client_id)
        if node is None:
            raise ClientNotFound(client_id)
        meta = client_id.encode("utf-8")
        if isinstance(data, str):
            msg = pack(b"T", self._node_b, meta, data.encode("utf-8", "surrogatepass"))
        else:
            msg = pack(b"t" if text else b"y", self._node_b, meta, data)
        return self._publish(self._node_channel(node), msg)

    def broadcast(
        self, payload: bytes, text: bool, event: str | None, exclude: frozenset[str]
    ) -> None:
        meta = b""
        if event is not None or exclude:
            meta = json.dumps({"e": event, "x": sorted(exclude)}).encode()
        self._publish(self._ch_all, pack(b"B" if text else b"b", self._node_b, meta, payload))

    async def _writer(self) -> None:
        assert self._wakeup is not None
        sealer = self._sealer
        assert sealer is not None
        client = self._client
        queue = self._queue
        while True:
            if not queue:
                if self._session_ending:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[tuple[str, tuple[Any, ...], bool, int]] = []
            flushes: list[tuple[Any, ...]] = []  # stop() waits for what came before
            while queue and len(batch) < 1000:
                item = queue.popleft()
                if item[0] == "flush":
                    flushes.append(item[1])
                else:
                    batch.append(item)
            if not batch:
                for args in flushes:
                    _flushed(args)
                continue
            pipe = client.pipeline(transaction=False)
            for command, args, _is_message, _size in batch:
                if command == "publish":
                    # Sealed here, in the order sent: the counters rise on the wire.
                    channel, message = args
                    pipe.execute_command(command, channel, sealer.seal(channel.encode(), message))
                elif command == "kept":
                    self._queue_kept(pipe, sealer, args)
                elif command == "direct":
                    self._queue_direct(pipe, sealer, args)
                else:
                    pipe.execute_command(command, *args)
            try:
                results = await pipe.execute(raise_on_error=False)
                failure: BaseException | None = None
                for (command, args, _is_message, size), result in zip(batch, results, strict=True):
                    if command == "kept":
                        self._kept_result(args, size, result)
                    elif command == "direct":
                        self._direct_result(args, size, result)
                    elif isinstance(result, BaseException) and failure is None:
                        failure = result
                if failure is not None:
                    raise failure
            except BaseException as exc:
                # In flight when Redis went away: count as lost (at-most-once).
                for command, args, is_message, size in batch:
                    # A kept one counts once: not if Redis answered it already.
                    lost = _kept_answer(args, exc) if command == "kept" else is_message
                    if lost:
                        self._count_lost(args, size, "Redis is unreachable")
                self._drop_queue()
                raise
            finally:
                for args in flushes:
                    _flushed(args)
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
            for name in self._followed():
                pipe.pexpire(self._presence_key(self.node_id, name), int(self.ttl * 1000))
            pipe.publish(self._ch_ctl, self._sealed(self._ch_ctl, self._ctl("hb")))
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
                    self._registry.client_count(node),
                )
                self._drop_node(node)
        sealer = self._sealer
        if sealer is not None:
            sealer.forget_silent(time.time())

    # ============================================================ incoming

    async def _reader(self) -> None:
        pubsub = self._pubsub
        sealer = self._sealer
        assert sealer is not None
        ch_all = self._ch_all.encode()
        ch_ctl = self._ch_ctl.encode()
        topic_prefix = self._topic_prefix.encode()
        direct_prefix = self._direct_prefix.encode()
        prefixes = (topic_prefix, direct_prefix)
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=self.heartbeat)
            if msg is None:
                continue
            if msg.get("type") != "message":
                self._subscription_confirmed(msg, prefixes)
                continue
            channel = msg["channel"]
            data = msg["data"]
            # A kept publication (version 2) comes to every node, its sender too.
            kept = len(data) > VERSION_AT and data[VERSION_AT] == VERSION_KEPT
            if channel != ch_ctl and not kept and sealer.is_own(data):
                continue  # this node's own publication, delivered locally when it was sent
            # Nothing is acted on before open() has checked the MAC, the
            # clock and the counter; what is dropped is counted and logged.
            try:
                if kept and channel.startswith(prefixes):
                    sealed, epoch, seq = split_kept(data)
                    origin, inner = sealer.open(channel, sealed, time.time(), VERSION_KEPT)
                    self._accepted += 1
                    if channel.startswith(topic_prefix):
                        self._on_kept(origin, channel[len(topic_prefix) :], inner, (epoch, seq))
                    else:
                        name = channel[len(direct_prefix) :]
                        self._on_direct_kept(origin, name, inner, (epoch, seq))
                    continue
                origin, inner = sealer.open(channel, data, time.time())
                self._accepted += 1
                if channel == ch_ctl:
                    self._on_ctl(origin, inner)
                elif channel == ch_all:
                    self._on_broadcast(origin, inner)
                elif channel.startswith(topic_prefix):
                    self._on_topic(origin, channel[len(topic_prefix) :], inner)
                else:
                    self._on_direct(origin, inner)
            except Rejected as exc:
                self._reject(exc.reason, channel, exc.detail)
            except (ValueError, TypeError, KeyError, struct.error) as exc:
                # Sealed with our key, yet not what its kind needs (a bug, or a
                # node of another version): dropped the same way.
                self._reject("bad_content", channel, f"{type(exc).__name__}: {exc}")

    def _reject(self, reason: str, where: bytes | str, detail: str) -> None:
        """Count a dropped message or entry; log it, one line per reason at most
        every ``_REJECT_LOG_EVERY`` seconds (a flood costs no more log than one)."""
        self._rejected[reason] += 1
        now = time.monotonic()
        last = self._reject_logged.get(reason)
        if last is not None and now - last < _REJECT_LOG_EVERY:
            self._reject_quiet[reason] = self._reject_quiet.get(reason, 0) + 1
            return
        self._reject_logged[reason] = now
        quiet = self._reject_quiet.pop(reason, 0)
        if isinstance(where, bytes):
            where = where.decode("utf-8", "replace")
        log.warning(
            "redis backplane: dropped %s on %r (%s): %s%s",
            "a registry entry" if reason == "bad_entry" else "a message",
            where[:120],
            reason,
            detail,
            f"; {quiet} more dropped for this reason since the last report" if quiet else "",
        )

    def _on_ctl(self, origin: str, data: bytes) -> None:
        msg = control_message(origin, json.loads(data))
        if origin == self.node_id:
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
            self._drop_node(node)
            return
        self._seen[node] = time.monotonic()
        self._registry.add_node(node)
        if kind == "hello" and live:
            self._request_resync()
        elif kind == "join":
            client_id, ip_key, event = str(msg["c"]), str(msg["ip"]), str(msg.get("e", ""))
            self._registry.add(node, client_id, ip_key, event)
            if live:
                self._check_duplicate(node, client_id)
        elif kind == "leave":
            self._registry.remove(node, str(msg["c"]))

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

    def _on_broadcast(self, origin: str, data: bytes) -> None:
        kind, meta, payload = unpack_sealed(origin, data, b"Bb")
        if origin == self.node_id or self._hub is None:
            return  # delivered locally when it was sent
        event: str | None = None
        exclude: frozenset[str] = frozenset()
        if meta:
            info = json.loads(meta)
            if (
                not isinstance(info, dict)
                or info.keys() != {"e", "x"}
                or not isinstance(info["e"], (str, type(None)))
                or not isinstance(info["x"], list)
                or not all(isinstance(x, str) for x in info["x"])
            ):
                raise Rejected("bad_content", "broadcast metadata is not {e: path, x: [IDs]}")
            event = info["e"]
            exclude = frozenset(info["x"])
        self._hub.deliver_broadcast(payload, kind == b"B", event, exclude)

    def _on_direct(self, origin: str, data: bytes) -> None:
        kind, meta, payload = unpack_sealed(origin, data, b"TtyM")
        hub = self._hub
        if hub is None:
            return
        client_id = meta.decode("utf-8")
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
                    (self._node_channel(origin), pack(b"M", self._node_b, meta)),
                    False,
                    0,
                )
