"""``HttpServer``: listens, speaks HTTP/1.1 (and HTTP/2 when available), hosts one hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl as ssl_module
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import HandshakeError
from ..http import Handler, Request, Response
from ..protocol.frames import is_valid_close_code
from . import epoll
from .http1 import Http1Link, Http1Protocol
from .upgrade import SNI_ATTRIBUTE

if TYPE_CHECKING:
    from .link import UpgradeHandler

__all__ = ["HttpServer", "ServerConnections"]

log = logging.getLogger("wshub")


def _default_h2_factory() -> Callable[[HttpServer, Http1Protocol, bytes], bool] | None:
    try:
        from .http2 import switch_to_h2
    except ImportError:  # h2 missing: HTTP/1.1 only (ALPN then offers http/1.1 alone)
        return None
    return switch_to_h2


def event_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``run(loop=kind)``; None means asyncio's default."""
    if kind not in ("auto", "asyncio", "uvloop"):
        raise ValueError("loop must be 'auto', 'asyncio' or 'uvloop'")
    if kind == "asyncio" or sys.version_info < (3, 11):
        if kind == "uvloop":
            raise RuntimeError("loop='uvloop' needs Python 3.11+ (asyncio.Runner)")
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise RuntimeError("loop='uvloop': uvloop is not installed (wshub[speed])") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on_loop(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``main`` to the end on a new event loop of kind ``loop`` (see :meth:`HttpServer.run`)."""
    factory = event_loop_factory(loop)
    if sys.version_info >= (3, 11) and factory is not None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


class HttpServer:
    """An HTTP server that a :class:`wshub.WebSocket` attaches to.

    The Python stand-in for Node's ``http.createServer``.  ``handler`` answers
    plain (non-WebSocket) requests; without one they get 404.

    Limits (all per connection): ``handshake_timeout`` seconds to complete
    the TLS handshake, and then to send a complete request head
    (slowloris; also how long a keep-alive connection may sit idle between
    requests), ``max_header_size`` bytes of request line and headers,
    ``max_headers`` header fields (431 past either), ``max_body_size``
    bytes of a plain request's body (413).  ``write_timeout`` seconds: a
    plain-HTTP peer whose answers pile up (it sends requests but does not
    read) must take some of them within this time, and a closed connection
    may wait this long for what it still has to send; then it is aborted.
    Meanwhile no more of its requests are read: what a connection holds is
    bounded by the transport's write buffer limit, not by how many requests
    it pipelines.  Over HTTP/2 a plain request must be complete (END_STREAM)
    within ``handshake_timeout`` too (408 and RST_STREAM; a connection with
    nothing else open is then closed), and the bodies one connection holds
    are capped at twice ``max_body_size`` (past it: RST_STREAM
    REFUSED_STREAM, which a client may retry).

    With a hub attached, every connection counts under its
    ``limit_by_ip`` from the moment it is accepted, plain HTTP included (an
    HTTP/1.1 upgrade then counts as the hub's client, once); past the limit
    it gets ``429`` and is closed.  Connections from the hub's
    ``trusted_proxies`` are counted per client at the upgrade only.

    ``loopback_congestion`` (Linux; benchmark tuning, off by default):
    before the first uncompressed message of 64 KiB or more to a WebSocket
    client on this host (127.0.0.0/8, ``::1`` - a reverse proxy on the same
    machine, a local benchmark), that connection's socket switches to this
    TCP congestion control, if it is not using it already.  ``"cubic"``
    does not pace: a pacing one such as BBR spreads a large write into many
    small timed bursts, each costing a timer interrupt and a wakeup of the
    reader, to protect a network that loopback data never crosses (1 MiB
    echo on loopback: about +20 % with BBR as the system default).  It
    changes kernel behaviour and it hurt other shapes (many connections
    with 64 KiB messages), so it is opt-in: the default, ``None``, leaves
    every socket as the system made it (see docs/performance.md, "Tunings
    and what they cost").  A name the kernel refuses is ignored (logged at
    debug level).  Remote clients are never affected.

    ``health``: answer ``GET /livez`` (200 while the event loop runs) and
    ``GET /readyz`` (200 when listening and, with a cluster backplane,
    joined to the cluster; 503 otherwise, and while draining) before the
    ``handler`` sees the request (see :meth:`readiness`).

    Graceful shutdown (:meth:`drain`, what :meth:`run` does on SIGTERM or
    SIGINT): stop listening, then close the WebSockets with ``drain_code``
    and ``drain_reason`` (1012 "service restart" by default: come back
    soon) spread evenly over ``drain_window`` seconds, so that they do not
    all reconnect in the same instant, and wait at most ``drain_timeout``
    seconds in all (window included) before the rest are cut.

    ``io``: what carries the plain-TCP connections.  ``"auto"`` (the
    default) is wshub's own I/O layer where it runs (Linux): one ``epoll``
    for all connections, whose descriptor is the only one the event loop
    watches, and a transport of about a hundred bytes per connection
    instead of the loop's kilobyte or two (see docs/performance.md, "What
    an idle connection holds").  ``"loop"`` uses the event loop's own
    transports, as every asyncio server does; ``"epoll"`` insists on the
    own layer (ValueError where it cannot run).  TLS connections always
    use the loop's transports.

    ``busy_poll`` (seconds, default 0: off): after a pass of the own I/O
    layer that found work, keep the event loop polling without sleeping
    for this long, as Linux's ``SO_BUSY_POLL`` does for a network card's
    queue.  A client that answers within it is read without the sleep and
    wake-up in between: one connection with 4 small messages in flight went
    from about 45,000 to 75,000 echoes a second at ``100e-6`` (see
    docs/performance.md, "Busy polling").  The cost is CPU: the server
    spins for up to ``busy_poll`` after each burst, and at a steady message
    every ``busy_poll`` or less it uses a whole core, whatever the load.
    Off by default; worth it where latency matters more than a core.  Only
    the own I/O layer polls (``io='loop'`` with ``busy_poll`` is a
    ValueError; TLS connections do not count as work).
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        handshake_timeout: float = 10.0,
        max_header_size: int = 16 * 1024,
        max_headers: int = 100,
        max_body_size: int = 1024 * 1024,
        write_timeout: float = 30.0,
        loopback_congestion: str | None = None,
        health: bool = False,
        drain_window: float = 5.0,
        drain_timeout: float = 30.0,
        drain_code: int = 1012,
        drain_reason: str = "service restart",
        io: str = "auto",
        busy_poll: float = 0.0,
    ) -> None:
        check_drain(drain_window, drain_timeout, drain_code, drain_reason)
        if io not in ("auto", "epoll", "loop"):
            raise ValueError("io must be 'auto', 'epoll' or 'loop'")
        if not 0 <= busy_poll <= 1:
            raise ValueError("busy_poll must be 0 (off) to 1 second")
        if busy_poll and io == "loop":
            raise ValueError("busy_poll needs wshub's own I/O layer, not io='loop'")
        if io == "epoll" and not epoll.available():
            raise ValueError("io='epoll' needs Linux (select.epoll)")
        if handshake_timeout < 0:
            raise ValueError("handshake_timeout must be >= 0")
        if not write_timeout > 0:
            raise ValueError("write_timeout must be > 0")
        if loopback_congestion is not None and (
            not isinstance(loopback_congestion, str)
            or not loopback_congestion.isascii()
            or not loopback_congestion.replace("_", "").isalnum()
            or len(loopback_congestion) > 15
        ):
            raise ValueError("loopback_congestion must be a congestion control name or None")
        if max_header_size < 1024 or max_headers < 8 or max_body_size < 0:
            raise ValueError("header limits too small to serve a browser")
        self.handler = handler
        self.handshake_timeout = float(handshake_timeout)
        self.max_header_size = int(max_header_size)
        self.max_headers = int(max_headers)
        self.max_body_size = int(max_body_size)
        self.write_timeout = float(write_timeout)
        # Congestion control for WebSocket connections from this host once
        # they send a large message (see FramedLink._tune_for_bulk).
        self.loopback_congestion = loopback_congestion
        self.drain_window = float(drain_window)
        self.drain_timeout = float(drain_timeout)
        self.drain_code = int(drain_code)
        self.drain_reason = drain_reason
        # Plain TCP on wshub's own epoll layer, or on the loop's transports.
        self.own_io = io != "loop" and epoll.available()
        self.busy_poll = float(busy_poll)
        self.websocket: UpgradeHandler | None = None
        # Plain-HTTP paths the server answers itself, before ``handler``.
        self._endpoints: dict[str, Handler] = {}
        if health:
            self._endpoints["/livez"] = self._livez
            self._endpoints["/readyz"] = self._readyz
        # What the transports share: live connections, per-IP slots,
        # request-head deadlines, HTTP/2 sessions.
        self.connections = ServerConnections(self)
        self._servers: list[asyncio.AbstractServer | epoll.EpollServer] = []
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._shutdown_hooks: list[Callable[[int, str], Awaitable[None]]] = []
        # Set by hurry(): the rest of the drain window is skipped.
        self._hurried = False
        self._hurry_event: asyncio.Event | None = None

    # ------------------------------------------------------------- attachment

    def attach(self, websocket: UpgradeHandler) -> None:
        """Called by ``WebSocket(server)``: one hub per server."""
        if self.websocket is not None and self.websocket is not websocket:
            raise RuntimeError("a WebSocket is already attached to this HttpServer")
        self.websocket = websocket

    def add_shutdown_hook(self, hook: Callable[[int, str], Awaitable[None]]) -> None:
        """``hook(code, reason)`` runs in :meth:`close`, before connections are dropped."""
        self._shutdown_hooks.append(hook)

    # ----------------------------------------------- plain HTTP: own endpoints

    def add_endpoint(self, path: str, handler: Handler) -> None:
        """Answer requests for ``path`` with ``handler``, before :attr:`handler` sees them.

        For the server's own endpoints (health, metrics): an exact path,
        any method; the query string is ignored.
        """
        if not path.startswith("/"):
            raise ValueError("an endpoint path starts with '/'")
        if path in self._endpoints:
            raise ValueError(f"{path} is already an endpoint of this server")
        self._endpoints[path] = handler

    @property
    def request_handler(self) -> Handler | None:
        """What the transports call for a plain request: the endpoints, then ``handler``."""
        if not self._endpoints:
            return self.handler
        return self._route

    def _route(self, request: Request) -> Any:
        endpoint = self._endpoints.get(request.path)
        if endpoint is not None:
            return endpoint(request)
        handler = self.handler
        if handler is None:
            return Response.text(404, "Not Found\n")
        return handler(request)

    # ------------------------------------------------------------ health

    @property
    def draining(self) -> bool:
        """True from the start of :meth:`close` (or :meth:`drain`) on."""
        return self._closing

    def readiness(self) -> str | None:
        """Why this server should get no new clients now, or None when it is ready.

        Ready means listening, not draining, and, with a cluster backplane,
        connected to the cluster and registered in it.
        """
        if self._closing:
            return "draining"
        if not self._servers:
            return "not listening"
        hub = self.websocket
        if hub is not None and not hub.ready():
            return "backplane not connected"
        return None

    def _livez(self, request: Request) -> Response:
        return Response(f"alive (pid {os.getpid()})\n", headers=_NO_STORE)

    def _readyz(self, request: Request) -> Response:
        why = self.readiness()
        if why is None:
            return Response(f"ready (pid {os.getpid()})\n", headers=_NO_STORE)
        return Response(f"not ready: {why} (pid {os.getpid()})\n", 503, _NO_STORE)

    # --------------------------------------------------------------- serving

    @property
    def sockets(self) -> list[Any]:
        return [s for srv in self._servers for s in (getattr(srv, "sockets", None) or ())]

    @property
    def port(self) -> int:
        """The port of the first listening socket (handy with ``port=0``)."""
        socks = self.sockets
        if not socks:
            raise RuntimeError("the server is not listening")
        return int(socks[0].getsockname()[1])

    async def serve(
        self,
        host: str | list[str] | None = "127.0.0.1",
        port: int = 8080,
        ssl: ssl_module.SSLContext | None = None,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        """Start listening; returns once bound (use :meth:`serve_forever` to block)."""
        if ssl is not None:
            self._prepare_ssl(ssl)
            self.connections.tls = True
        self._closed = asyncio.Event()
        hub = self.websocket
        if hub is not None:
            # A hub with a cluster backplane joins the cluster before it listens.
            await hub.start()
        loop = self.connections.loop
        extra: dict[str, Any] = {}
        if ssl is not None and self.handshake_timeout > 0:
            # The TLS handshake comes before any request head: put it under
            # the same deadline (asyncio's and uvloop's default is 60 s).
            extra["ssl_handshake_timeout"] = self.handshake_timeout
        server: asyncio.AbstractServer | epoll.EpollServer
        if ssl is None and self.own_io:
            server = await epoll.listen(
                self.connections.epoll_io(),
                lambda: Http1Protocol(self),
                host,
                port,
                reuse_port=reuse_port,
                backlog=backlog,
            )
        else:
            server = await loop.create_server(
                lambda: Http1Protocol(self),
                host=host,
                port=port,
                ssl=ssl,
                reuse_port=reuse_port or None,
                backlog=backlog,
                **extra,
            )
        self._servers.append(server)
        if hub is not None:
            hub.server_started()

    def _prepare_ssl(self, context: ssl_module.SSLContext) -> None:
        # ALPN: h2 first when we can speak it, then HTTP/1.1 (RFC 7301).
        protocols = ["h2", "http/1.1"] if self.connections.speaks_h2 else ["http/1.1"]
        context.set_alpn_protocols(protocols)
        # The SNI a client sent, for the handshake hook's Handshake.tls.
        if not isinstance(context.sni_callback, _SniRecorder):
            context.sni_callback = _SniRecorder(context.sni_callback)

    async def serve_forever(self) -> None:
        """Block until :meth:`close` is called."""
        if self._closed is None:
            raise RuntimeError("call serve() first")
        await self._closed.wait()

    async def drain(self) -> None:
        """Shut down gracefully, as configured (``drain_*`` options).

        What :meth:`run` does on SIGTERM and SIGINT: :meth:`close` with the
        server's drain settings.
        """
        await self.close(
            self.drain_code, self.drain_reason, self.drain_timeout, window=self.drain_window
        )

    async def close(
        self,
        code: int = 1001,
        reason: str = "server shutting down",
        timeout: float = 5.0,
        *,
        window: float = 0.0,
    ) -> None:
        """Stop listening, close every WebSocket with ``code`` and every connection.

        The WebSockets are closed one by one, evenly spread over ``window``
        seconds (0: all at once); whatever is still open ``timeout`` seconds
        after the start is cut.  Plain HTTP connections stay until the end
        (a probe on a kept-alive connection sees ``/readyz`` answer 503).
        """
        check_drain(window, timeout, code, reason)
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for srv in self._servers:
            srv.close()
        self.connections.stop_sweeping()
        hub = self.websocket
        if hub is not None:
            # The hub leaves its cluster first, while its clients are still here.
            try:
                await hub.stop()
            except Exception:
                log.exception("error while the hub left its cluster")
        for session in list(self.connections.h2_sessions):
            session.goaway(reason)  # RFC 9113 §6.8: no new streams
        for hook in self._shutdown_hooks:
            try:
                await hook(code, reason)
            except Exception:
                log.exception("error in a shutdown hook")
        if hub is not None:
            try:
                await self._close_clients(hub, code, reason, window, deadline)
            except asyncio.TimeoutError:
                log.warning("clients did not finish closing within %.1fs", timeout)
        for link in list(self.connections.links):
            link.transport.abort()  # still open after the clients' closing
        for proto in list(self.connections.protocols):
            if proto.transport is not None:
                proto.close_after_writes()  # sent within write_timeout, or aborted
        for srv in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self._servers.clear()
        self.connections.close_io()
        if self._closed is not None:
            self._closed.set()

    def hurry(self) -> None:
        """Skip the rest of the drain window: close the remaining clients now
        (what a second SIGTERM or SIGINT does under :meth:`run`)."""
        self._hurried = True
        if self._hurry_event is not None:
            self._hurry_event.set()

    async def _close_clients(
        self, hub: UpgradeHandler, code: int, reason: str, window: float, deadline: float
    ) -> None:
        """``hub.shutdown`` over ``window`` until :meth:`hurry`; TimeoutError at ``deadline``."""
        loop = asyncio.get_running_loop()
        if window > 0 and not self._hurried:
            hurry = self._hurry_event = asyncio.Event()
            spread = asyncio.ensure_future(hub.shutdown(code, reason, window))
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait(
                {spread, hurried},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            hurried.cancel()
            if spread.done():
                spread.result()
                return
            spread.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spread
            if not hurry.is_set():
                raise asyncio.TimeoutError
            log.info("drain hurried: closing the remaining clients now")
        await asyncio.wait_for(hub.shutdown(code, reason, 0.0), max(0.0, deadline - loop.time()))

    def run(
        self,
        host: str | list[str] | None = "127.0.0.1",
        port: int = 8080,
        ssl: ssl_module.SSLContext | None = None,
        *,
        loop: str = "auto",
        **kwargs: Any,
    ) -> None:
        """Serve until SIGTERM or SIGINT, then :meth:`drain` (blocking).

        A second SIGTERM or SIGINT during the drain closes the remaining
        clients at once (:meth:`hurry`).

        ``loop``: ``"auto"`` runs on uvloop when it is installed (``pip install
        wshub[speed]``), else on asyncio's own loop; ``"asyncio"`` or
        ``"uvloop"`` choose one (the latter fails if uvloop is missing).
        """
        run_on_loop(self._run(host, port, ssl, **kwargs), loop)

    async def _run(
        self,
        host: str | list[str] | None,
        port: int,
        ssl: ssl_module.SSLContext | None,
        **kwargs: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        await self.serve(host, port, ssl, **kwargs)
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                self.hurry()  # a second one: skip the rest of the window
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        waiter = asyncio.ensure_future(self.serve_forever())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        await self.drain()
        waiter.cancel()


_NO_STORE = [("Cache-Control", "no-store")]


def check_drain(window: float, timeout: float, code: int, reason: str) -> None:
    """Validate graceful-shutdown settings (ValueError)."""
    if not 0 <= window <= timeout:
        raise ValueError("need 0 <= drain window <= drain timeout")
    if isinstance(code, bool) or not isinstance(code, int) or not is_valid_close_code(code):
        raise ValueError(f"{code!r} is not a close code that may be sent")
    if len(reason.encode("utf-8")) > 123:
        raise ValueError("close reason longer than 123 bytes")


class _SniRecorder:
    """An SSL context's ``sni_callback``: keeps the server name a client sent
    on its ``SSLObject`` (``server_hostname`` says nothing on the server
    side), then calls the callback the context had, if any."""

    __slots__ = ("inner",)

    def __init__(self, inner: Callable[..., Any] | None) -> None:
        self.inner = inner

    def __call__(
        self, ssl_object: Any, server_name: str | None, context: ssl_module.SSLContext
    ) -> Any:
        if server_name is not None:
            with contextlib.suppress(AttributeError):
                setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        if self.inner is not None:
            return self.inner(ssl_object, server_name, context)
        return None


class GoawaySession(Protocol):
    """An HTTP/2 connection, as the server sees it at shutdown."""

    def goaway(self, reason: str = "") -> None: ...


class ServerConnections:
    """What the transports of one :class:`HttpServer` share (``server.connections``).

    The live connections (each starts as an HTTP/1.1 protocol; an HTTP/2
    one keeps its entry), their per-IP slots, the request-head deadlines
    (one periodic sweep instead of a timer per connection) and the HTTP/2
    sessions that get a GOAWAY at shutdown.
    """

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.protocols: set[Http1Protocol] = set()
        # Upgraded connections: their link is the transport's protocol now.
        self.links: set[Http1Link] = set()
        self.h2_sessions: set[GoawaySession] = set()
        self.tls = False  # the server listens with an SSL context
        # The HTTP/2 transport's take-over (None when h2 cannot be imported).
        self._h2_factory = _default_h2_factory()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The own I/O layer's epoll set, made by the first plain-TCP serve().
        self._io: epoll.EpollIO | None = None
        # Connections that must send a complete request head by a deadline
        # (handshake_timeout), in the order they were armed.
        self._deadlines: dict[Http1Protocol, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # The peer address of the last connection (see shared_host).
        self._last_host = ""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def epoll_io(self) -> epoll.EpollIO:
        """The epoll set of this server's plain-TCP connections (made on first use)."""
        io = self._io
        if io is None:
            io = self._io = epoll.EpollIO(self.loop, self.server.busy_poll)
        return io

    def close_io(self) -> None:
        """The server stopped listening: the epoll set goes with its last connection."""
        io = self._io
        if io is not None:
            self._io = None
            io.close()

    def shared_host(self, host: str) -> str:
        """``host``, or the equal string the previous connection keeps: the
        connections of one address (a proxy's, a load balancer's) hold one
        copy of it instead of one each (about 60 bytes per connection)."""
        last = self._last_host
        if host == last:
            return last
        self._last_host = host
        return host

    @property
    def speaks_h2(self) -> bool:
        return self._h2_factory is not None

    def opened(self, proto: Http1Protocol) -> bool:
        """A new connection; False if its address is over the hub's per-IP limit."""
        self.protocols.add(proto)
        hub = self.server.websocket
        if hub is not None:
            try:
                proto.ip_slot = hub.connection_opened(proto.peer[0])
            except HandshakeError:
                return False
        return True

    def lost(self, proto: Http1Protocol) -> None:
        self.protocols.discard(proto)
        self.release_ip_slot(proto)

    def upgraded(self, proto: Http1Protocol, link: Http1Link) -> None:
        """``proto`` hands its connection to ``link`` (after the 101)."""
        self.protocols.discard(proto)
        self.links.add(link)

    def link_lost(self, link: Http1Link) -> None:
        self.links.discard(link)

    def release_ip_slot(self, proto: Http1Protocol) -> None:
        """Give back the per-IP count of ``proto`` (lost, or upgraded: then
        the hub's admission counts it)."""
        key = proto.ip_slot
        if key is not None:
            proto.ip_slot = None
            hub = self.server.websocket
            if hub is not None:
                hub.connection_closed(key)

    def recount_ip_slot(self, proto: Http1Protocol) -> None:
        """Count ``proto`` per IP again, whatever the limit (an HTTP/2
        connection whose last WebSocket ended: it was counted through it)."""
        hub = self.server.websocket
        if proto.ip_slot is None and hub is not None:
            proto.ip_slot = hub.connection_opened(proto.peer[0], force=True)

    def switch_to_h2(self, proto: Http1Protocol, data: bytes) -> bool:
        """Hand ``proto``'s transport to HTTP/2 (ALPN h2, or the h2c preface)."""
        factory = self._h2_factory
        if factory is None:
            return False
        return factory(self.server, proto, data)

    # -------------------------------------------------- handshake deadlines

    def arm_deadline(self, proto: Http1Protocol) -> None:
        """``proto`` must complete a request head within handshake_timeout."""
        timeout = self.server.handshake_timeout
        if timeout <= 0:
            return
        loop = self.loop
        deadlines = self._deadlines
        deadlines.pop(proto, None)  # re-armed: to the back of the queue
        deadlines[proto] = loop.time() + timeout
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    def disarm_deadline(self, proto: Http1Protocol) -> None:
        self._deadlines.pop(proto, None)

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep_interval(self) -> float:
        # A deadline is noticed at most this late: a tenth of the timeout,
        # between 20 ms and 1 s.
        return min(1.0, max(0.02, self.server.handshake_timeout / 10))

    def _sweep(self) -> None:
        self._sweeper = None
        deadlines = self._deadlines
        if not deadlines:
            return
        now = self.loop.time()
        expired = []
        # Armed with the same timeout, so ordered by deadline: stop at the
        # first one still running.
        for proto, deadline in deadlines.items():
            if deadline > now:
                break
            expired.append(proto)
        for proto in expired:
            del deadlines[proto]
            proto.deadline_passed()
        if deadlines:
            self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)
