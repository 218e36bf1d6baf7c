"""``WebSocket``: clients by ID, events, send/broadcast, socket methods.

The API of the Node library ``@jadsonlucena/websocket``, in Python.  The
class is a facade over the hub's parts, each in its own module:
:mod:`~wshub.hub.options` (validated options), :mod:`~wshub.hub.admission`
(the yes or no to an upgrade, per-IP counting), :mod:`~wshub.hub.events`
(handlers), :mod:`~wshub.hub.registry` (the local clients, send/broadcast,
backplane routing) and :mod:`~wshub.hub.pings` (the periodic ping).

The hub never touches a socket or an HTTP version: it judges upgrades
(:meth:`WebSocket.admit`), then talks to each client through a
:class:`~wshub.transport.link.Link`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import SplitResult

from ..backplane import Backplane, make_backplane
from ..encodings import Encoding, check_encoding
from ..errors import ConnectionClosedError
from ..policy import PerIpCounter
from ..protocol.deflate import DeflateOptions
from ..protocol.frames import is_valid_close_code
from ..transport.link import Admission, UpgradeRequest
from .admission import AdmissionControl, PendingClient
from .cluster_history import ClusterDirect, ClusterHistory
from .events import Callback, Events
from .handshake import ClientExtras, Handshake
from .history import MemoryHistory, Position
from .options import HubOptions, check_int, check_number
from .protocol_v1 import SUBPROTOCOL, Authorize, ProtocolV1
from .registry import BackplanePort, Registry, encode_payload
from .stats import HubStats
from .topics import PresenceInfo, TopicsPort

if TYPE_CHECKING:
    from ..asgi import ASGIApp, AsgiApp
    from ..metrics import MetricsEndpoint

__all__ = ["WebSocket"]

F = TypeVar("F", bound=Callback)

#: ``on_handshake``: a function (or ``async`` function) of the
#: :class:`Handshake`; None admits, a :class:`~wshub.Response` refuses.
HandshakeHook = Callable[[Handshake], Any]


class WebSocket:
    """A WebSocket hub attached to an :class:`~wshub.HttpServer`.

    See ``spec/API.md`` (and the README) for every option, event and method.
    Durations are in seconds.
    """

    def __init__(
        self,
        server: Any = None,
        *,
        allow_origin: str | list[str] | None = None,
        encoding: Encoding = "utf8",
        limit_by_ip: int = 256,
        max_payload: int = 131072 * 20,
        ping_delay: float = 180.0,
        pong_timeout: float = 5.0,
        session_expires: float = 43200.0,
        per_message_deflate: bool | DeflateOptions = True,
        secret: bytes | str | None = None,
        trusted_proxies: Iterable[str] = (),
        cookie_name: str = "wshub",
        close_timeout: float = 10.0,
        write_high: int = 64 * 1024,
        write_low: int = 16 * 1024,
        write_limit: int = 1024 * 1024,
        metrics_path: str | None = None,
        backplane: str | Backplane | None = None,
        cluster_limit_by_ip: bool = False,
        on_handshake: HandshakeHook | None = None,
        subprotocols: Iterable[str] = (),
        max_topics_per_client: int = 1000,
        pubsub: bool = False,
        authorize: Authorize | None = None,
        history_size: int = 0,
        history_ttl: float = 300.0,
        history_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if pubsub and not isinstance(subprotocols, str):
            # The pub/sub layer speaks wshub.v1: the hub offers it.
            subprotocols = tuple(subprotocols)
            if SUBPROTOCOL not in subprotocols:
                subprotocols = (*subprotocols, SUBPROTOCOL)
        options = self._options = HubOptions(
            allow_origin=allow_origin,
            encoding=encoding,
            limit_by_ip=limit_by_ip,
            max_payload=max_payload,
            ping_delay=ping_delay,
            pong_timeout=pong_timeout,
            session_expires=session_expires,
            per_message_deflate=per_message_deflate,
            secret=secret,
            trusted_proxies=trusted_proxies,
            cookie_name=cookie_name,
            close_timeout=close_timeout,
            write_high=write_high,
            write_low=write_low,
            write_limit=write_limit,
            cluster_limit_by_ip=cluster_limit_by_ip,
            on_handshake=on_handshake,
            subprotocols=subprotocols,
        )
        self._backplane: Backplane = make_backplane(backplane)
        events = self._events = Events()
        per_ip = PerIpCounter()
        registry = self._registry = Registry(options, events, per_ip, self._backplane)
        self._pings = registry.pings
        self._admission = AdmissionControl(options, registry, per_ip, self._backplane)
        # The backplane calls back through a port of its own, not this facade.
        self._backplane.bind(BackplanePort(registry, events, options))
        topics = self._topics = registry.topics
        topics.limit = topics.check_limit(max_topics_per_client)
        history_size = check_int("history_size", history_size)
        history_ttl = check_number("history_ttl", history_ttl)
        history_max_bytes = check_int("history_max_bytes", history_max_bytes)
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        if history_size and self._backplane.keep_history(history_size, history_ttl):
            # A cluster: topic histories in Redis Streams (docs/scaling.md).
            topics.cluster = ClusterHistory(self._backplane)
        elif history_size:
            topics.history = MemoryHistory(history_size, history_ttl, history_max_bytes)
        if pubsub:
            direct = (
                MemoryHistory(history_size, history_ttl, history_max_bytes)
                if history_size and topics.cluster is None
                else None
            )
            direct_cluster = None
            if topics.cluster is not None:
                # The direct streams in Redis too, kept as long as a message
                # is (history_ttl), never past a session (a resume's bound).
                ttls = [t for t in (history_ttl, options.session_expires) if t > 0]
                direct_cluster = ClusterDirect(self._backplane, min(ttls) if ttls else 0.0)
            layer = registry.protocol_v1 = ProtocolV1(
                topics, direct, direct_cluster, registry.stats
            )
            if authorize is not None:
                layer.authorize = authorize
        self._backplane.bind_topics(TopicsPort(topics, events, registry.stats))
        # The registry's client table, read by send() on every message; and
        # (for white-box tests) the parts' other tables: the same objects.
        self._clients = registry.clients
        self._stats = registry.stats
        self._per_ip = per_ip
        self._reserved = self._admission.reserved
        self._link_config = options.link_config
        self._server = server
        self._metrics: MetricsEndpoint | None = None
        if metrics_path is not None:
            self._metrics = self._metrics_endpoint(metrics_path)
        if server is not None:
            server.attach(self)
            if self._metrics is not None:
                server.add_endpoint(self._metrics.path, self._metrics)

    # ================================================================ options

    @property
    def allow_origin(self) -> str | list[str] | None:
        return self._options.allow_origin

    @allow_origin.setter
    def allow_origin(self, value: str | list[str] | None) -> None:
        self._options.allow_origin = value

    @property
    def encoding(self) -> str:
        return self._options.encoding

    @encoding.setter
    def encoding(self, value: Encoding) -> None:
        self._options.encoding = value
        self._registry.default_encoding_changed()

    @property
    def limit_by_ip(self) -> int:
        return self._options.limit_by_ip

    @limit_by_ip.setter
    def limit_by_ip(self, value: int) -> None:
        self._options.limit_by_ip = value

    @property
    def max_payload(self) -> int:
        return self._options.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self._options.max_payload = value

    @property
    def ping_delay(self) -> float:
        return self._options.ping_delay

    @ping_delay.setter
    def ping_delay(self, value: float) -> None:
        self._options.ping_delay = value
        self._pings.restart()

    @property
    def pong_timeout(self) -> float:
        return self._options.pong_timeout

    @pong_timeout.setter
    def pong_timeout(self, value: float) -> None:
        self._options.pong_timeout = value

    @property
    def session_expires(self) -> float:
        return self._options.session_expires

    @session_expires.setter
    def session_expires(self, value: float) -> None:
        self._options.session_expires = value

    @property
    def per_message_deflate(self) -> bool | DeflateOptions:
        return self._options.per_message_deflate

    @per_message_deflate.setter
    def per_message_deflate(self, value: bool | DeflateOptions) -> None:
        self._options.per_message_deflate = value

    @property
    def secret(self) -> None:
        """Write-only: the key that signs session cookies."""
        return None

    @secret.setter
    def secret(self, value: bytes | str | None) -> None:
        self._options.secret = value

    @property
    def trusted_proxies(self) -> list[str]:
        return self._options.trusted_proxies

    @trusted_proxies.setter
    def trusted_proxies(self, value: Iterable[str]) -> None:
        self._options.trusted_proxies = value

    @property
    def close_timeout(self) -> float:
        return self._options.close_timeout

    @close_timeout.setter
    def close_timeout(self, value: float) -> None:
        self._options.close_timeout = value

    @property
    def on_handshake(self) -> HandshakeHook | None:
        """Called with the :class:`Handshake` of every upgrade that passed the
        built-in guards (origin, per IP); None admits, a ``Response`` refuses.
        May be ``async`` (bounded by the server's handshake timeout)."""
        return self._options.on_handshake

    @on_handshake.setter
    def on_handshake(self, value: HandshakeHook | None) -> None:
        self._options.on_handshake = value

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols this hub speaks.  By default the first of the
        *client's* offers that is listed here is chosen (RFC 6455 §4.2.2)."""
        return list(self._options.subprotocols)

    @subprotocols.setter
    def subprotocols(self, value: Iterable[str]) -> None:
        self._options.subprotocols = value  # type: ignore[assignment]  # checked into a tuple

    @property
    def clients(self) -> list[str]:
        """IDs of the clients connected to this process."""
        return list(self._clients)

    # ================================================================= events

    @overload
    def on(self, name: str) -> Callable[[F], F]: ...

    @overload
    def on(self, name: str, callback: F) -> F: ...

    def on(self, name: str, callback: F | None = None) -> F | Callable[[F], F]:
        """Register ``callback`` for event ``name`` (or use as ``@ws.on(name)``).

        Names: ``"open"``, ``"message"``, ``"close"``, ``"error"``,
        ``"join"`` / ``"leave"`` (a client subscribed to / left a topic:
        ``(client_id, topic)``), or a URL path such as ``"/chat"`` for
        messages from clients connected there.
        """
        events = self._events
        event = events.event_name(name)

        def register(cb: F) -> F:
            events.add(event, cb)
            return cb

        if callback is None:
            return register
        return register(callback)

    def off(self, name: str, callback: Callback) -> None:
        """Remove one registration of ``callback`` for ``name``."""
        self._events.remove(name, callback)

    # ============================================================== admission

    def admit(self, request: UpgradeRequest) -> PendingClient | asyncio.Future[Admission]:
        """Judge a well-formed upgrade (transport → hub); raise HandshakeError to
        refuse.  A future of the answer while an ``async`` ``on_handshake`` runs."""
        return self._admission.admit(request)

    def handshake_refused(self, status: int) -> None:
        """An upgrade was refused with ``status`` (transport → hub, for metrics)."""
        self._stats.handshake(status)

    def connection_opened(self, peer_ip: str, *, force: bool = False) -> str | None:
        """Count a TCP connection of the attached server (transport → hub).

        Every connection counts under ``limit_by_ip`` from the moment it is
        accepted, plain HTTP included; a trusted proxy's are not counted
        here (its clients are told apart by their forwarding headers, at
        the upgrade).  Raises HandshakeError(429) past the limit.  This
        guards this process: ``cluster_limit_by_ip`` applies at the upgrade.
        """
        return self._admission.connection_opened(peer_ip, force=force)

    def connection_closed(self, key: str) -> None:
        """The connection counted under ``key`` is gone (or became a client)."""
        self._admission.connection_closed(key)

    # =============================================================== methods

    def send(
        self,
        client_id: str,
        data: str | bytes | bytearray | memoryview,
        encoding: str | None = None,
    ) -> bool:
        """Send one message; False means "not sent, or slow down".

        False when the write buffer is above its high-water mark (the message
        is queued: ``await drain(id)``), or when the client's closing
        handshake has started (the message is dropped: it could never be
        delivered).  With a backplane, an ID connected to another node is
        routed there.
        """
        # The local case is the hot path: handled here, with no further call
        # layer; routing to other nodes is the registry's.
        try:
            client = self._clients[client_id]
        except (KeyError, TypeError):
            return self._registry.send_remote(client_id, data, encoding)
        if encoding is not None:
            check_encoding(encoding)
        payload, text = encode_payload(data, encoding or client.encoding)
        if client.direct is not None:  # a wshub.v1 client: its direct stream
            return client.direct.send_direct(client, payload, text)
        try:
            return client.link.send_message(payload, text)
        except ConnectionClosedError:  # closing, a moment before the hub hears of it
            return False

    def _counted_send(
        self,
        client_id: str,
        data: str | bytes | bytearray | memoryview,
        encoding: str | None = None,
    ) -> bool:
        """:meth:`send` while messages are counted (see :meth:`enable_metrics`):
        a message for a client open here (a closing one is not in ``clients``)."""
        try:
            if client_id in self._clients:
                self._stats.messages_sent += 1
        except TypeError:  # not an ID: send says so
            pass
        return WebSocket.send(self, client_id, data, encoding)

    async def drain(self, client_id: str) -> None:
        """Wait until the client's write buffer is under its low-water mark."""
        await self._registry.get(client_id).link.drain()

    def broadcast(
        self,
        data: str | bytes | bytearray | memoryview,
        *,
        path: str | None = None,
        exclude: Iterable[str] = (),
    ) -> int:
        """Send to every open client (or those of one ``path``); return how many.

        A ``str`` is encoded with the hub's ``encoding``.  The frame is built
        once per group of connections that can share it.
        """
        return self._registry.broadcast(data, path, exclude)

    def close(self, client_id: str, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake; False if it had already started (the
        client is closing: no longer in :attr:`clients`, its ``"close"`` due)."""
        client = self._registry.get(client_id)
        if not isinstance(code, int) or not is_valid_close_code(code):
            raise ValueError(f"{code!r} is not a close code that may be sent")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason longer than 123 bytes")
        return client.link.close(code, reason)

    def ping(self, client_id: str, pong_timeout: float | None = None) -> bool:
        """Ping now; close with 1011 if the pong does not come within ``pong_timeout``."""
        client = self._registry.get(client_id)
        timeout = (
            self._options.pong_timeout
            if pong_timeout is None
            else check_number("pong_timeout", pong_timeout)
        )
        return self._pings.ping(client.link, timeout)

    def data(self, client_id: str) -> Any:
        """The object attached to the client (``Handshake.data``, :meth:`set_data`), or None."""
        extras = self._registry.get(client_id).extras
        return None if extras is None else extras.data

    def set_data(self, client_id: str, value: Any) -> None:
        """Attach ``value`` to the client (read back with :meth:`data`)."""
        client = self._registry.get(client_id)
        if client.extras is None:
            client.extras = ClientExtras(None, value)
        else:
            client.extras.data = value

    def request(self, client_id: str) -> Handshake | None:
        """The client's :class:`Handshake` (headers, cookies, path, query, client,
        TLS ...); None when no ``on_handshake`` hook was set at its handshake
        (without one, the hub keeps nothing of the request)."""
        extras = self._registry.get(client_id).extras
        return extras if isinstance(extras, Handshake) else None

    def subprotocol(self, client_id: str) -> str | None:
        """The subprotocol negotiated with the client, or None."""
        extras = self._registry.get(client_id).extras
        return None if extras is None else extras.subprotocol

    def url(self, client_id: str) -> SplitResult:
        """The URL the client asked for (``ws://host/path?query``, ``wss`` under TLS)."""
        return self._registry.get(client_id).url

    def bytes_read(self, client_id: str) -> int:
        return self._registry.get(client_id).link.bytes_read

    def bytes_written(self, client_id: str) -> int:
        return self._registry.get(client_id).link.bytes_written

    def pause(self, client_id: str) -> bool:
        """Stop reading from this client; returns the new paused state (True)."""
        link = self._registry.get(client_id).link
        link.pause()
        return link.is_paused

    def resume(self, client_id: str) -> bool:
        """Read from this client again; True once it reads (Node's ``!socket.isPaused()``)."""
        link = self._registry.get(client_id).link
        link.resume()
        return not link.is_paused

    def is_paused(self, client_id: str) -> bool:
        return self._registry.get(client_id).link.is_paused

    def ready_state(self, client_id: str) -> str:
        """``"opening"``, ``"open"``, ``"readOnly"`` or ``"writeOnly"`` (Node's socket states)."""
        client = self._registry.get(client_id)
        state = client.link.ready_state
        if state == "open" and client.opening:
            return "opening"
        return state

    def set_encoding(self, client_id: str, encoding: Encoding = "utf8") -> bool:
        """This client's own encoding, from now on (it no longer follows ``ws.encoding``)."""
        checked = check_encoding(encoding)
        client = self._registry.get(client_id)
        client.encoding = checked
        client.own_encoding = True
        return True

    def set_keep_alive(
        self, client_id: str, enable: bool = False, initial_delay: float = 0.0
    ) -> bool:
        link = self._registry.get(client_id).link
        return link.set_keep_alive(bool(enable), float(initial_delay))

    def set_no_delay(self, client_id: str, no_delay: bool = True) -> bool:
        return self._registry.get(client_id).link.set_no_delay(bool(no_delay))

    # ================================================================== ASGI

    def asgi(self, app: ASGIApp | None = None, *, handshake_timeout: float = 10.0) -> AsgiApp:
        """This hub as an ASGI 3 application (for uvicorn, Hypercorn, Starlette, FastAPI).

        ``"websocket"`` scopes become clients of this hub, with the same
        admission, events and methods; other scopes go to ``app`` (an ASGI
        application, e.g. a FastAPI app), or get 404 without one.  What ASGI
        cannot express is listed in :mod:`wshub.asgi`.  ``handshake_timeout``
        bounds an ``async`` ``on_handshake`` hook (0: no bound), as
        ``HttpServer``'s does.
        """
        from ..asgi import AsgiApp

        return AsgiApp(self, app, handshake_timeout=handshake_timeout)

    # ================================================================ metrics

    @property
    def stats(self) -> HubStats:
        """What this hub counts, for metrics (see :mod:`wshub.metrics`)."""
        return self._stats

    @property
    def metrics(self) -> MetricsEndpoint | None:
        """The Prometheus endpoint of ``metrics_path`` (None: no metrics).

        Served by the attached :class:`~wshub.HttpServer` and by :meth:`asgi`
        at ``metrics.path``.
        """
        return self._metrics

    def enable_metrics(self) -> None:
        """Keep every figure of :attr:`stats` from now on: count messages and
        track the connections opened from now on.

        ``metrics_path`` (and :class:`wshub.metrics.HubCollector`) call it;
        without metrics nothing is counted per message or per connection.
        """
        if not self._stats.enabled:
            self._stats.enable()
            # Only this hub's send counts; the class's stays as fast as it was.
            self.send = self._counted_send  # type: ignore[method-assign]

    def _metrics_endpoint(self, path: str) -> MetricsEndpoint:
        from ..metrics import MetricsEndpoint  # prometheus_client: only when asked for

        return MetricsEndpoint(path, self)

    # ============================================ cluster (see wshub.backplane)

    @property
    def backplane(self) -> Backplane:
        """The backplane that joins this hub to its cluster (read-only)."""
        return self._backplane

    @property
    def cluster_limit_by_ip(self) -> bool:
        """Count ``limit_by_ip`` over every live node of the cluster, not just this one."""
        return self._options.cluster_limit_by_ip

    @cluster_limit_by_ip.setter
    def cluster_limit_by_ip(self, value: bool) -> None:
        self._options.cluster_limit_by_ip = value

    async def cluster_clients(self) -> list[str]:
        """IDs of the clients connected to every live node (just :attr:`clients` without one)."""
        return await self._registry.cluster_clients()

    # ================================================================= topics

    @property
    def max_topics_per_client(self) -> int:
        """The most topics one client may follow (``subscribe`` raises TopicLimitError past it)."""
        return self._topics.limit

    @max_topics_per_client.setter
    def max_topics_per_client(self, value: int) -> None:
        self._topics.limit = self._topics.check_limit(value)

    def subscribe(self, client_id: str, topic: str) -> bool:
        """Make local client ``client_id`` follow ``topic``; False if it already did.

        Emits ``"join"`` with ``(client_id, topic)``.  A topic is a non-empty
        ``str`` of at most 256 bytes of UTF-8.  Raises ClientNotFound for an
        ID not connected to this process, TopicLimitError past
        ``max_topics_per_client``.
        """
        return self._topics.subscribe(client_id, topic)

    def unsubscribe(self, client_id: str, topic: str) -> bool:
        """Stop ``client_id`` following ``topic`` (emits ``"leave"``); False if it did not."""
        return self._topics.unsubscribe(client_id, topic)

    def publish(
        self,
        topic: str,
        data: str | bytes | bytearray | memoryview,
        *,
        exclude: Iterable[str] = (),
    ) -> int:
        """Send to every subscriber of ``topic``, on every node; return how many here.

        Like :meth:`broadcast`: a ``str`` is encoded with the hub's
        ``encoding``, the frame is built once per group of connections that
        can share it, and the count is of this process's subscribers.
        """
        payload, text = encode_payload(data, self._options.encoding)
        count = self._topics.publish(topic, payload, text, exclude)
        self._stats.messages_sent += count
        return count

    def topic_position(self, topic: str) -> Position | None:
        """The position of ``topic``'s latest publication kept in this
        process's history (None: no history for it, or ``history_size=0``).

        With a Redis backplane (the history in Redis Streams): the position of
        the last publication of ``topic`` delivered on this node (None when no
        client here follows it).
        """
        return self._topics.position(topic)

    def topics(self, client_id: str) -> list[str]:
        """The topics local client ``client_id`` follows, in the order it subscribed."""
        return self._topics.topics_of(client_id)

    def subscribers(self, topic: str) -> list[str]:
        """IDs of this process's subscribers of ``topic``, in the order they subscribed."""
        return self._topics.subscribers(topic)

    async def cluster_subscribers(self, topic: str) -> list[str]:
        """IDs of the subscribers of ``topic`` on every live node (local ones first)."""
        return list(await self._topics.presence(topic))

    async def presence(self, topic: str) -> dict[str, PresenceInfo]:
        """Who follows ``topic`` on every live node: client ID → ``PresenceInfo(node, path)``."""
        return await self._topics.presence(topic)

    # ============================== for the server (HttpServer, the ASGI adapter)

    async def start(self) -> None:
        """Called by the server before it accepts connections (by the ASGI
        adapter: at lifespan startup): join the cluster, if there is a backplane."""
        if not self._backplane.is_local:
            await self._backplane.start()

    def server_started(self) -> None:
        """Called by the server once it listens."""
        self._pings.restart()

    async def stop(self) -> None:
        """Called by the server when shutdown begins: leave the cluster while
        the clients are still connected."""
        if not self._backplane.is_local:
            await self._backplane.stop()

    def ready(self) -> bool:
        """Called by the server's readiness check: False while the backplane
        is cut off from its cluster (always True without one)."""
        return self._backplane.connected

    async def shutdown(self, code: int, reason: str, window: float = 0.0) -> None:
        """Called by the server after :meth:`stop`: close every client with
        ``code``, spread evenly over ``window`` seconds, and return once they
        are all gone."""
        if window > 0:
            await self._close_spread(code, reason, window)
        await self._registry.close_all(code, reason)

    async def _close_spread(self, code: int, reason: str, window: float) -> None:
        # Client i of n is closed ``window * i / n`` seconds after the start,
        # so that they do not all reconnect in the same instant.  One wakeup
        # closes every client then due (at most one wakeup per 10 ms).
        ids = list(self._clients)
        count = len(ids)
        if count < 2:
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        while done < count:
            due = min(count, int((loop.time() - start) * count / window) + 1)
            for client_id in ids[done:due]:
                client = self._clients.get(client_id)
                if client is not None:
                    client.link.close(code, reason)
            done = due
            if done < count:
                next_at = start + window * done / count
                await asyncio.sleep(max(0.01, next_at - loop.time()))
